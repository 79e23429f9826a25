"""`mechcheck train EXPERIMENT.toml --out DIR`: the pipeline's own corpus → select (→ labels) →
train stages (`mechcheck.pipeline.Pipeline`) and nothing after, then one summary line per checkpoint.

The stages own the chain's facts: the corpus stage makes the split once, the select stage chooses
the neuron once, and the trainer (`mechcheck.train.plan.train_experiment`) trains on both as given.
`mechcheck run` runs the same stages, then the battery and the report. Layout of DIR (the
checkpoints where `mechcheck train` has always written them; the train stage's folder is DIR):

    .mechcheck.json, .mechcheck.lock   the ownership marker and the lock (`mechcheck.ownership`)
    corpus/        the corpus stage: card.json, splits.json, splits/seed-<k>.json
    select/        the select stage: neurons.json (+ the chosen neuron's histogram when selected)
    labels/        the labels stage, for an experiment with `[labels]`: labels.json
    stage.json     the train stage's record (the hash of its inputs)
    target.json    the neuron, how it was chosen, each seed's target card and corpus card
    <condition>-<target_mode>/seed-<k>/   the checkpoints (`mechcheck test`, `mechcheck compare`)

`--resume` keeps every finished checkpoint (after checking its configuration hash; a changed one is
refused, never deleted) and continues an interrupted one; a directory of an earlier `mechcheck train`
(target.json and checkpoint folders only, with or without the marker) resumes the same way, its
corpus and select stages made beside it by the same functions that made its split and neuron.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mechcheck.experiment import Experiment, load_experiment, with_command_options
from mechcheck.outputs import BOOKKEEPING, write_json
from mechcheck.ownership import hold
from mechcheck.pipeline import Pipeline
from mechcheck.records import DICT, read_record
from mechcheck.run_record import RunRecord
from mechcheck.stages import STAGE_FILE
from mechcheck.subject import Subject
from mechcheck.train.conditions import TARGET_MODES
from mechcheck.train.plan import check_experiment, run_dir
from mechcheck.train.record import config_hash

TARGET_FILE = "target.json"


def legacy_train_dir(out: Path) -> bool:
    """A `mechcheck train` output written before the ownership marker: a target.json and only
    `<condition>-<target mode>` folders beside it."""
    names = [p.name for p in out.iterdir() if p.name not in (TARGET_FILE, *BOOKKEEPING)]
    pattern = re.compile(rf"[a-z_]+-({'|'.join(TARGET_MODES)})")
    return (out / TARGET_FILE).is_file() and all(pattern.fullmatch(n) for n in names)


def summary_line(run: RunRecord) -> str:
    m = run.metrics or {}
    if "per_neuron" in m:
        return _several_summary(run)
    b, a = m["test_before"], m["test"]
    nb, na = m["neuron_before"], m["neuron_after"]
    kl = "-" if m.get("kl_after") is None else f"{m['kl_after']:.3g}"
    lm = "-" if m.get("lm_loss_before") is None else f"{m['lm_loss_before']:.3f} -> {m['lm_loss_after']:.3f}"
    return (
        f"{run.condition}-{run.target_mode} seed {run.seed}: "
        f"test MSE {b['mse']:.4g} -> {a['mse']:.4g} "
        f"(skill {a['skill']:.3f}), neuron std {nb['std']:.3g} -> {na['std']:.3g}, "
        f"LM loss {lm}, KL {kl}, "
        f"{(run.timing or {})['run']:.0f} s{' [collapsed]' if m['collapsed'] else ''}"
    ) + _digit_summary(m)


def _several_summary(run: RunRecord) -> str:
    """One line for a several-neuron run: per neuron, test skill before -> after and the neuron's std."""
    parts = []
    for m in run.metrics["per_neuron"]:
        n, b, a = m["neuron"], m["test_before"], m["test"]
        std = f"{m['neuron_before']['std']:.3g} -> {m['neuron_after']['std']:.3g}"
        parts.append(f"L{n['layer']}/{n['index']} skill {b['skill']:.3f} -> {a['skill']:.3f} (std {std})")
    kl = run.metrics.get("kl_after")
    return (
        f"{run.condition}-{run.target_mode} seed {run.seed}: "
        + "; ".join(parts)
        + f", KL {'-' if kl is None else f'{kl:.3g}'}, {run.timing['run']:.0f} s"
    )


