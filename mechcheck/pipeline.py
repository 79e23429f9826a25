"""`mechcheck run EXPERIMENT.toml --out runs/NAME`: corpus → select → train → test → report.

Layout of `runs/NAME/`:

    .mechcheck.json            mechcheck's marker: what it wrote here (what --overwrite may delete)
    .mechcheck.lock            held while a command writes the directory (mechcheck.lock)
    experiment.json            which experiment this directory belongs to (and its config)
    corpus/                    card.json, splits.json (the selection split: the experiment's seed),
                               splits/seed-<k>.json (each training seed's own split, the one it trains on)
    select/                    neurons.json (+ the chosen neuron's histogram when it was selected; one per
                               band when `neuron.bands` is set)
    train/                     the trainer's checkpoints: <condition>-<mode>/seed-<k>/, target.json
    test/<condition>-<mode>/   the battery over all seeds of that run: results.json, predictions/
    report/                    the report stage's record
    results.json, report.md, figures/   the combined results and the report rendered from them

Every stage folder has a `stage.json` with the sha256 of its inputs (its config section and the
hashes of what it depends on); a rerun skips a stage whose hash matches and whose outputs exist,
and a killed training run continues from its saved state. Another experiment's run, or a changed
configuration of this one, is refused without --overwrite (`mechcheck.rundir`). `mechcheck report
runs/NAME` re-renders the report from the files alone.

An experiment with `[[variant]]` tables (`experiments/study.toml`) runs each variant as its own run
in `runs/NAME/<variant>/`; their corpus and select stages live in `runs/NAME/shared/<stage>-<hash>/`,
so variants that agree on them (the same corpus; the same scan, whichever band they train) share
one. `--variants a,b` runs only those.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mechcheck.battery.base import BatteryOptions
from mechcheck.config import to_dict
from mechcheck.errors import UserError
from mechcheck.experiment import Experiment, config_dict
from mechcheck.outputs import write_json
from mechcheck.records import DICT, STR, ListOf, Obj, read_record
from mechcheck.run_results import CHOSEN, RESULTS_VERSION, combined_results
from mechcheck.stages import Stage, digest, run_stage

MIN_EVAL_TEXTS = BatteryOptions.min_labels  # the battery's minimum for a confidence interval
SPLITS = Obj({k: ListOf(STR) for k in ("train", "val", "test")}, required=("train", "val", "test"))


# --- stages --------------------------------------------------------------------------------
class Pipeline:
    """One run directory: builds each stage from the experiment and the stages before it."""

    def __init__(
        self, experiment: Experiment, out: Path, progress: bool, shared: Path | None = None,
        homes: dict[str, Path] | None = None, trainer: dict[str, Any] | None = None,
        on_work: Callable[[], None] | None = None,
    ):  # fmt: skip
        self.experiment, self.out, self.progress = experiment, out, progress
        # called once the directory holds work worth resuming (a scan, a trained run, a battery):
        # `ownership.Output.keep`, so that a later refusal does not undo it
        self.on_work = on_work or (lambda: None)
        self.shared = shared  # variants: where corpus and select stages live, by input hash
        self.homes = homes or {}  # a stage's folder other than out/<name> (`mechcheck train`: train → out)
        # the trainer's resume policy: by default a run whose configuration changed is replaced; with
        # `trainer` (`mechcheck train`'s {"resume", "overwrite"}) it is refused, never deleted
        self.trainer = trainer
        self.records: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, Path] = {}
        self._subject = None

    def use_subject(self, subject) -> None:
        """Use this already loaded subject of the experiment's model (None: load it when needed)."""
        self._subject = subject

    def subject(self):
        if self._subject is None:
            from mechcheck.subject import load_subject

            self._subject = load_subject(self.experiment.subject.model)
        return self._subject

    def stage(
        self, name: str, inputs: dict[str, Any], outputs: tuple[str, ...], step, shareable: bool = False,
        **extra: Any,
    ) -> Stage:  # fmt: skip
        """The stage, run by `step` unless it is done (`step=None`: only built, for an executor). A
        `shareable` stage of a variant lives in the shared folder, by the hash of its inputs."""
        folder = self.homes.get(name, self.out / name)
        if shareable and self.shared is not None:
            folder = self.shared / f"{name}-{digest(inputs)[:12]}"
            _link(self.out / name, folder)
        stage = Stage(name, folder, inputs, outputs, extra)
        self.folders[name] = folder
        return stage if step is None else self.execute(stage, step)

    def execute(self, stage: Stage, step) -> Stage:
        with tqdm(total=1, desc=stage.name, disable=not self.progress, leave=True) as bar:
            try:
                ran, record = run_stage(stage, step)
            except UserError:
                if self.worked(stage):  # e.g. a train stage refused after some of its runs finished
                    self.on_work()
                raise
            bar.set_postfix_str("ran" if ran else "up to date")
            bar.update(1)
        if ran and self.worked(stage):
            self.on_work()
        self.records[stage.name] = record
        return stage

    def worked(self, stage: Stage) -> bool:
        """Whether `stage` left costly work behind: a scan (not a fixed neuron), labels, a trained run
        or a battery. The corpus stage and a fixed neuron's record are cheap to redo."""
        if stage.name == "corpus":
            return False
        if stage.name == "select":
            from mechcheck.selection import fixed_record

            return fixed_record(self.experiment.neuron) is None and (stage.folder / "neurons.json").is_file()
        return stage.name != "train" or any(stage.folder.rglob("run.json"))

    # corpus ------------------------------------------------------------------------------
    def corpus(self) -> Stage:
        e = self.experiment
        seeds = sorted(set(e.train.seeds))
        outputs = ("card.json", "splits.json", *(f"splits/seed-{s}.json" for s in seeds))
        inputs = {"corpus": to_dict(e.corpus), "seed": e.seed, "train_seeds": seeds}
        return self.stage("corpus", inputs, outputs, self._corpus, shareable=True)

    def _corpus(self, stage: Stage, previous: dict[str, Any]) -> None:
        from mechcheck.corpus import experiment_splits

        selection, per_seed = experiment_splits(self.experiment, sorted(set(self.experiment.train.seeds)))
        write_json(stage.folder / "splits.json", selection.as_json())
        for seed, splits in per_seed.items():
            file = stage.folder / "splits" / f"seed-{seed}.json"
            write_json(file, splits.as_json() | {"training_seed": seed})
        write_json(stage.folder / "card.json", selection.card)

    def splits(self) -> dict[str, list[str]]:
        """The selection split's texts (train/val/test lists)."""
        return read_record(self.folders["corpus"] / "splits.json", SPLITS)

    def seed_splits(self):
        """(the selection split, {training seed: its split}) as the corpus stage wrote them."""
        from mechcheck.corpus import Splits

        folder = self.folders["corpus"]
        selection = Splits.from_json(read_record(folder / "splits.json", DICT))
        per_seed = {
            seed: Splits.from_json(read_record(folder / "splits" / f"seed-{seed}.json", DICT))
            for seed in self.experiment.train.seeds
        }
        return selection, per_seed

    # select ------------------------------------------------------------------------------
    def select(self, corpus: Stage) -> Stage:
        e = self.experiment
        neuron = config_dict(e)["neuron"]
        neuron.pop("band", None)  # which band a variant trains: not part of the scan (variants share it)
        inputs = {"model": e.subject.model, "neuron": neuron, "corpus": corpus.hash}
        inputs |= {"max_tokens": e.corpus.max_tokens, "seed": e.seed}
        return self.stage("select", inputs, ("neurons.json",), self._select, shareable=True)

    def _select(self, stage: Stage, previous: dict[str, Any]) -> None:
        from mechcheck.selection import fixed_record, select, write_histograms

        e = self.experiment
        record = fixed_record(e.neuron)
        if record is None:
            texts, subject = self.splits()["train"], self.subject()
            record, result = select(subject, texts, e.neuron, e.corpus.max_tokens, e.seed, self.progress)
            write_histograms(record, result, stage.folder)
        write_json(stage.folder / "neurons.json", record)

    def selection(self) -> dict[str, Any]:
        return read_record(self.folders["select"] / "neurons.json", DICT)

    # train -------------------------------------------------------------------------------
    def train_experiment(self) -> Experiment:
        """The experiment the trainer sees: the neuron fixed to the one the select stage chose (several
        neurons are always fixed by the experiment itself)."""
        from mechcheck.selection import with_chosen

        read_record(self.folders["select"] / "neurons.json", CHOSEN)
        return with_chosen(self.experiment, self.selection())

    def planned_runs(self, experiment: Experiment) -> dict[str, str]:
        """`<condition>-<mode>/seed-<k>` → the trainer's configuration hash of that run."""
        from mechcheck.train.plan import check_experiment
        from mechcheck.train.record import config_hash

        seeds = experiment.train.seeds
        pairs = check_experiment(experiment, seeds)
        return {
            f"{c.name}-{m}/seed-{s}": config_hash(experiment, c.name, m, s) for c, m in pairs for s in seeds
        }

    # labels ------------------------------------------------------------------------------
    def labels(self, corpus: Stage, step=None) -> Stage | None:
        """`[labels]`: the named neuron's labels of every text (another model's, for cross-prediction),
        made once and shared by every run that reads them (`step`: made otherwise, from saved labels)."""
        from mechcheck.train.labels import LABELS_FILE

        e = self.experiment
        if e.labels is None:
            return None
        inputs = {"labels": to_dict(e.labels), "position": e.neuron.position, "corpus": corpus.hash}
        inputs["max_tokens"] = e.corpus.max_tokens
        return self.stage("labels", inputs, (LABELS_FILE,), step or self._labels, shareable=True)

    def _labels(self, stage: Stage, previous: dict[str, Any]) -> None:
        from mechcheck.train.labels import LABELS_FILE, make_labels

        make_labels(self.experiment, self.texts(), self.progress).write(stage.folder / LABELS_FILE)

    def texts(self) -> list[str]:
        """Every text some training seed reads (each seed's splits in turn)."""
        from mechcheck.targets import SPLITS

        _, per_seed = self.seed_splits()
        return [t for splits in per_seed.values() for name in SPLITS for t in getattr(splits, name)]

    def label_source(self):
        from mechcheck.train.labels import LABELS_FILE, read_labels

        return None if self.experiment.labels is None else read_labels(self.folders["labels"] / LABELS_FILE)

    # train -------------------------------------------------------------------------------
    def train(self, corpus: Stage, select: Stage, labels: Stage | None = None, run_now: bool = True) -> Stage:
        experiment = self.train_experiment()
        runs = self.planned_runs(experiment)
        inputs = {
            "model": experiment.subject.model,
            "corpus": corpus.hash,
            "select": select.hash,
            "runs": runs,
        }
        if labels is not None:  # only then: the train stage of a run without [labels] hashes as it did
            inputs["labels"] = labels.hash
        outputs = ("target.json", *(f"{run}/run.json" for run in runs))
        return self.stage("train", inputs, outputs, self._train if run_now else None, runs=runs)

    def _train(self, stage: Stage, previous: dict[str, Any]) -> None:
        from mechcheck.train.plan import train_experiment

        if self.trainer is None:
            self.invalidate_train(stage, previous)
        subject = self.subject() if self._subject is not None else None
        self._subject = None  # the trainer changes and restores the weights; never reuse it afterwards
        train_experiment(
            self.train_experiment(), stage.folder, progress=self.progress, subject=subject,
            splits=self.seed_splits(), selection=self.run_selection(), label_source=self.label_source(),
            shared_cache=self.table_cache(), **(self.trainer or {"resume": True}),
        )  # fmt: skip

    def table_cache(self) -> Path | None:
        """Where a `[cross]` experiment's runs keep the original model's table: a reporter's runs read
        the same texts at the same neuron, so one pass serves all of them."""
        if self.experiment.cross is None or self.shared is None:
            return None
        return self.shared / "cache"

    def invalidate_train(self, stage: Stage, previous: dict[str, Any]) -> None:
        """Before training again: drop the runs whose configuration changed, and the target set when
        the model, corpus or neuron did; every other finished run is kept (and skipped)."""
        old = previous.get("runs") or {}
        for run, run_hash in stage.extra["runs"].items():
            if run in old and old[run] != run_hash:  # this run's configuration changed: start it afresh
                for path in (stage.folder / run, stage.folder / f"{run}.state"):
                    shutil.rmtree(path, ignore_errors=True)
        before = previous.get("inputs") or {}
        if any(before.get(k) != stage.inputs.get(k) for k in ("model", "corpus", "select", "labels")):
            (stage.folder / "target.json").unlink(
                missing_ok=True
            )  # a new target set: the trainer rewrites it

    def run_selection(self) -> dict[str, Any]:
        """How the select stage chose the trained neuron, as the checkpoints record it."""
        from mechcheck.selection import as_run_record

        return as_run_record(self.selection(), self.experiment.neuron.band)

    # test --------------------------------------------------------------------------------
    def has_battery(self) -> bool:
        """The battery tests an MLP neuron of the trained model itself: not the study's mlp_out target,
        not a run on `[labels]` (another model's neuron; cross-prediction's report is its matrix)."""
        return self.experiment.neuron.target == "neuron" and self.experiment.labels is None

    def test(self, train: Stage, run_now: bool = True) -> list[Stage]:
        if not self.has_battery():
            return []
        by_key: dict[str, dict[str, str]] = {}
        for run, run_hash in train.extra["runs"].items():
            key, seed = run.split("/")
            by_key.setdefault(key, {})[seed] = run_hash
        stages = []
        for key, runs in by_key.items():
            inputs = {"runs": runs, "battery": to_dict(self.experiment.battery), "seed": self.experiment.seed}
            checkpoints = [str(train.folder / key / seed) for seed in runs]
            step = self._test if run_now else None
            stages.append(self.stage(f"test/{key}", inputs, ("results.json",), step, checkpoints=checkpoints))
        return stages

    def _test(self, stage: Stage, previous: dict[str, Any]) -> None:
        from mechcheck.battery.runner import test_experiment

        test_experiment(self.experiment, stage.extra["checkpoints"], stage.folder, self.progress)

    # report ------------------------------------------------------------------------------
    def report(self, upstream: list[Stage]) -> Stage:
        inputs = {s.name: s.hash for s in upstream} | {"experiment": to_dict(self.experiment)}
        inputs["results"] = RESULTS_VERSION  # what combined_results computes: a new one reruns this stage
        return self.stage("report", inputs, ("../results.json", "../report.md"), self._report)

    def _report(self, stage: Stage, previous: dict[str, Any]) -> None:
        from mechcheck.report import render_report

        write_json(self.out / "results.json", combined_results(self.out, self.experiment, self.records))
        render_report(self.out)


