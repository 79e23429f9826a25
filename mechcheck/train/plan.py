"""The plan of an experiment's training: every condition × applicable target mode × seed (its cells),
with what they share — the table of labels, features and residuals, and one bench per seed — made
once. It is the pipeline's train stage (`mechcheck.pipeline`; `mechcheck run` and `mechcheck train`
both run it after the corpus and select stages, which own the split and the neuron).

Checkpoints go to `OUT/<condition>-<target_mode>/seed-<k>/`; `OUT/target.json` records the
neuron (and how the select stage chose it) and, per seed, the target card and the corpus card with
its split.
A finished checkpoint is skipped on `--resume` (after checking its configuration hash); an
interrupted run continues from its saved state (`seed-<k>.state/`).

Seeds: a training seed sets the readout's initialisation, the data order and (unless
`corpus.split_seed = "experiment"`) the group-wise split. The original model's labels, features
and after-target residual are computed once for every text of the corpus
(`mechcheck.train.table`) and each seed's target set and bench index them.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from mechcheck.config import Seeds, check_value, to_dict
from mechcheck.corpus import Splits
from mechcheck.errors import UserError
from mechcheck.experiment import Experiment, split_seed
from mechcheck.outputs import claim_dir, versions, write_json
from mechcheck.readout import READOUTS, TARGET_KINDS, Neuron
from mechcheck.records import DICT, read_record
from mechcheck.run_record import RunRecord
from mechcheck.splits import SPLIT_BY
from mechcheck.subject import POSITIONS, Subject
from mechcheck.targets import SPLITS, TargetSet
from mechcheck.train.bench import Bench
from mechcheck.train.cell import train_run
from mechcheck.train.conditions import CONDITIONS, plan
from mechcheck.train.frozen_fit import default_cache_dir
from mechcheck.train.labels import LabelSource, check_labels
from mechcheck.train.loop import LR_SCHEDULES
from mechcheck.train.readouts import (
    READOUT_SITES,
    check_readout,
    fit_token_readout,
    is_token,
    prompted_texts,
    readout_site,
)
from mechcheck.train.record import config_hash
from mechcheck.train.sources import FINAL_NORM
from mechcheck.train.table import TextTable, build_table


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
    check_study_options(experiment)
    check_labels(experiment)
    check_value(Seeds, tuple(seeds), "the seeds to train (--seeds or train.seeds)")
    return pairs


def check_study_options(experiment: Experiment) -> None:
    """The target kind, bands, split and training options of issue 12 (study mode, seeds, lr choice)."""
    n, c, cfg = experiment.neuron, experiment.corpus, experiment.train
    choices = {
        "neuron.target": (n.target, TARGET_KINDS), "corpus.split_by": (c.split_by, SPLIT_BY),
        "corpus.split_seed": (c.split_seed, ("train", "experiment")),
        "train.lr_schedule": (cfg.lr_schedule, LR_SCHEDULES),
        "train.readout_site": (cfg.readout_site, READOUT_SITES),
    }  # fmt: skip
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise UserError(f"{key} {value!r}: choose one of {', '.join(allowed)}")
    names = [b.name for b in n.bands]
    if len(set(names)) != len(names) or any(not b.layers for b in n.bands):
        raise UserError(f"neuron.bands: every band needs its own name and at least one layer, got {names}")
    fixed = n.neurons or n.layer is not None
    if n.band is not None and n.band not in names:
        raise UserError(f"neuron.band {n.band!r} names none of neuron.bands ({', '.join(names) or 'none'})")
    if n.bands and n.band is None and not fixed:
        raise UserError("neuron.bands is set: name the band to train with neuron.band (one per [[variant]])")
    if cfg.readout_site != "final_norm" and is_token(cfg.readout):
        raise UserError(
            f"train.readout_site applies to the linear head; readout {cfg.readout!r} reads logits"
        )
    if any(not lr > 0 for lr in cfg.lr_grid) or len(set(cfg.lr_grid)) != len(cfg.lr_grid):
        raise UserError(f"train.lr_grid must list distinct positive learning rates, got {list(cfg.lr_grid)}")


def trained_neurons(experiment: Experiment, subject: Subject) -> tuple[Neuron, ...]:
    """The experiment's fixed neuron(s), checked against the subject. The trainer never chooses one:
    the pipeline's select stage does (`mechcheck.pipeline.Pipeline.select`), and passes the experiment
    on with its choice fixed (`mechcheck.selection.with_chosen`)."""
    n = experiment.neuron
    if not n.neurons and (n.layer is None or n.index is None):
        raise ValueError(
            "the trainer trains a fixed neuron: run the pipeline's select stage first "
            "(mechcheck.train_command.train_chain, or mechcheck train)"
        )
    neurons = tuple(Neuron(ref.layer, ref.index, n.target) for ref in (n.neurons or [n]))
    for neuron in neurons:
        neuron.check(subject)
    return neurons


def build_tables(
    experiment: Experiment, subject: Subject, neurons: tuple[Neuron, ...], texts: Sequence[str],
    pairs: list[tuple[Any, str]], n_seeds: int, progress: bool, cache: Path | None = None,
) -> tuple[TextTable, TextTable]:  # fmt: skip
    """(labels table, table of what the model reads): one pass over every text of the experiment (two
    for token readouts, whose model reads the prompted texts); with `cache`, kept in files there for
    the other processes of the experiment (`mechcheck.train.table.build_table`)."""
    cfg, c, position = experiment.train, experiment.corpus, experiment.neuron.position
    sources = {condition.source for condition, _ in pairs}
    trained = sum(condition.source != "features" for condition, _ in pairs) * n_seeds
    features = "features" in sources or trained >= 3  # also scores every run's step 0 without a pass
    layer = max(n.layer for n in neurons) if "resume" in sources else None
    if not is_token(cfg.readout):
        site = readout_site(subject, cfg)
        table = build_table(
            subject, texts, neurons, position, c.max_tokens, resid_layer=layer,
            feature_site=site if features else None, progress=progress, cache=cache,
        )  # fmt: skip
        return table, table
    labels = build_table(
        subject, texts, neurons, position, c.max_tokens, progress=progress, desc="labels", cache=cache
    )
    prompt = READOUTS.get(cfg.readout).fit(subject.tokenizer, labels.labels)  # for its prompt only
    prompted, max_tokens = prompted_texts(subject, labels.texts, prompt, c.max_tokens)
    model = build_table(
        subject, prompted, neurons, position, max_tokens, labels=False, resid_layer=layer,
        feature_site=FINAL_NORM if features else None, progress=progress, desc="prompted texts", cache=cache,
    )  # fmt: skip
    return labels, model


def label_run(source: LabelSource, neurons: tuple[Neuron, ...], selection: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint trained on another model's neuron says besides the training: that neuron
    (`neuron`; `neuron_selection`: fixed by the experiment's `[labels]`, never selected), whose it is
    (and its weights' hashes there), and the trained model's own neuron, whose layer is where its
    frozen prefix ends (`reporter_layer`), with `selection`: how the select stage fixed that one."""
    fixed = {"selected": False, "fixed_by": "labels", "model": source.model}
    fixed["neuron"] = source.neuron.as_dict()
    reporter = {"neuron": neurons[0].as_dict(), "selection": selection}  # check_labels: one neuron
    return {
        "neuron": source.neuron.as_dict(), "label_model": source.model,
        "label_weights_sha256": source.weights_sha256, "reporter_layer": max(n.layer for n in neurons),
        "neuron_selection": fixed | {"reporter": reporter},
    }  # fmt: skip


