"""`mechcheck train EXPERIMENT.toml --out DIR`: the experiment's checkpoints without the battery, and
one summary line per checkpoint (`mechcheck.train.plan.train_experiment` does the work)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from mechcheck.experiment import load_experiment, with_command_options
from mechcheck.outputs import BOOKKEEPING
from mechcheck.ownership import hold
from mechcheck.run_record import RunRecord
from mechcheck.train.conditions import TARGET_MODES
from mechcheck.train.plan import check_experiment, train_experiment


def legacy_train_dir(out: Path) -> bool:
    """A `mechcheck train` output written before the ownership marker: a target.json and only
    `<condition>-<target mode>` folders beside it."""
    names = [p.name for p in out.iterdir() if p.name not in ("target.json", *BOOKKEEPING)]
    pattern = re.compile(rf"[a-z_]+-({'|'.join(TARGET_MODES)})")
    return (out / "target.json").is_file() and all(pattern.fullmatch(n) for n in names)


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


def train_command(args: argparse.Namespace) -> int:
    """`mechcheck train EXPERIMENT.toml --out DIR [--seeds 0,1,2] [--resume] [--overwrite] [-q]`."""
    experiment = load_experiment(args.experiment)
    experiment = with_command_options(experiment, args)
    seeds = experiment.train.seeds if args.seeds is None else args.seeds
    pairs = check_experiment(experiment, seeds)
    entries = ("target.json", *(f"{c.name}-{m}" for c, m in pairs))
    with hold(args.out) as output:
        output.claim("train", entries, overwrite=args.overwrite, resume=args.resume, legacy=legacy_train_dir)
        runs = train_experiment(
            experiment, output.out, seeds=seeds, resume=args.resume, overwrite=args.overwrite,
            progress=not args.quiet,
        )  # fmt: skip
    for run in runs:
        print(summary_line(run))
    print(f"checkpoints: {args.out}/<condition>-<target_mode>/seed-<k>/; target set: {args.out}/target.json")
    return 0
