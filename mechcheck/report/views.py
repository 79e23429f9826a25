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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechcheck import records
from mechcheck.errors import UserError
from mechcheck.records import DICT, NEURON, RUN, STR, ListOf, MapOf, Obj, column
from mechcheck.report.tables import get

RESULTS_FORMAT = "mechcheck-results/1"
RESULTS_FORMATS = (RESULTS_FORMAT, "mechcheck-results/2")
RUN_FORMAT = "mechcheck-run/1"
NEURON_KEYS = ("probes", "verdicts", "twins", "shares", "twin_shares", "heads")  # per neuron in per_neuron
_SEED_FILE = re.compile(r"seed-(\d+)\.json$")
# the fields the report reads, with their types (results.json: DESIGN.md's contract)
VERDICTS = MapOf(Obj({"verdict": STR, "rule": STR, "evidence": DICT}, required=("verdict",)))
_BATTERY = {
    "run": RUN, "runs": ListOf(RUN), "neuron": NEURON, "neurons": ListOf(NEURON), "position": STR,
    "condition": STR, "target_mode": STR, "eval": DICT, "probes": MapOf(DICT), "skipped": MapOf(STR),
    "verdicts": VERDICTS, "config": DICT, "versions": DICT, "timing": DICT, "cross_talk": DICT,
    "checkpoints": ListOf(STR), "twins": MapOf(VERDICTS), "shares": MapOf(DICT), "twin_shares": MapOf(DICT),
    "heads": MapOf(DICT),
}  # fmt: skip
BATTERY_RESULTS = Obj(
    _BATTERY | {"per_neuron": ListOf(Obj({"neuron": NEURON, "probes": MapOf(DICT), "verdicts": VERDICTS,
                                          "skipped": MapOf(STR), "twins": MapOf(VERDICTS),
                                          "shares": MapOf(DICT), "heads": MapOf(DICT)}))},
    nullable=("position", "condition", "target_mode"),
)  # fmt: skip
CONDITION = Obj({"key": STR, "dir": STR, "results": BATTERY_RESULTS, "curves": MapOf(ListOf(DICT))})
RUN_RESULTS = Obj({
    "name": STR, "experiment": DICT, "header": DICT, "selection": DICT, "conditions": ListOf(CONDITION),
    "stages": MapOf(DICT),
})  # fmt: skip


@dataclass
class ConditionView:
    """One condition × target mode: its battery results, saved predictions and curves per seed."""

    key: str
    results: dict[str, Any]
    predictions: dict[int, dict[str, Any]] = field(default_factory=dict)
    curves: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    tag: str = ""  # the neuron, when this is one neuron's view of a several-neuron run

    @property
    def run_key(self) -> str:
        """The condition's key without the neuron (shared by every neuron's view of one run)."""
        return self.key.removesuffix(f"-{self.tag}") if self.tag else self.key

    @property
    def title(self) -> str:
        return f"{self.condition} ({self.target_mode})" + (f", neuron {self.tag}" if self.tag else "")

    @property
    def run(self) -> dict[str, Any]:
        return self.results.get("run") or {}

    @property
    def runs(self) -> list[dict[str, Any]]:
        runs = self.results.get("runs")
        return runs if isinstance(runs, list) and runs else ([self.run] if self.run else [])

    @property
    def condition(self) -> str:
        return str(self.results.get("condition") or self.run.get("condition") or self.key.split("-")[0])

    @property
    def target_mode(self) -> str:
        return str(self.results.get("target_mode") or self.run.get("target_mode") or "fixed")

    @property
    def seeds(self) -> list[int]:
        seeds = {r.get("seed") for r in self.runs if isinstance(r.get("seed"), int)}
        return sorted(seeds | set(self.predictions) | set(self.curves))

    @property
    def readout_frozen(self) -> bool:
        return bool(get(self.run, "readout", "frozen", default=False))

    def metrics(self, seed: int) -> dict[str, Any]:
        for run in self.runs:
            if run.get("seed") == seed:
                return run.get("metrics") or {}
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
    """A run.json / curve row / metrics table with neuron i's `per_neuron` entry lifted to the top."""
    if not isinstance(entry, dict) or not isinstance(entry.get("per_neuron"), list):
        return entry
    return {**{k: v for k, v in entry.items() if k != "per_neuron"}, **entry["per_neuron"][i]}


def _neuron_run(run: dict[str, Any], i: int, neuron: Any) -> dict[str, Any]:
    return {**run, "neuron": neuron, "metrics": _merge_neuron(run.get("metrics"), i)}