def label_targets(source: LabelSource, splits: Splits) -> TargetSet:
    """The target set of `source`'s labels over one seed's splits (every text must be labelled)."""
    known = set(source.table.texts)
    missing = [t for name in SPLITS for t in getattr(splits, name) if t not in known]
    if missing:
        raise UserError(f"the labels of {source.model!r} lack {len(missing)} of the texts; rerun the labels")
    return source.table.targets(splits)


def neuron_record(neurons: TargetSet | Sequence[Neuron]) -> dict[str, Any]:
    """run.json / target.json: `neuron` for one neuron (as always), `neurons` for several."""
    neurons = neurons.neurons if isinstance(neurons, TargetSet) else tuple(neurons)
    if len(neurons) == 1:
        return {"neuron": neurons[0].as_dict()}
    return {"neurons": [n.as_dict() for n in neurons]}


def same_card(old: Any, new: Any, rel: float = 1e-4) -> bool:
    """Whether two target cards agree: every key and string exactly, every float to `rel` (or to
    `rel` / 10 absolutely, for values near 0) — a label table computed again in another process (its
    cache not kept, e.g. a run restored from its committed files) moves float32 labels by ~1e-6, and
    with them a split's mean or median, which is not another target set."""
    if isinstance(old, dict) and isinstance(new, dict):
        return old.keys() == new.keys() and all(same_card(old[k], new[k], rel) for k in old)
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(same_card(a, b, rel) for a, b in zip(old, new, strict=True))
    if isinstance(old, float) or isinstance(new, float):
        numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (old, new))
        return numbers and math.isclose(old, new, rel_tol=rel, abs_tol=rel / 10)
    return old == new