def _digit_summary(metrics: dict[str, Any]) -> str:
    """Token readouts: the class-space skill before -> after (expected digit vs true decile)."""
    if "digit" not in metrics:
        return ""
    b, a = metrics["digit_before"], metrics["digit"]
    rho = ["-" if d["spearman"] is None else f"{d['spearman']:.3f}" for d in (b, a)]
    return (
        f"; digit Spearman {rho[0]} -> {rho[1]}, MAE {b['mae']:.3f} -> {a['mae']:.3f}, "
        f"arg-max accuracy {b['argmax_accuracy']:.3f} -> {a['argmax_accuracy']:.3f}"
    )


def adopt_self_chosen(out: Path, experiment: Experiment, trained: Experiment, pairs: list) -> None:
    """Checkpoints of an earlier `mechcheck train` that chose its neuron itself: it hashed the experiment
    before the choice, the train stage hashes `trained` (the neuron the select stage fixed). A finished
    checkpoint of that neuron takes the new hash (the old one kept under `adopted_from`), so --resume
    keeps it; an interrupted one is refused by its saved state's own hash check (one line)."""
    if trained == experiment:  # the experiment fixes its neuron: the hashes agree
        return
    neuron = {"layer": trained.neuron.layer, "index": trained.neuron.index}
    for seed in trained.train.seeds:
        for c, m in pairs:
            file = run_dir(out, c.name, m, seed) / "run.json"
            old = config_hash(experiment, c.name, m, seed)
            run = read_record(file, DICT) if file.is_file() else {}
            if run.get("config_hash") == old and run.get("neuron") == neuron:
                run["adopted_from"] = {"config_hash": old, "by": "mechcheck train choosing its own neuron"}
                write_json(file, run | {"config_hash": config_hash(trained, c.name, m, seed)})


def train_chain(
    experiment: Experiment, out: str | Path, *, seeds: Sequence[int] | None = None, resume: bool = False,
    overwrite: bool = False, progress: bool = False, subject: Subject | None = None,
    cache_dir: Path | None = None, on_step: Callable[[int], None] | None = None,
) -> list[RunRecord]:  # fmt: skip
    """The corpus → select (→ labels) → train stages into `out` (held and claimed as `mechcheck train`
    output: a non-empty one is refused unless `resume` or `overwrite`); returns every planned run's
    record, seed by seed. `seeds` replaces the experiment's training seeds; `subject`: the experiment's
    model, already loaded; `cache_dir` (frozen features) and `on_step` go to the trainer."""
    if seeds is not None:
        experiment = replace(experiment, train=replace(experiment.train, seeds=tuple(seeds)))
    pairs = check_experiment(experiment, experiment.train.seeds)  # before the directory is touched
    if not experiment.neuron.neurons and experiment.neuron.layer is None:
        from mechcheck.scan import check_criterion

        check_criterion(experiment.neuron.criterion)
    entries = ("corpus", "select", STAGE_FILE, TARGET_FILE, *(f"{c.name}-{m}" for c, m in pairs))
    entries += ("labels",) if experiment.labels is not None else ()
    trainer: dict[str, Any] = {"resume": True, "cache_dir": cache_dir, "on_step": on_step}
    with hold(out) as output:  # claimed: after it, every checkpoint left here is one to resume
        output.claim("train", entries, overwrite=overwrite, resume=resume, legacy=legacy_train_dir)
        p = Pipeline(
            experiment,
            output.out,
            progress,
            homes={"train": output.out},
            trainer=trainer,
            on_work=output.keep,
        )
        p.use_subject(subject)
        corpus = p.corpus()
        select = p.select(corpus)
        adopt_self_chosen(output.out, experiment, p.train_experiment(), pairs)
        p.train(corpus, select, p.labels(corpus))
        return [
            RunRecord.read(run_dir(output.out, c.name, m, seed) / "run.json")
            for seed in experiment.train.seeds
            for c, m in pairs
        ]


def train_command(args: argparse.Namespace) -> int:
    """`mechcheck train EXPERIMENT.toml --out DIR [--seeds 0,1,2] [--resume] [--overwrite] [-q]`."""
    experiment = with_command_options(load_experiment(args.experiment), args)
    runs = train_chain(
        experiment, args.out, seeds=args.seeds, resume=args.resume, overwrite=args.overwrite,
        progress=not args.quiet,
    )  # fmt: skip
    for run in runs:
        print(summary_line(run))
    out = args.out
    print(f"checkpoints: {out}/<condition>-<target_mode>/seed-<k>/; target set: {out}/{TARGET_FILE}")
    return 0
