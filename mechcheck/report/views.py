"""Read a results directory into plain views the report renders.

Two layouts are understood:

- a battery directory (`mechcheck test --out DIR`): `results.json` with
  `format = "mechcheck-results/2"` (or `/1`, the first battery's) and `predictions/seed-<k>.json`
  — one condition;
- a pipeline run (`mechcheck run --out runs/NAME`): `results.json` with
  `format = "mechcheck-run/1"` embedding each condition's battery results and curves, and the
  predictions under each condition's battery directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from mechcheck import records
from mechcheck.errors import UserError
from mechcheck.neuron import Neuron
from mechcheck.records import column
from mechcheck.results_record import BATTERY_VERSIONS, BatteryResults, NeuronResults, RunResults, read_results
from mechcheck.run_record import RunRecord, run_files

_SEED_FILE = re.compile(r"seed-(\d+)\.json$")


@dataclass
class ConditionView:
    """One condition × target mode: its battery results, saved predictions and curves per seed."""

    key: str
    record: BatteryResults
    predictions: dict[int, dict[str, Any]] = field(default_factory=dict)
    curves: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    tag: str = ""  # the neuron, when this is one neuron's view of a several-neuron run

    @cached_property
    def results(self) -> dict[str, Any]:
        """The results as results.json writes them (one neuron's, for a view of one neuron)."""
        return self.record.to_json()

    @property
    def trained_only(self) -> bool:
        """A condition trained but never tested (a run without a battery, e.g. a coordinate target)."""
        return self.record.extra.get("trained_only") is True

    @property
    def run_key(self) -> str:
        """The condition's key without the neuron (shared by every neuron's view of one run)."""
        return self.key.removesuffix(f"-{self.tag}") if self.tag else self.key

    @property
    def title(self) -> str:
        return f"{self.condition} ({self.target_mode})" + (f", neuron {self.tag}" if self.tag else "")

    @property
    def run(self) -> RunRecord | None:
        return self.record.run

    @property
    def runs(self) -> tuple[RunRecord, ...]:
        return self.record.all_runs

    @property
    def condition(self) -> str:
        return str(self.record.condition_name or self.key.split("-")[0])

    @property
    def target_mode(self) -> str:
        return self.record.target_mode_name

    @property
    def seeds(self) -> list[int]:
        seeds = {r.seed for r in self.runs if isinstance(r.seed, int)}
        return sorted(seeds | set(self.predictions) | set(self.curves))

    @property
    def readout_frozen(self) -> bool:
        return self.run is not None and self.run.readout_frozen

    def metrics(self, seed: int) -> dict[str, Any]:
        for run in self.runs:
            if run.seed == seed:
                return run.metrics or {}
        return {}


@dataclass
class RunView:
    """Everything a report shows: header facts and the conditions, in order."""

    folder: Path
    name: str
    header: dict[str, Any]
    conditions: list[ConditionView]
    reference: str | None = None
    selection: dict[str, Any] | None = None
    stages: dict[str, Any] = field(default_factory=dict)


def _merge_neuron(entry: Any, i: int) -> Any:
    """A curve row / metrics table with neuron i's `per_neuron` entry lifted to the top."""
    if not isinstance(entry, dict) or not isinstance(entry.get("per_neuron"), list):
        return entry
    return {**{k: v for k, v in entry.items() if k != "per_neuron"}, **entry["per_neuron"][i]}


def _neuron_run(run: RunRecord, i: int, neuron: dict[str, Any]) -> RunRecord:
    return replace(run, neurons=(Neuron.from_dict(neuron),), metrics=_merge_neuron(run.metrics, i))


def neuron_views(view: ConditionView) -> list[ConditionView]:
    """A several-neuron condition as one single-neuron view per neuron (results.json `per_neuron`,
    predictions' columns, curves' and metrics' `per_neuron` entries); the first keeps `cross_talk`."""
    record = view.record
    if not record.several or not record.per_neuron:
        return [view]
    out = []
    for i, entry in enumerate(record.per_neuron):
        n = entry.neuron or {}
        tag = f"L{n.get('layer')}N{n.get('index')}"
        one = replace(
            record, several=False, per_neuron=(replace(entry, skipped=None, extra={}),),
            skipped={**(record.skipped or {}), **(entry.skipped or {})},
            cross_talk=record.cross_talk if i == 0 else None,
            run=record.run and _neuron_run(record.run, i, n),
            runs=tuple(_neuron_run(r, i, n) for r in view.runs),
        )  # fmt: skip
        preds = {seed: column(p, i) for seed, p in view.predictions.items() if "neurons" in p}
        curves = {seed: [_merge_neuron(r, i) for r in rows] for seed, rows in view.curves.items()}
        out.append(ConditionView(f"{view.key}-{tag}", one, preds, curves, tag))
    return out


def read_json(path: Path) -> Any:
    return records.read_json(path)  # one line for unreadable, invalid or too deeply nested JSON


def load_predictions(folder: Path) -> dict[int, dict[str, Any]]:
    """`predictions/seed-<k>.json` files under `folder` (absent folder → none)."""
    found: dict[int, dict[str, Any]] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("seed-*.json")):
        match = _SEED_FILE.search(path.name)
        data = records.check_predictions(records.read_json(path), str(path))
        if match:
            found[int(match.group(1))] = data
    return found