def _write_target(out: Path, record: dict[str, Any], merge: bool, write: bool = True) -> None:
    """target.json: the neuron, how it was chosen, and per seed its target card and corpus (split);
    `merge`: add this seed to the file's seeds (refusing a different neuron or target set); with
    `write=False` (a cell beside others) it must be there already, and match."""
    file = out / "target.json"
    if not write and not file.is_file():
        raise UserError(f"{file} is missing: the experiment's prepare cell writes it before any run")
    if (merge or not write) and file.is_file():
        old = read_record(file, DICT)
        same = all(old.get(k) == record.get(k) for k in ("neuron", "neurons"))
        new = json.loads(json.dumps(record["seeds"]))
        seeds = old.get("seeds") if isinstance(old.get("seeds"), dict) else {}
        same = same and all(same_card(seeds.get(k, v), v) for k, v in new.items())
        if not same:
            raise UserError(f"{file}: --resume with a different neuron or target set; use --overwrite")
        record = {**record, "seeds": {**seeds, **new}}
    if write:
        write_json(file, record)


def _target_seeds(out: Path) -> set[str]:
    """The seeds target.json records (none when it is missing or unreadable)."""
    try:
        seeds = read_record(out / "target.json", DICT).get("seeds")
    except UserError:
        return set()
    return set(seeds) if isinstance(seeds, dict) else set()


def _read_run(out: Path, key: tuple[int, str, str]) -> RunRecord:
    seed, condition, mode = key
    return RunRecord.read(run_dir(out, condition, mode, seed) / "run.json")


def split_record(splits: Splits, seed: int, experiment: Experiment) -> dict[str, Any]:
    """run.json's `split`: which split this checkpoint trained and was tested on."""
    card = splits.card.get("split", {})
    return {
        "seed": seed, "training_seed_owns_split": experiment.corpus.split_seed == "train",
        "by": experiment.corpus.split_by, "method": card.get("method"), "texts": card.get("texts"),
        "groups": card.get("groups"), "also_in_train": card.get("also_in_train"),
        "sha256": card.get("sha256"),
    }  # fmt: skip


