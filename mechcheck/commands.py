"""CLI subcommands: each one a thin call into the module that owns it (imported lazily)."""

from __future__ import annotations

import argparse


def select(args: argparse.Namespace) -> int:
    from mechcheck.scan import select_command

    return select_command(args)


def train(args: argparse.Namespace) -> int:
    from mechcheck.train.runner import train_command

    return train_command(args)


def test(args: argparse.Namespace) -> int:
    """`mechcheck test CKPT [CKPT…] [--corpus FILE] [--probes a,b] --out DIR`: the battery writes
    results.json, then the report is rendered from it."""
    import sys
    from pathlib import Path

    from mechcheck.battery.base import BatteryOptions
    from mechcheck.battery.runner import run_battery
    from mechcheck.report import render_report

    options = BatteryOptions(seed=0 if args.seed is None else args.seed)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
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


def report(args: argparse.Namespace) -> int:
    from mechcheck.cross.pipeline import cross_report_command, is_cross_run

    if is_cross_run(args.dir):
        return cross_report_command(args)
    from mechcheck.report import report_command

    return report_command(args)


def compare(args: argparse.Namespace) -> int:
    from mechcheck.report import compare_command

    return compare_command(args)


def run(args: argparse.Namespace) -> int:
    from mechcheck.config import read_toml
    from mechcheck.cross.experiment import is_cross

    data = read_toml(args.experiment)
    if is_cross(data):  # a `models` array: the cross-prediction control
        from mechcheck.cross.pipeline import cross_run_command

        return cross_run_command(args, data)
    from mechcheck.pipeline import run_command

    return run_command(args)
