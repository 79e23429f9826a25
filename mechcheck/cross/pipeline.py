"""`mechcheck run CROSS.toml --out runs/NAME`: corpus → labels → train (both reporters) → report.

Layout of `runs/NAME/`:

    experiment.json                       which experiment this directory belongs to (and its config)
    corpus/                               card.json, splits.json (the texts both models read)
    labels/<model>/labels.json            the model's neuron on every text, at its own label position
    train/<reporter>/<condition>/<label>/seed-<k>/   one checkpoint per cell of the 2×2 matrix
    results.json, report.md, figures/     the matrix and the report, recomputed from the predictions

Stages resume as in `mechcheck.pipeline`: each has a `stage.json` with the hash of its inputs; a
finished cell whose configuration hash is unchanged is kept, an interrupted one continues from its
saved loop state.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from mechcheck.checkpoint import neuron_weights
from mechcheck.config import to_dict
from mechcheck.cross.experiment import CrossExperiment, read_cross
from mechcheck.cross.labels import read_labels, write_labels
from mechcheck.errors import UserError
from mechcheck.experiment import with_command_options
from mechcheck.outputs import versions, write_json
from mechcheck.ownership import hold
from mechcheck.pipeline import Pipeline
from mechcheck.readout import Neuron
from mechcheck.records import DICT, STR, MapOf, Obj, read_record
from mechcheck.rundir import MARKER, claim_run_dir, identity, write_run_record
from mechcheck.stages import Stage, digest
from mechcheck.subject import Subject, weights_digest


class CrossPipeline:
    """One cross-prediction run directory; the corpus stage and the stage runner are the pipeline's."""

    def __init__(
        self,
        experiment: CrossExperiment,
        out: Path,
        progress: bool,
        subjects: dict[str, Subject] | None = None,
    ):
        self.experiment, self.out, self.progress = experiment, Path(out), progress
        self.base = Pipeline(experiment.base(), self.out, progress)
        self.subjects = dict(subjects or {})

    @property
    def names(self) -> tuple[str, str]:
        a, b = self.experiment.models
        return a.name, b.name

    def subject(self, name: str) -> Subject:
        if name not in self.subjects:
            self.subjects[name] = load_model(self.experiment, name)
        return self.subjects[name]

    # labels ------------------------------------------------------------------------------
    def labels(self, corpus: Stage) -> dict[str, Stage]:
        e = self.experiment
        stages = {}
        for m in e.models:
            inputs = {"model": to_dict(m), "position": e.position, "max_tokens": e.corpus.max_tokens}
            inputs["corpus"] = corpus.hash
            stages[m.name] = self.base.stage(f"labels/{m.name}", inputs, ("labels.json",), self._labels)
        return stages

    def _labels(self, stage: Stage, previous: dict[str, Any]) -> None:
        from mechcheck.targets import build_targets

        name = stage.name.split("/", 1)[1]
        m, subject = self.experiment.model(name), self.subject(name)
        neuron = Neuron(m.layer, m.index)
        targets = build_targets(
            subject, self.base.splits(), neuron, self.experiment.position, self.experiment.corpus.max_tokens,
            progress=self.progress,
        )  # fmt: skip
        write_labels(stage.folder / "labels.json", name, m.model, targets)
        write_json(stage.folder / "weights.json", weights_digest(neuron_weights(subject, neuron)))

    # train -------------------------------------------------------------------------------
    def planned_runs(self, reporter: str) -> dict[str, str]:
        """`<condition>/<label>/seed-<k>` → the configuration hash of that cell."""
        e = self.experiment
        runs = {}
        for condition in e.train.conditions:
            for label in self.names:
                for seed in e.train.seeds:
                    runs[f"{condition}/{label}/seed-{seed}"] = cell_hash(e, reporter, label, condition, seed)
        return runs

    def train(self, corpus: Stage, labels: dict[str, Stage]) -> dict[str, Stage]:
        stages = {}
        for reporter in self.names:
            runs = self.planned_runs(reporter)
            inputs = {"corpus": corpus.hash, "labels": {n: s.hash for n, s in labels.items()}, "runs": runs}
            outputs = tuple(f"{run}/run.json" for run in runs)
            stages[reporter] = self.base.stage(
                f"train/{reporter}", inputs, outputs, self._train, reporter=reporter, runs=runs
            )
        return stages

    def _train(self, stage: Stage, previous: dict[str, Any]) -> None:
        """The reporter's cells through the trainer (`mechcheck.train.cell.train_run`) on one bench: its
        own labels for the self cells, the other model's for the other cells; every cell's frozen prefix
        ends at the reporter's own neuron's layer."""
        from mechcheck.train.bench import Bench
        from mechcheck.train.cell import train_run
        from mechcheck.train.frozen_fit import default_cache_dir

        e, name = self.experiment, stage.extra["reporter"]
        splits = self.base.splits()
        labels = {n: read_labels(self.out / "labels" / n / "labels.json", splits) for n in self.names}
        bench = Bench(
            self.subject(name), labels[name][1], e.train.batch_size, e.train.drift_texts, default_cache_dir(),
            self.progress, layer=e.model(name).layer,
        )  # fmt: skip
        for run, run_hash in stage.extra["runs"].items():
            folder, done = stage.folder / run, _finished(stage.folder / run)
            if done == run_hash:
                continue
            if done is not None or (previous.get("runs") or {}).get(run) not in (None, run_hash):
                for path in (folder, folder.with_name(folder.name + ".state")):  # changed: start afresh
                    shutil.rmtree(path, ignore_errors=True)
            condition, label, seed = run.split("/")
            seed = int(seed.removeprefix("seed-"))
            record, targets = labels[label]
            train_run(
                bench, condition, "fixed", seed, e.train.for_condition(condition), folder,
                self.provenance(name, label, record), run_hash, resume=True, progress=self.progress,
                targets=None if label == name else targets,
            )  # fmt: skip

    def provenance(self, reporter: str, label: str, record: dict[str, Any]) -> dict[str, Any]:
        """What a cell's run.json says besides the training: whose neuron, read by whom, on what (the
        trainer adds `weights_sha256` of a self cell's neuron; an other cell's is its label model's)."""
        e = self.experiment
        card = read_record(self.out / "corpus" / "card.json", DICT)
        run = {
            "base_model": e.model(reporter).model,
            "label_model": e.model(label).model,
            "cross": {"reporter": reporter, "label": label, "self": reporter == label},
            "neuron": record["neuron"],
            "position": e.position,
            "experiment": to_dict(e),
            "corpus": {"spec": to_dict(e.corpus), "card": card},
            "versions": versions(),
            "target": {"card": record["card"], "mean": record["card"]["standardisation"]["mean"],
                       "std": record["card"]["standardisation"]["std"]},
            "reporter_layer": e.model(reporter).layer,
        }  # fmt: skip
        if reporter != label:
            weights = self.out / "labels" / label / "weights.json"
            run["label_weights_sha256"] = read_record(weights, MapOf(STR))
        return run

    # report ------------------------------------------------------------------------------
    def report(self, upstream: list[Stage]) -> Stage:
        inputs = {s.name: s.hash for s in upstream} | {"cross": to_dict(self.experiment.cross)}
        return self.base.stage("report", inputs, ("../results.json", "../report.md"), self._report)

    def _report(self, stage: Stage, previous: dict[str, Any]) -> None:
        from mechcheck.cross.render import render_cross

        render_cross(self.out)