def _link(link: Path, target: Path) -> None:
    """`link` → `target` as a relative symlink (a variant's view of a shared stage folder)."""
    target.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(target, link.parent)
    if link.is_symlink():
        if os.readlink(link) == relative:
            return
        link.unlink()
    elif link.exists():
        raise UserError(f"{link} exists and is not a link to the shared stage {target}; use --overwrite")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(relative, target_is_directory=True)


def check_test_split(p: Pipeline) -> None:
    """The battery's evaluation texts come from the test split: refuse a too small one before training."""
    from mechcheck.battery.evaluation import check_eval_size

    if not p.has_battery():
        return
    _, per_seed = p.seed_splits()
    n = min(min(len(s.test) for s in per_seed.values()), p.experiment.battery.max_eval)
    check_eval_size(n, MIN_EVAL_TEXTS, f"the test split of corpus {p.experiment.corpus.source!r}")


def check_split_first(experiment: Experiment, out: str | Path, shared: Path | None = None) -> None:
    """Build the corpus stage only and refuse a too small test split: for every variant of a run
    before any of them trains, so that no refusal comes after hours of work."""
    p = Pipeline(experiment, Path(out), False, shared)
    p.corpus()
    check_test_split(p)


def run_pipeline(
    experiment: Experiment,
    out: str | Path,
    progress: bool = False,
    executor=None,
    shared: Path | None = None,
    on_work: Callable[[], None] | None = None,
) -> Path:
    """Every stage in order (skipping those already done); returns the report's path. With a cell
    executor (`mechcheck.executor`) the train and test stages run as its cells instead. `shared`: the
    folder of stages shared between variants (corpus, select). `on_work`: see `Pipeline`."""
    p = Pipeline(experiment, Path(out), progress, shared, on_work=on_work)
    corpus = p.corpus()
    check_test_split(p)
    select = p.select(corpus)
    labels = p.labels(corpus)
    if executor is None:
        train = p.train(corpus, select, labels)
        tests = p.test(train)
    else:
        train, tests = executor.run_cells(p, corpus, select)
    p.report([corpus, select, *([labels] if labels else []), train, *tests])
    return p.out / "report.md"
