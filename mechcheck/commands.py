"""CLI subcommands: each one a thin call into the module that owns it (imported lazily).

`test` and `report` take their output directory's lock here (`mechcheck.ownership.hold`), so the
battery writes into a directory no other run is writing; `run` and `train` take theirs in their own
modules, after checking the experiment and before any work.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

TEST_ENTRIES = ("results.json", "predictions", "battery", "report.md", "figures")  # `mechcheck test` writes


def select(args: argparse.Namespace) -> int:
    from mechcheck.scan import select_command

    return select_command(args)


def train(args: argparse.Namespace) -> int:
    from mechcheck.train_command import train_command

    return train_command(args)


def _legacy_test_dir(out) -> bool:
    """A `mechcheck test` output written before the ownership marker: its results.json says so."""
    from mechcheck.errors import UserError
    from mechcheck.records import read_json
    from mechcheck.results_record import BatteryResults

    try:
        return BatteryResults.is_battery(read_json(out / "results.json"))
    except UserError:
        return False


def test(args: argparse.Namespace) -> int:
    """The checkpoints are read and checked (each counted once) before the output is touched; the
    output is locked and claimed, then the battery writes into it."""
    from mechcheck.checkpoint import read_checkpoints
    from mechcheck.ownership import hold

    read_checkpoints(args.checkpoints)
    with hold(args.out) as output:
        output.claim("test", TEST_ENTRIES, overwrite=args.overwrite, resume=False, legacy=_legacy_test_dir)
        return test_command(argparse.Namespace(**{**vars(args), "overwrite": True}))  # claimed above


@contextlib.contextmanager
def _rendering(what: str) -> Iterator[None]:
    """A view of files the user may have edited: a field of a type the renderer cannot use, deeper
    than the record shapes look, is one line naming the folder (MECHCHECK_DEBUG=1: the traceback)."""
    from mechcheck.errors import UserError

    try:
        yield
    except (TypeError, KeyError, AttributeError, ValueError, IndexError, ArithmeticError) as err:
        if os.environ.get("MECHCHECK_DEBUG"):
            raise
        raise UserError(
            f"{what}: results.json or a saved prediction holds a field of an unexpected type or shape "
            f"({type(err).__name__}: {err}); recreate it with mechcheck test or mechcheck run"
        ) from err


def test_command(args: argparse.Namespace) -> int:
    """`mechcheck test CKPT [CKPT…] [--corpus FILE] [--probes a,b] --out DIR`: the battery writes
    results.json and its data, then the report is rendered from them."""
    import sys
    from pathlib import Path

    from mechcheck.battery.base import BatteryOptions
    from mechcheck.battery.runner import run_battery
    from mechcheck.report import render_report

    options = BatteryOptions(seed=0 if args.seed is None else args.seed)
    from mechcheck.experiment import quiet_transformers

    quiet_transformers(args.quiet)
    results = run_battery(
        args.checkpoints, corpus=args.corpus, probes=args.probes, options=options, out=args.out,
        overwrite=args.overwrite, progress=not args.quiet,
    )  # fmt: skip
    render_report(args.out)
    for entry in results.get("per_neuron") or [results]:
        n = entry["neuron"]
        prefix = f"L{n['layer']}/{n['index']} " if "per_neuron" in results else ""
        for name, v in entry["verdicts"].items():
            fragile = " (fragile)" if v.get("fragile") else ""
            sys.stdout.write(f"{prefix}{name}: {v['verdict']}{fragile}\n")
    t = results["timing"]
    ratio = t.get("ratio_to_bare_forward")
    sys.stdout.write(
        f"results: {Path(args.out) / 'results.json'} ({t['total_s']:.1f} s"
        + (f", {ratio:.1f}x a bare forward)\n" if ratio else ")\n")
    )
    return 0


def incontext(args: argparse.Namespace) -> int:
    from mechcheck.incontext_run import incontext_command

    return incontext_command(args)


def report(args: argparse.Namespace) -> int:
    from mechcheck.cross.render import is_cross_run, render_cross
    from mechcheck.incontext_run import is_incontext_run
    from mechcheck.ownership import hold

    with hold(args.dir, create=False), _rendering(args.dir):
        if is_cross_run(args.dir):
            from mechcheck.cross.render import pair_runs
            from mechcheck.report.render import render_report

            for pair in pair_runs(args.dir):
                render_report(pair)
            print(f"report: {render_cross(args.dir)}")
            return 0
        from mechcheck.report.study_md import is_study_run, render_study

        if is_study_run(args.dir):
            print(f"report: {render_study(args.dir)}")
            return 0
        if is_incontext_run(args.dir):
            from mechcheck.report.incontext_md import render_incontext

            print(f"report: {render_incontext(args.dir)}")
            return 0
        from mechcheck.report import report_command

        return report_command(args)


def compare(args: argparse.Namespace) -> int:
    from mechcheck.report import compare_command

    with _rendering(", ".join(args.dirs)):
        return compare_command(args)


def run(args: argparse.Namespace) -> int:
    from mechcheck.run_command import run_command

    return run_command(args)