def cell_hash(e: CrossExperiment, reporter: str, label: str, condition: str, seed: int) -> str:
    """Everything that determines one cell's checkpoint."""
    train = to_dict(e.train.for_condition(condition))
    train.pop("seeds", None)
    payload = {"train": train, "corpus": to_dict(e.corpus), "position": e.position, "seed": e.seed}
    payload |= {"reporter": to_dict(e.model(reporter)), "label": to_dict(e.model(label))}
    return digest(payload | {"condition": condition, "run_seed": seed})


def _finished(folder: Path) -> str | None:
    """The configuration hash of a finished checkpoint in `folder` (None when there is none or it is
    unreadable: the cell is trained afresh)."""
    try:
        return read_record(folder / "run.json", Obj({"config_hash": STR})).get("config_hash")
    except UserError:
        return None


def load_model(experiment: CrossExperiment, name: str) -> Subject:
    """Load one of the experiment's models and check its neuron exists (a UserError otherwise)."""
    from mechcheck.subject import load_subject

    m = experiment.model(name)
    subject = load_subject(m.model)
    try:
        subject.anatomy.check_neuron(m.layer, m.index)
    except UserError as err:
        raise UserError(f"model {name!r} ({m.model}): {err}") from err
    return subject


def run_cross(
    experiment: CrossExperiment,
    out: str | Path,
    progress: bool = False,
    subjects: dict[str, Subject] | None = None,
) -> Path:
    """Every stage in order (skipping those already done); returns the report's path."""
    p = CrossPipeline(experiment, Path(out), progress, subjects)
    corpus = p.base.corpus()
    labels = p.labels(corpus)
    trains = p.train(corpus, labels)
    p.report([corpus, *labels.values(), *trains.values()])
    return p.out / "report.md"


def cross_run_command(args: argparse.Namespace, data: dict[str, Any]) -> int:
    """`mechcheck run CROSS.toml --out runs/NAME`: both models are loaded (and their neurons checked)
    before anything is written."""
    experiment = read_cross(data, str(args.experiment))
    experiment = with_command_options(experiment, args)
    subjects = {m.name: load_model(experiment, m.name) for m in experiment.models}
    name, config = identity(experiment, args.experiment), to_dict(experiment)
    with hold(args.out) as output:
        claim_run_dir(output, name, config, args.overwrite)
        write_run_record(output.out, name, args.experiment, config, output.marker["run_id"])
        path = run_cross(experiment, output.out, progress=not args.quiet, subjects=subjects)
    print(f"report: {path}")
    return 0


def is_cross_run(folder: str | Path) -> bool:
    """Whether `folder` is a cross-prediction run (its experiment.json names two models)."""
    try:
        config = read_record(Path(folder) / MARKER, Obj({"config": DICT})).get("config") or {}
    except UserError:
        return False
    return "models" in config


def cross_report_command(args: argparse.Namespace) -> int:
    """`mechcheck report runs/NAME` for a cross-prediction run: recompute and re-render."""
    from mechcheck.cross.render import render_cross

    print(f"report: {render_cross(args.dir)}")
    return 0
