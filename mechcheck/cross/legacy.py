"""A run directory of the first cross-prediction pipeline, resumed by the ordinary one.

That pipeline (`[[models]]` experiments, before cross-prediction was an experiment with `[cross]`)
kept its cells under `train/<reporter>/<condition>/<label>/seed-<k>/`, each model's labels in
`labels/<model>/labels.json`, and one split (the experiment seed's) for every training seed.
`adopt` turns such a directory into the layout of this experiment's runs, under the run's lock and
before it is claimed:

- every finished cell whose configuration hash is the one the old pipeline gave this experiment's
  cell (`legacy_cell_hash`) moves to `<reporter>/<label>/train/<condition>-fixed/seed-<k>/` with this
  experiment's hash (the old one kept in `adopted_from`): it is not trained again;
- each label model's saved labels become its labels stage's file, so the cells trained now score
  the very same numbers as the adopted ones (recomputed instead when they do not cover the texts);
- the rest of the old layout goes (an unfinished cell restarts), and experiment.json records this
  experiment, so the run resumes as its own.

The report of a directory left in the old layout renders as before (`mechcheck.cross.render`).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from mechcheck.config import to_dict
from mechcheck.errors import UserError
from mechcheck.experiment import Experiment, split_seed
from mechcheck.outputs import write_json
from mechcheck.records import DICT, Obj, read_json, read_record
from mechcheck.run_record import RunRecord
from mechcheck.rundir import MARKER, write_run_record
from mechcheck.stages import Stage, digest
from mechcheck.targets import SPLITS

OLD_ENTRIES = ("corpus", "labels", "train", "report", "results.json", "report.md", "figures")


def is_legacy(out: Path) -> bool:
    """Whether `out` holds a run of the first cross-prediction pipeline (`[[models]]` in its config)."""
    try:
        config = read_record(out / MARKER, Obj({"config": DICT})).get("config") or {}
    except UserError:
        return False
    return "models" in config


def legacy_cell_hash(runs: dict[str, Experiment], key: str, condition: str, seed: int, split: str) -> str:
    """The configuration hash the old pipeline gave cell (`key` = reporter/label, condition, seed) of
    this experiment; `split`: the corpus table's split_seed as its file set it (it used one split)."""
    e = runs[key]
    train = to_dict(e.train.for_condition(condition))
    train.pop("seeds", None)
    corpus = to_dict(replace(e.corpus, split_seed=split))
    payload = {"train": train, "corpus": corpus, "position": e.neuron.position, "seed": e.seed}
    reporter, label = key.split("/")
    payload |= {"reporter": _model(runs, reporter), "label": _model(runs, label)}
    return digest(payload | {"condition": condition, "run_seed": seed})


def _model(runs: dict[str, Experiment], name: str) -> dict[str, Any]:
    """The old `[[models]]` entry of a model: its name, spec and neuron."""
    e = runs[f"{name}/{name}"]
    return {"name": name, "model": e.subject.model, "layer": e.neuron.layer, "index": e.neuron.index}


def adopt(
    out: Path, runs: dict[str, Experiment], name: str, file: str, config: dict[str, Any], progress: bool
) -> list[str]:
    """Move the old layout's finished cells into this experiment's runs (see the module docstring);
    returns the cells adopted, as `<reporter>/<label>/<condition>/seed-<k>`. A finished cell that is
    not one of this experiment's, as it is configured now, is refused before anything moves."""
    from mechcheck.train.record import config_hash

    moves = {}
    for key, e in runs.items():
        reporter, label = key.split("/")
        for condition in e.train.conditions:
            for seed in e.train.seeds:
                old = out / "train" / reporter / condition / label / f"seed-{seed}"
                if split_seed(e, seed) == e.seed and _finished_as(old, runs, key, condition, seed):
                    new = out / key / "train" / f"{condition}-fixed" / f"seed-{seed}"
                    moves[old] = (
                        new,
                        config_hash(e, condition, "fixed", seed),
                        f"{key}/{condition}/seed-{seed}",
                    )
    finished = {p.parent for p in out.glob("train/*/*/*/seed-*/run.json")}
    if finished - set(moves):
        cell = sorted(finished - set(moves))[0].relative_to(out)
        raise UserError(
            f"{out} holds a cross-prediction run of the first layout whose cell {cell} is not one of this "
            "experiment's as configured now; pass --overwrite to replace the run, or choose another --out"
        )
    for old, (new, new_hash, _) in moves.items():
        new.parent.mkdir(parents=True, exist_ok=True)
        old.rename(new)
        run = read_json(new / "run.json")
        run["adopted_from"] = {"cell": str(old.relative_to(out)), "config_hash": run["config_hash"]}
        write_json(new / "run.json", run | {"config_hash": new_hash})
    for key, e in runs.items():
        _adopt_labels(out, key, e, progress)
    for entry in OLD_ENTRIES:
        path = out / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    write_run_record(out, name, file, config, str(read_json(out / MARKER).get("run_id") or ""))
    return [cell for _, _, cell in moves.values()]


def _finished_as(folder: Path, runs: dict[str, Experiment], key: str, condition: str, seed: int) -> bool:
    """Whether `folder` holds a finished cell the old pipeline trained with this cell's configuration."""
    try:
        saved = RunRecord.read(folder / "run.json").config_hash
    except UserError:  # absent or unreadable: not finished
        return False
    if not (folder / "predictions.json").is_file():
        return False
    return saved in {legacy_cell_hash(runs, key, condition, seed, s) for s in ("train", "experiment")}


def _adopt_labels(out: Path, key: str, e: Experiment, progress: bool) -> None:
    """Run `key`'s corpus stage, then its labels stage from the old labels of its label model."""
    from mechcheck.pipeline import Pipeline
    from mechcheck.train.labels import LABELS_FILE, label_source, labels_neuron

    p = Pipeline(e, out / key, progress, shared=out / "shared")
    corpus = p.corpus()
    label = key.split("/")[1]

    def from_old(stage: Stage, previous: dict[str, Any]) -> None:
        values = _old_labels(out, label, e)
        texts = p.texts()
        if values is None or any(t not in values[0] for t in texts):
            return p._labels(stage, previous)  # the old labels do not cover these texts: made again
        by_text, weights = values
        unique = list(dict.fromkeys(texts))
        source = label_source(
            e.labels.model, labels_neuron(e), unique, [by_text[t] for t in unique], e.neuron.position,
            e.corpus.max_tokens, weights,
        )  # fmt: skip
        source.write(stage.folder / LABELS_FILE)

    p.labels(corpus, step=from_old)


def _old_labels(out: Path, label: str, e: Experiment) -> tuple[dict[str, float], dict[str, str]] | None:
    """The old labels of model `label` by text, and its neuron's weight hashes (None when they are
    missing or not of this experiment's neuron, position and token limit)."""
    folder = out / "labels" / label
    try:
        record, splits = read_json(folder / "labels.json"), read_json(out / "corpus" / "splits.json")
        weights = read_json(folder / "weights.json")
        same = (record["model"], record["neuron"], record["position"], record["max_tokens"]) == (
            e.labels.model, {"layer": e.labels.layer, "index": e.labels.index}, e.neuron.position,
            e.corpus.max_tokens,
        )  # fmt: skip
        if not same:
            return None
        return {
            t: float(v) for s in SPLITS for t, v in zip(splits[s], record["labels"][s], strict=True)
        }, weights
    except (UserError, KeyError, TypeError, ValueError):
        return None