def neuron_views(view: ConditionView) -> list[ConditionView]:
    """A several-neuron condition as one single-neuron view per neuron (results.json `per_neuron`,
    predictions' columns, curves' and metrics' `per_neuron` entries); the first keeps `cross_talk`."""
    per = view.results.get("per_neuron")
    if not isinstance(per, list) or not per:
        return [view]
    out = []
    for i, entry in enumerate(per):
        n = entry.get("neuron") or {}
        tag = f"L{n.get('layer')}N{n.get('index')}"
        results = {k: v for k, v in view.results.items() if k not in ("per_neuron", "neurons", "cross_talk")}
        if i == 0 and "cross_talk" in view.results:
            results["cross_talk"] = view.results["cross_talk"]
        results |= {"neuron": n, **{k: entry.get(k) for k in NEURON_KEYS if k in entry}}
        results["skipped"] = {**(view.results.get("skipped") or {}), **(entry.get("skipped") or {})}
        results["run"] = _neuron_run(view.run, i, n)
        results["runs"] = [_neuron_run(r, i, n) for r in view.runs]
        preds = {seed: column(p, i) for seed, p in view.predictions.items() if "neurons" in p}
        curves = {seed: [_merge_neuron(r, i) for r in rows] for seed, rows in view.curves.items()}
        out.append(ConditionView(f"{view.key}-{tag}", results, preds, curves, tag))
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


def _curves_from_results(results: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    curves: dict[int, list[dict[str, Any]]] = {}
    for run in [results.get("run") or {}, *(results.get("runs") or [])]:
        if isinstance(run, dict) and isinstance(run.get("curves"), list) and isinstance(run.get("seed"), int):
            curves.setdefault(run["seed"], run["curves"])
    return curves


def _int_keys(data: Any) -> dict[int, Any]:
    if not isinstance(data, dict):
        return {}
    return {int(k): v for k, v in data.items() if str(k).lstrip("-").isdigit()}


def condition_key(results: dict[str, Any]) -> str:
    run = results.get("run") or {}
    condition = results.get("condition") or run.get("condition") or "condition"
    return f"{condition}-{results.get('target_mode') or run.get('target_mode') or 'fixed'}"


def header_from(results: dict[str, Any]) -> dict[str, Any]:
    """Model, neuron, position, corpus, versions — from one battery results.json."""
    run = results.get("run") or {}
    return {
        "model": run.get("base_model"),
        "neuron": results.get("neuron") or run.get("neuron") or results.get("neurons") or run.get("neurons"),
        "position": results.get("position") or run.get("position"),
        "corpus": get(run, "corpus", "card") or run.get("corpus"),
        "versions": results.get("versions") or run.get("versions"),
        "eval": results.get("eval"),
    }


def _battery_view(folder: Path, results: dict[str, Any]) -> RunView:
    view = ConditionView(
        condition_key(results),
        results,
        load_predictions(folder / "predictions"),
        _curves_from_results(results),
    )
    reference = get(results, "run", "experiment", "reference")
    return RunView(folder, folder.name, header_from(results), neuron_views(view), reference)


def _run_view(folder: Path, data: dict[str, Any]) -> RunView:
    conditions = []
    for entry in data.get("conditions") or []:
        results = entry.get("results") or {}
        sub = folder / entry.get("dir", f"test/{entry.get('key', '')}")
        curves = _int_keys(entry.get("curves")) or _curves_from_results(results)
        conditions += neuron_views(
            ConditionView(
                entry.get("key") or condition_key(results),
                results,
                load_predictions(sub / "predictions"),
                curves,
            )
        )
    header = dict(data.get("header") or {})
    if conditions:
        header = {**header_from(conditions[0].results), **{k: v for k, v in header.items() if v}}
    return RunView(
        folder,
        str(data.get("name") or folder.name),
        header,
        conditions,
        get(data, "experiment", "reference"),
        data.get("selection"),
        data.get("stages") or {},
    )


def load_view(folder: str | Path) -> RunView:
    """The view of a battery or pipeline directory; a clear UserError for anything else."""
    folder = Path(folder)
    path = folder / "results.json"
    if not path.is_file():
        raise UserError(f"{folder} holds no results.json (run `mechcheck test` or `mechcheck run` first)")
    data = read_json(path)
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == RUN_FORMAT:
        records.check(data, RUN_RESULTS, str(path))
        return _run_view(folder, data)
    if fmt in RESULTS_FORMATS:
        records.check(data, BATTERY_RESULTS, str(path))
        return _battery_view(folder, data)
    raise UserError(
        f"{path}: unknown format {fmt!r}; expected one of {', '.join(RESULTS_FORMATS)} or {RUN_FORMAT}"
    )