def _claim_run(folder: Path, digest: str, resume: bool, overwrite: bool) -> bool:
    """True when the run must be trained; a finished run is skipped on --resume."""
    state = folder.with_name(folder.name + ".state")
    if (folder / "run.json").is_file():
        if overwrite:
            shutil.rmtree(folder)
        elif resume:
            saved = RunRecord.read(folder / "run.json").config_hash
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
    *,
    splits: tuple[Splits, dict[int, Splits]],
    selection: dict[str, Any],
    seeds: Sequence[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    subject: Subject | None = None,
    cache_dir: Path | None = None,
    on_step: Callable[[int], None] | None = None,
    cells: Collection[tuple[str, str, int]] | None = None,
    shared_cache: Path | None = None,
    label_source: LabelSource | None = None,
) -> list[RunRecord]:
    """Train every planned run; returns their run.json records (finished ones read back on --resume).

    The trainer is the pipeline's train stage (`mechcheck.pipeline.Pipeline.train`, which `mechcheck
    run` and `mechcheck train` both run, `mechcheck.train_command.train_chain` from a library): it owns
    no fact of the chain before it. `splits`: (the selection split, each training seed's split) as the
    corpus stage made them; `selection`: how the select stage fixed the experiment's neuron (run.json's
    `neuron_selection`, recorded as is); the experiment's neuron is fixed (`trained_neurons`);
    `label_source`: the labels stage's labels of the experiment's `[labels]` neuron (required then):
    the trained model's own neuron's labels computed beforehand, or another model's (`label_run`).
    `cells` narrows the runs to these (condition, target mode, seed) triples, for an executor that
    runs each in its own process (`mechcheck.executor`): an empty set trains nothing and only
    prepares — it writes target.json and fills the caches the planned runs read — and a non-empty one
    leaves target.json as the prepare cell wrote it. `shared_cache` is a folder for those caches (the
    original model's table of labels, features and residuals) that every such process reads."""
    seeds = tuple(experiment.train.seeds if seeds is None else seeds)
    pairs = check_experiment(experiment, seeds)
    if experiment.labels is not None and label_source is None:
        raise ValueError("[labels]: the pipeline's labels stage makes the labels; pass them as label_source")
    out = claim_dir(out, overwrite, resume)
    start = time.perf_counter()
    if subject is None:
        from mechcheck.subject import load_subject

        subject = load_subject(experiment.subject.model)
    _, per_seed = splits  # the selection split served the select stage; each seed trains on its own
    plan_runs = {
        (seed, c.name, mode): config_hash(experiment, c.name, mode, seed)
        for seed in seeds
        for c, mode in pairs
        if cells is None or (c.name, mode, seed) in cells
    }
    pending = {
        key
        for key, digest in plan_runs.items()
        if _claim_run(run_dir(out, *key[1:], key[0]), digest, resume, overwrite)
    }
    prepare_only = cells is not None and not cells
    recorded = _target_seeds(out) if cells is None else None  # target.json lost: its seeds made again
    lost = set() if recorded is None else {seed for seed in seeds if str(seed) not in recorded}
    todo = [seed for seed in seeds if prepare_only or seed in lost or any(key[0] == seed for key in pending)]
    shared = None if shared_cache is None else Path(shared_cache)
    if todo:
        neurons = trained_neurons(experiment, subject)
        table_seeds = todo if shared is None else seeds  # the cells of a run all read one table
        texts = [t for seed in table_seeds for name in SPLITS for t in getattr(per_seed[seed], name)]
        cache = shared and shared / "tables"
        labels, model_table = build_tables(
            experiment, subject, neurons, texts, pairs, len(table_seeds), progress, cache
        )  # fmt: skip
        own = label_source is None or label_source.is_own(experiment.subject.model, neurons)
        if label_source is not None and own:
            labels = label_source.table  # the same neuron's labels, as the labels stage made them
        original = {k: v.detach().clone() for k, v in subject.model.state_dict().items()}
        base = {
            "base_model": experiment.subject.model, **neuron_record(neurons),
            "position": experiment.neuron.position, "experiment": to_dict(experiment),
            "neuron_selection": selection, "versions": versions(),
        }  # fmt: skip
        if not own:
            base |= label_run(label_source, neurons, selection)
    cfg, c = experiment.train, experiment.corpus
    cache_dir = cache_dir or (shared / "features" if shared else default_cache_dir())
    prepared = time.perf_counter() - start
    runs = []
    for seed in seeds:
        if seed not in todo:
            runs += [_read_run(out, key) for key in plan_runs if key[0] == seed]
            continue
        seed_start = time.perf_counter()
        targets = labels.targets(per_seed[seed])
        reported = targets if own else label_targets(label_source, per_seed[seed])
        corpus = {"spec": to_dict(c), "card": per_seed[seed].card}
        record = {**neuron_record(reported), "position": base["position"]}
        record["selection"] = base["neuron_selection"]
        record["seeds"] = {str(seed): {"target": reported.card, "corpus": corpus}}
        table = {"texts": len(labels.texts), "seconds": labels.seconds}
        merge, write = resume or seed != todo[0], cells is None or prepare_only
        _write_target(out, record | {"table": table}, merge, write)
        if prepare_only:
            continue
        prompt = fit_token_readout(cfg.readout, subject, targets) if is_token(cfg.readout) else None
        bench = Bench(
            subject, targets, cfg.batch_size, cfg.drift_texts, cache_dir, progress, prompt, model_table,
            original, layer=targets.layer,
        )  # fmt: skip
        seconds = time.perf_counter() - seed_start
        bench.seconds |= {"prepare": prepared, "table": model_table.seconds, "seed": seconds}
        provenance = base | {
            "corpus": corpus, "split": split_record(per_seed[seed], split_seed(experiment, seed), experiment),
            "target": {"card": reported.card, "mean": reported.mean, "std": reported.std},
        }  # fmt: skip
        for condition, mode in pairs:
            key = (seed, condition.name, mode)
            if key not in plan_runs:
                continue
            if key not in pending:
                runs.append(_read_run(out, key))
                continue
            runs.append(
                train_run(
                    bench,
                    condition.name,
                    mode,
                    seed,
                    cfg.for_condition(condition.name),
                    run_dir(out, condition.name, mode, seed),
                    provenance,
                    plan_runs[key],
                    resume=resume,
                    progress=progress,
                    on_step=on_step,
                    targets=None if own else reported,
                )  # fmt: skip
            )
    return runs
