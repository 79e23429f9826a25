"""`mechcheck incontext EXPERIMENT.toml --out DIR`: the in-context baseline as a run of its own.

The untouched model is asked to report its neuron from k labelled examples (`mechcheck.incontext`),
on the experiment's own corpus, split and neuron: the pipeline's corpus and select stages
(`mechcheck.pipeline`) make them exactly as `mechcheck run` does, then an `incontext` stage asks the
model, and the report is rendered from its results alone (`mechcheck report DIR` re-renders it).

    DIR/experiment.json, corpus/, select/   as for `mechcheck run`
    DIR/incontext/results.json              skill vs k with bootstrap CIs over the test texts
    DIR/report.md, DIR/figures/             the view
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from mechcheck.errors import UserError
from mechcheck.experiment import Experiment, load_experiment, with_command_options
from mechcheck.outputs import write_json
from mechcheck.ownership import hold
from mechcheck.pipeline import Pipeline
from mechcheck.records import DICT, read_record
from mechcheck.rundir import MARKER, claim_run_dir, identity, write_run_record
from mechcheck.stages import Stage

FORMAT = "mechcheck-incontext/1"
ENTRIES = (MARKER, "corpus", "select", "incontext", "report.md", "figures")


def check_options(experiment: Experiment, ks: tuple[int, ...], n_train: int, n_test: int) -> None:
    """Refuse what the baseline cannot answer before anything is written."""
    if experiment.neuron.neurons and len(experiment.neuron.neurons) > 1:
        raise UserError("mechcheck incontext asks about one neuron; the experiment fixes several")
    if experiment.neuron.target != "neuron":
        target = experiment.neuron.target
        raise UserError(f"mechcheck incontext asks about an MLP neuron, not neuron.target = {target!r}")
    if not ks or any(k < 0 for k in ks) or len(set(ks)) != len(ks):
        raise UserError(f"--ks must list distinct numbers of examples >= 0, got {list(ks)}")
    if max(ks) > n_train:
        raise UserError(f"--ks {max(ks)}: more examples than --n-train {n_train} texts to draw them from")
    if n_test < 2:
        raise UserError(f"--n-test {n_test}: a confidence interval needs at least 2 test texts")


def incontext_stage(
    p: Pipeline, corpus: Stage, select: Stage, ks: tuple[int, ...], n_train: int, n_test: int
) -> Stage:
    """The stage after the select stage: its inputs are the corpus and select stages' hashes."""
    e = p.experiment
    inputs = {"model": e.subject.model, "corpus": corpus.hash, "select": select.hash, "ks": list(ks)}
    inputs |= {"n_train": n_train, "n_test": n_test, "position": e.neuron.position, "seed": e.seed}

    def step(stage: Stage, previous: dict[str, Any]) -> None:
        from mechcheck.incontext import incontext_baseline
        from mechcheck.readout import Neuron
        from mechcheck.selection import with_chosen

        n = with_chosen(p.experiment, p.selection()).neuron
        ref = n.neurons[0] if n.neurons else n
        splits, start = p.splits(), time.perf_counter()
        train, test = splits["train"][:n_train], splits["test"][:n_test]
        if len(test) < 2 or len(train) < max(ks):
            raise UserError(f"the corpus's split has {len(train)} train and {len(test)} test texts: too few")
        result = incontext_baseline(
            p.subject(), Neuron(ref.layer, ref.index), train, test, ks=ks, position=n.position,
            seed=p.experiment.seed, progress=p.progress,
        )  # fmt: skip
        card = read_record(corpus.folder / "card.json", DICT)
        result |= {"format": FORMAT, "name": p.experiment.name, "corpus": card}
        result["seconds"] = round(time.perf_counter() - start, 1)
        write_json(stage.folder / "results.json", result)

    return p.stage("incontext", inputs, ("results.json",), step)


def incontext_command(args: argparse.Namespace) -> int:
    """`mechcheck incontext EXPERIMENT.toml --out DIR [--ks 0,1,4] [--n-train N] [--n-test N]`."""
    from mechcheck.config import to_dict
    from mechcheck.report.incontext_md import render_incontext

    experiment = with_command_options(load_experiment(args.experiment), args)
    check_options(experiment, tuple(args.ks), args.n_train, args.n_test)
    name, config = identity(experiment, args.experiment), to_dict(experiment)
    with hold(args.out) as output:
        claim_run_dir(output, name, config, args.overwrite, ENTRIES)
        write_run_record(output.out, name, args.experiment, config, output.marker["run_id"])
        p = Pipeline(experiment, output.out, progress=not args.quiet, on_work=output.keep)
        corpus = p.corpus()
        incontext_stage(p, corpus, p.select(corpus), tuple(args.ks), args.n_train, args.n_test)
        path = render_incontext(output.out)
    print(f"report: {path}")
    return 0


def is_incontext_run(folder: str | Path) -> bool:
    """Whether `folder` holds an in-context baseline's results (for `mechcheck report`)."""
    return (Path(folder) / "incontext" / "results.json").is_file() and not (Path(folder) / "train").exists()
