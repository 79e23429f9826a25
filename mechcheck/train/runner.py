"""`mechcheck train`: every condition × applicable target mode × seed of an experiment.

Checkpoints go to `OUT/<condition>-<target_mode>/seed-<k>/`; `OUT/target.json` records the
neuron (and how it was chosen), the target card and the corpus card. A finished checkpoint is
skipped on `--resume` (after checking its configuration hash); an interrupted run continues
from its saved state (`seed-<k>.state/`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mechcheck.config import Seeds, check_value, to_dict
from mechcheck.errors import UserError
from mechcheck.experiment import Experiment, load_experiment
from mechcheck.outputs import BOOKKEEPING, claim_dir, versions, write_json
from mechcheck.ownership import hold
from mechcheck.readout import Neuron
from mechcheck.records import DICT, read_record
from mechcheck.subject import POSITIONS, Subject
from mechcheck.targets import TargetSet, build_targets
from mechcheck.train.bench import Bench
from mechcheck.train.conditions import CONDITIONS, TARGET_MODES, plan
from mechcheck.train.frozen_fit import default_cache_dir
from mechcheck.train.readouts import check_readout, fit_token_readout, is_token
from mechcheck.train.record import config_hash
from mechcheck.train.run import train_run


def run_dir(out: Path, condition: str, mode: str, seed: int) -> Path:
    return Path(out) / f"{condition}-{mode}" / f"seed-{seed}"


def check_experiment(experiment: Experiment, seeds: Sequence[int]) -> list[tuple[Any, str]]:
    """Validate before any expensive work; returns the (condition, target mode) plan."""
    cfg = experiment.train
    pairs = plan(cfg.conditions, cfg.target_modes)
    for override in cfg.override:
        CONDITIONS.get(override.condition)
    for condition, _ in pairs:
        if cfg.for_condition(condition.name).readout_frozen and condition.source == "features":
            raise UserError(f"condition {condition.name!r} with readout_frozen = true would train nothing")
    check_readout(cfg.readout, [c.name for c, _ in pairs], [m for _, m in pairs], experiment.neuron.position)
    if experiment.neuron.position not in POSITIONS:
        choices = ", ".join(POSITIONS)
        raise UserError(f"neuron.position {experiment.neuron.position!r}: choose one of {choices}")
    check_value(Seeds, tuple(seeds), "the seeds to train (--seeds or train.seeds)")
    return pairs


def choose_neuron(
    experiment: Experiment, subject: Subject, train_texts: Sequence[str], progress: bool
) -> tuple[Neuron | tuple[Neuron, ...], dict[str, Any]]:
    """The experiment's fixed neuron(s), or one selected on train-split texts (recorded)."""
    n = experiment.neuron
    if n.neurons:
        for ref in n.neurons:
            subject.anatomy.check_neuron(ref.layer, ref.index)
        chosen = tuple(Neuron(ref.layer, ref.index) for ref in n.neurons)
        return (chosen[0] if len(chosen) == 1 else chosen), {"selected": False}
    if n.layer is not None:
        subject.anatomy.check_neuron(n.layer, n.index)
        return Neuron(n.layer, n.index), {"selected": False}
    from mechcheck.scan import select_neuron

    layers = list(n.layers) or [subject.n_layers // 2]
    texts = list(train_texts[: n.scan_texts])
    best, ranked, _ = select_neuron(
        subject, texts, layers, n.position, n.criterion,
        max_tokens=experiment.corpus.max_tokens, seed=experiment.seed, progress=progress,
    )  # fmt: skip
    record = {"selected": True, "criterion": n.criterion, "layers": layers, "scan_texts": len(texts)}
    record |= {"split": "train", "chosen": best, "top": ranked[:10]}
    return Neuron(int(best["layer"]), int(best["index"])), record


def prepare(
    experiment: Experiment, subject: Subject, progress: bool, labels_dir: Path | None = None
) -> tuple[TargetSet, dict[str, Any], dict[str, Any]]:
    """Corpus → splits → neuron → target set; returns it with the corpus and selection records.
    With `labels_dir` the labels are read from (or kept in) a file there."""
    from mechcheck.corpus import load_corpus, split_corpus

    c = experiment.corpus
    corpus = load_corpus(
        c.source, max_texts=c.max_texts, seed=experiment.seed, min_words=c.min_words, max_words=c.max_words
    )
    splits = split_corpus(corpus, tuple(c.split), seed=experiment.seed)
    neuron, selection = choose_neuron(experiment, subject, splits.train, progress)
    position = experiment.neuron.position
    targets = build_targets(
        subject, splits, neuron, position, c.max_tokens, progress=progress, cache_dir=labels_dir
    )
    return targets, {"spec": to_dict(c), "card": splits.card}, selection


def neuron_record(targets: TargetSet) -> dict[str, Any]:
    """run.json / target.json: `neuron` for one neuron (as always), `neurons` for several."""
    if targets.k == 1:
        return {"neuron": targets.neuron.as_dict()}
    return {"neurons": [n.as_dict() for n in targets.neurons]}


def _write_target(
    out: Path, targets: TargetSet, corpus: dict, selection: dict, resume: bool, write: bool = True
) -> None:
    """target.json; with `write=False` (a cell beside others) it must be there already, and match."""
    file = out / "target.json"
    record = {**neuron_record(targets), "position": targets.position, "selection": selection}
    record |= {"target": targets.card, "corpus": corpus}
    if not write and not file.is_file():
        raise UserError(f"{file} is missing: the experiment's prepare cell writes it before any run")
    if (resume or not write) and file.is_file():
        old = read_record(file, DICT)
        if (
            old.get("neuron") != record.get("neuron")
            or old.get("neurons") != record.get("neurons")
            or old.get("target") != json.loads(json.dumps(targets.card))
        ):
            raise UserError(f"{file}: --resume with a different neuron or target set; use --overwrite")
    if write:
        write_json(file, record)


def _claim_run(folder: Path, digest: str, resume: bool, overwrite: bool) -> bool:
    """True when the run must be trained; a finished run is skipped on --resume."""
    state = folder.with_name(folder.name + ".state")
    if (folder / "run.json").is_file():
        if overwrite:
            shutil.rmtree(folder)
        elif resume:
            saved = read_record(folder / "run.json", DICT).get("config_hash")
            if saved != digest:
                raise UserError(f"{folder}: --resume with a different configuration; use --overwrite")
            return False
        else:
            raise UserError(f"{folder} already holds a checkpoint; pass --overwrite (or --resume)")
    if overwrite and state.exists():
        shutil.rmtree(state)
    return True


def train_experiment(
    experiment: Experiment,
    out: str | Path,
    seeds: Sequence[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    subject: Subject | None = None,
    cache_dir: Path | None = None,
    on_step: Callable[[int], None] | None = None,
    cells: Collection[tuple[str, str, int]] | None = None,
    shared_cache: Path | None = None,
) -> list[dict[str, Any]]:
    """Train every planned run; returns their run.json dicts (finished ones read back on --resume).

    `cells` narrows the runs to these (condition, target mode, seed) triples, for an executor that
    runs each in its own process (`mechcheck.executor`): an empty set trains nothing and only
    prepares — it writes target.json and fills the caches the planned runs read — and a non-empty
    one leaves target.json as the prepare cell wrote it. `shared_cache` is a folder for those
    caches (labels, frozen features, after-target residual) that every such process reads."""
    seeds = tuple(experiment.train.seeds if seeds is None else seeds)
    pairs = check_experiment(experiment, seeds)
    out = claim_dir(out, overwrite, resume)
    start = time.perf_counter()
    if subject is None:
        from mechcheck.subject import load_subject

        subject = load_subject(experiment.subject.model)
    shared = None if shared_cache is None else Path(shared_cache)
    targets, corpus, selection = prepare(experiment, subject, progress, shared and shared / "labels")
    _write_target(out, targets, corpus, selection, resume, write=not cells)
    cfg = experiment.train
    cache_dir = cache_dir or (shared / "features" if shared else default_cache_dir())
    prompt = fit_token_readout(cfg.readout, subject, targets) if is_token(cfg.readout) else None
    resid_dir = shared and shared / "resid"
    bench = Bench(subject, targets, cfg.batch_size, cfg.drift_texts, cache_dir, progress, prompt, resid_dir)
    bench.seconds["prepare"] = time.perf_counter() - start
    if cells is not None and not cells:
        _fill_caches(bench, [condition for condition, _ in pairs])
    provenance = {
        "base_model": experiment.subject.model, **neuron_record(targets),
        "position": targets.position, "experiment": to_dict(experiment), "corpus": corpus,
        "neuron_selection": selection, "versions": versions(),
        "target": {"card": targets.card, "mean": targets.mean, "std": targets.std},
    }  # fmt: skip
    runs = []
    for condition, mode in pairs:
        for seed in seeds:
            if cells is not None and (condition.name, mode, seed) not in cells:
                continue
            folder = run_dir(out, condition.name, mode, seed)
            digest = config_hash(experiment, condition.name, mode, seed)
            if not _claim_run(folder, digest, resume, overwrite):
                runs.append(read_record(folder / "run.json", DICT))
                continue
            runs.append(
                train_run(
                    bench,
                    condition.name,
                    mode,
                    seed,
                    cfg.for_condition(condition.name),
                    folder,
                    provenance,
                    digest,
                    resume=resume,
                    progress=progress,
                    on_step=on_step,
                )  # fmt: skip
            )
    return runs


def legacy_train_dir(out: Path) -> bool:
    """A `mechcheck train` output written before the ownership marker: a target.json and only
    `<condition>-<target mode>` folders beside it."""
    names = [p.name for p in out.iterdir() if p.name not in ("target.json", *BOOKKEEPING)]
    pattern = re.compile(rf"[a-z_]+-({'|'.join(TARGET_MODES)})")
    return (out / "target.json").is_file() and all(pattern.fullmatch(n) for n in names)


def _fill_caches(bench: Bench, conditions: Sequence[Any]) -> None:
    """Compute the original model's caches that the planned conditions read, once, before any run."""
    sources = {condition.source for condition in conditions}
    if "features" in sources:
        bench.features()
    if "resume" in sources:
        bench.resid()


def summary_line(run: dict[str, Any]) -> str:
    m = run["metrics"]
    if "per_neuron" in m:
        return _several_summary(run)
    b, a = m["test_before"], m["test"]
    nb, na = m["neuron_before"], m["neuron_after"]
    kl = "-" if m.get("kl_after") is None else f"{m['kl_after']:.3g}"
    lm = "-" if m.get("lm_loss_before") is None else f"{m['lm_loss_before']:.3f} -> {m['lm_loss_after']:.3f}"
    return (
        f"{run['condition']}-{run['target_mode']} seed {run['seed']}: "
        f"test MSE {b['mse']:.4g} -> {a['mse']:.4g} "
        f"(skill {a['skill']:.3f}), neuron std {nb['std']:.3g} -> {na['std']:.3g}, "
        f"LM loss {lm}, KL {kl}, "
        f"{run['timing']['run']:.0f} s{' [collapsed]' if m['collapsed'] else ''}"
    ) + _digit_summary(m)


def _several_summary(run: dict[str, Any]) -> str:
    """One line for a several-neuron run: per neuron, test skill before -> after and the neuron's std."""
    parts = []
    for m in run["metrics"]["per_neuron"]:
        n, b, a = m["neuron"], m["test_before"], m["test"]
        std = f"{m['neuron_before']['std']:.3g} -> {m['neuron_after']['std']:.3g}"
        parts.append(f"L{n['layer']}/{n['index']} skill {b['skill']:.3f} -> {a['skill']:.3f} (std {std})")
    kl = run["metrics"].get("kl_after")
    return (
        f"{run['condition']}-{run['target_mode']} seed {run['seed']}: "
        + "; ".join(parts)
        + f", KL {'-' if kl is None else f'{kl:.3g}'}, {run['timing']['run']:.0f} s"
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
    if args.seed is not None:
        experiment = replace(experiment, seed=args.seed)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
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