def checkpoint_predictions(folder: Path, results: BatteryResults) -> dict[int, dict[str, Any]]:
    """A battery folder published with its checkpoint's files beside results.json (run.json,
    predictions.json) instead of a predictions/ folder: that predictions.json, when the run.json
    beside it is the one the battery tested (same configuration hash and seed)."""
    run, beside = results.run, folder / "run.json"
    if run is None or not beside.is_file() or not (folder / "predictions.json").is_file():
        return {}
    saved = RunRecord.read(beside)
    if (saved.config_hash, saved.seed) != (run.config_hash, run.seed) or run.config_hash is None:
        return {}
    data = records.check_predictions(
        records.read_json(folder / "predictions.json"), str(folder / "predictions.json")
    )
    return {run.seed if run.seed is not None else 0: data}


def _curves_from_results(results: BatteryResults) -> dict[int, list[dict[str, Any]]]:
    curves: dict[int, list[dict[str, Any]]] = {}
    for run in [results.run, *results.runs]:
        if run is not None and isinstance(run.curves, list) and isinstance(run.seed, int):
            curves.setdefault(run.seed, run.curves)
    return curves


def _int_keys(data: Any) -> dict[int, Any]:
    if not isinstance(data, dict):
        return {}
    return {int(k): v for k, v in data.items() if str(k).lstrip("-").isdigit()}


def header_from(results: BatteryResults) -> dict[str, Any]:
    """Model, neuron, position, corpus, versions — from one battery results.json."""
    run = results.run
    neurons = [n.neuron for n in results.per_neuron] if results.several else [results.neuron.neuron]
    recorded = (run.neuron_dicts if len(run.neurons) > 1 else run.neuron_dicts[0]) if run else None
    return {
        "model": run.base_model if run else None,
        "neuron": (neurons if results.several else neurons[0]) or recorded,
        "position": results.position or (run.position if run else None),
        "corpus": (run.corpus_card or run.corpus) if run else None,
        "versions": results.versions or (run.versions if run else None),
        "eval": results.eval,
    }


def _battery_view(folder: Path, results: BatteryResults) -> RunView:
    predictions = load_predictions(folder / "predictions") or checkpoint_predictions(folder, results)
    view = ConditionView(results.key, results, predictions, _curves_from_results(results))
    reference = (results.run.experiment or {}).get("reference") if results.run else None
    return RunView(folder, results.title, header_from(results), neuron_views(view), reference)


def trained_conditions(folder: Path) -> list[ConditionView]:
    """The trained checkpoints of a run without a battery (`DIR/train/<condition>-<mode>/seed-<k>/`),
    one view per condition and mode, from each checkpoint's run.json and predictions.json."""
    views = []
    for key, files in sorted(run_files(folder / "train").items()):
        runs, predictions = [RunRecord.read(f) for f in files], {}
        for file, run in zip(files, runs, strict=True):
            saved = file.parent / "predictions.json"
            if saved.is_file() and isinstance(run.seed, int):
                predictions[run.seed] = records.check_predictions(records.read_json(saved), str(saved))
        neuron = runs[0].neuron_dicts[0] if runs[0].neurons else None
        record = BatteryResults(
            BATTERY_VERSIONS[-1], (NeuronResults(neuron=neuron),), run=runs[0], runs=tuple(runs),
            condition=runs[0].condition, target_mode=runs[0].target_mode, extra={"trained_only": True},
        )  # fmt: skip
        curves = {r.seed: r.curves for r in runs if isinstance(r.seed, int) and isinstance(r.curves, list)}
        views.append(ConditionView(key, record, predictions, curves))
    return views


def _run_view(folder: Path, data: RunResults) -> RunView:
    conditions = []
    for entry in data.conditions:
        sub = folder / (entry.dir or f"test/{entry.key or ''}")
        curves = _int_keys(entry.curves) or _curves_from_results(entry.results)
        view = ConditionView(
            entry.key or entry.results.key, entry.results, load_predictions(sub / "predictions"), curves
        )
        conditions += neuron_views(view)
    if not data.conditions:  # trained, never tested: the report shows the training
        conditions = trained_conditions(folder)
    header = dict(data.header or {})
    if conditions:
        header = {**header_from(conditions[0].record), **{k: v for k, v in header.items() if v}}
    return RunView(
        folder,
        data.name or folder.name,  # every run's results.json names it; the folder for a hand-made one
        header,
        conditions,
        (data.experiment or {}).get("reference"),
        data.selection,
        data.stages or {},
    )


def load_view(folder: str | Path) -> RunView:
    """The view of a battery or pipeline directory; a clear UserError for anything else."""
    folder = Path(folder)
    path = folder / "results.json"
    if not path.is_file():
        raise UserError(f"{folder} holds no results.json (run `mechcheck test` or `mechcheck run` first)")
    record = read_results(path)
    return _run_view(folder, record) if isinstance(record, RunResults) else _battery_view(folder, record)
