"""The battery's `results.json` and the pipeline's, each one typed record that writes and reads it.

- `BatteryResults` (`mechcheck test --out DIR`): `"format": "mechcheck-results/2"` for the rebuilt
  battery; `mechcheck-results/1`, the first battery's (its verdicts are withdrawn: `withdrawn`), is
  still read so the committed reports render.
- `RunResults` (`mechcheck run --out runs/NAME`): `"format": "mechcheck-run/1"`, every condition's
  battery results, curves per seed, and the stages.

One neuron's results sit at the top of the file (`neuron`, `probes`, `verdicts`, …: DESIGN.md's
contract); several neurons' as `neurons` and one entry each under `per_neuron`. Either way the record
holds one `NeuronResults` per neuron. Fields the code does not read are kept as written (`extra`),
so `from_json(data).to_json() == data` for every file mechcheck has written (tested on the committed
reports). A file of another format or version, or with a field of the wrong type, is one UserError.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from mechcheck.errors import UserError
from mechcheck.records import DICT, NEURON, RUN, STR, ListOf, MapOf, Obj, check, read_json
from mechcheck.run_record import RunRecord

BATTERY = "mechcheck-results"
BATTERY_VERSIONS = (1, 2)  # 1: the first battery (withdrawn verdicts), 2: the rebuilt one
RUN_FORMAT = "mechcheck-run/1"

VERDICTS = MapOf(Obj({"verdict": STR, "rule": STR, "evidence": DICT}, required=("verdict",)))
_PER_NEURON = {"neuron": NEURON, "probes": MapOf(DICT), "verdicts": VERDICTS, "skipped": MapOf(STR),
               "twins": MapOf(VERDICTS), "shares": MapOf(DICT), "twin_shares": MapOf(DICT),
               "heads": MapOf(DICT)}  # fmt: skip
BATTERY_RESULTS = Obj(
    _PER_NEURON | {
        "name": STR, "run": RUN, "runs": ListOf(RUN), "neurons": ListOf(NEURON), "position": STR,
        "condition": STR, "target_mode": STR, "eval": DICT, "config": DICT, "versions": DICT,
        "timing": DICT, "cross_talk": DICT, "checkpoints": ListOf(STR),
        "per_neuron": ListOf(Obj(_PER_NEURON)),
    },
    nullable=("position", "condition", "target_mode"),
)  # fmt: skip
CONDITION = Obj({"key": STR, "dir": STR, "results": BATTERY_RESULTS, "curves": MapOf(ListOf(DICT)),
                 "seed_verdicts": DICT})  # fmt: skip
RUN_RESULTS = Obj({
    "name": STR, "experiment": DICT, "header": DICT, "selection": DICT, "conditions": ListOf(CONDITION),
    "stages": MapOf(DICT),
})  # fmt: skip
NEURON_KEYS = ("probes", "verdicts", "twins", "shares", "twin_shares", "heads")  # one neuron: at the top


def _format(data: Any) -> Any:
    return data.get("format") if isinstance(data, dict) else None


def _version(found: Any) -> int | None:
    """N of `mechcheck-results/N` for the versions this code reads, else None."""
    name, _, number = str(found).rpartition("/")
    ok = name == BATTERY and number.isdigit() and int(number) in BATTERY_VERSIONS
    return int(number) if ok else None


@dataclass(frozen=True)
class NeuronResults:
    """One neuron's battery, pooled over the seeds: probes, verdicts (with the twins' and the shares),
    the heads scored, what was skipped. Several-neuron entries also carry n_labels and seeds (`extra`)."""

    neuron: dict[str, Any] | None = None
    probes: dict[str, Any] | None = None
    verdicts: dict[str, Any] | None = None
    twins: dict[str, Any] | None = None
    shares: dict[str, Any] | None = None
    twin_shares: dict[str, Any] | None = None
    heads: dict[str, Any] | None = None
    skipped: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def entry(cls, data: dict[str, Any]) -> NeuronResults:
        """A `per_neuron` entry (its other fields, n_labels and seeds, kept as written)."""
        return cls(**{k: data[k] for k in _PER_NEURON if k in data},
                   extra={k: v for k, v in data.items() if k not in _PER_NEURON})  # fmt: skip

    @classmethod
    def top(cls, data: dict[str, Any]) -> NeuronResults:
        """The one neuron's fields at the top of a results.json (its `skipped` is the file's)."""
        return cls(**{k: data[k] for k in ("neuron", *NEURON_KEYS) if k in data})

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {k: v for k, v in out.items() if v is not None} | self.extra


@dataclass(frozen=True)
class BatteryResults:
    """A battery directory's results.json (see the module docstring)."""

    NAME: ClassVar[str] = BATTERY

    version: int
    per_neuron: tuple[NeuronResults, ...]
    several: bool = False  # the several-neuron layout (`neurons` + `per_neuron`)
    name: str | None = None  # the battery's output directory when it was written
    checkpoints: list[str] | None = None
    run: RunRecord | None = None  # the first checkpoint's run.json
    runs: tuple[RunRecord, ...] = ()  # every checkpoint's, without curves
    position: str | None = None
    condition: str | None = None
    target_mode: str | None = None
    eval: dict[str, Any] | None = None
    skipped: dict[str, str] | None = None
    cross_talk: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def format(self) -> str:
        return f"{BATTERY}/{self.version}"

    @property
    def withdrawn(self) -> bool:
        """The first battery's results: its verdicts are not evidence (BATTERY_AUDIT)."""
        return self.version < 2

    @property
    def neuron(self) -> NeuronResults:
        return self.per_neuron[0]

    @staticmethod
    def is_battery(data: Any) -> bool:
        return _version(_format(data)) is not None

    @classmethod
    def from_json(cls, data: Any, where: str) -> BatteryResults:
        version = _version(_format(data))
        if version is None:
            expected = ", ".join(f"{BATTERY}/{v}" for v in BATTERY_VERSIONS)
            raise UserError(f"{where}: unknown format {_format(data)!r}; expected one of {expected}")
        check(data, BATTERY_RESULTS, where)
        several = "per_neuron" in data
        per = tuple(map(NeuronResults.entry, data["per_neuron"])) if several else (NeuronResults.top(data),)
        run = RunRecord.from_json(data["run"], f"{where}: run") if "run" in data else None
        runs = tuple(
            RunRecord.from_json(r, f"{where}: runs[{i}]") for i, r in enumerate(data.get("runs", ()))
        )
        typed = {f.name for f in fields(cls)} - {"version", "per_neuron", "several", "run", "runs", "extra"}
        known = {k: v for k, v in data.items() if k in typed}
        layout = {"format", "run", "runs", "per_neuron", "neurons", "neuron", *NEURON_KEYS}
        extra = {k: v for k, v in data.items() if k not in typed | layout}
        return cls(version, per, several, run=run, runs=runs, extra=extra, **known)

    @classmethod
    def read(cls, path: str | Path) -> BatteryResults:
        return cls.from_json(read_json(path), str(path))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "run" and value is not None:
                out["run"] = value.to_json()
            elif f.name == "runs" and value:
                out["runs"] = [r.to_json() for r in value]
            elif (
                f.name not in ("version", "per_neuron", "several", "run", "runs", "extra")
                and value is not None
            ):
                out[f.name] = value
        if self.several:
            out |= {
                "neurons": [n.neuron for n in self.per_neuron],
                "per_neuron": [n.to_json() for n in self.per_neuron],
            }
        else:
            out |= self.neuron.to_json()
        return out | self.extra

    # --- what the report reads ------------------------------------------------------------------
    @property
    def condition_name(self) -> str | None:
        return self.condition or (self.run.condition if self.run else None)

    @property
    def target_mode_name(self) -> str:
        return self.target_mode or (self.run.target_mode if self.run else None) or "fixed"

    @property
    def key(self) -> str:
        """`<condition>-<target mode>`, as the pipeline names the condition's folders."""
        return f"{self.condition_name or 'condition'}-{self.target_mode_name}"

    @property
    def title(self) -> str:
        """The run's name as written (`name`), else its condition key (older files name no run)."""
        return self.name or self.key

    @property
    def all_runs(self) -> tuple[RunRecord, ...]:
        return self.runs or ((self.run,) if self.run else ())


@dataclass(frozen=True)
class ConditionResults:
    """One condition of a pipeline run: its key, its battery folder, its results, curves per seed."""

    key: str | None
    dir: str | None
    results: BatteryResults
    curves: dict[str, list[dict[str, Any]]] | None = None
    seed_verdicts: dict[str, Any] | None = None  # several seeds: each decided alone


@dataclass(frozen=True)
class RunResults:
    """A pipeline run's results.json: `mechcheck-run/1`."""

    FORMAT: ClassVar[str] = RUN_FORMAT

    conditions: tuple[ConditionResults, ...]
    name: str | None = None
    experiment: dict[str, Any] | None = None
    header: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    stages: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def is_run(data: Any) -> bool:
        return _format(data) == RUN_FORMAT

    @classmethod
    def from_json(cls, data: Any, where: str) -> RunResults:
        if not cls.is_run(data):
            raise UserError(f"{where}: unknown format {_format(data)!r}; expected {RUN_FORMAT}")
        check(data, RUN_RESULTS, where)
        conditions = tuple(
            ConditionResults(
                c.get("key"),
                c.get("dir"),
                BatteryResults.from_json(c.get("results") or {}, f"{where}: conditions[{i}].results"),
                c.get("curves"),
                c.get("seed_verdicts"),
            )  # fmt: skip
            for i, c in enumerate(data.get("conditions") or [])
        )
        typed = {"name", "experiment", "header", "selection", "stages"}
        extra = {k: v for k, v in data.items() if k not in typed | {"format", "conditions"}}
        return cls(conditions, extra=extra, **{k: v for k, v in data.items() if k in typed})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": RUN_FORMAT}
        for name in ("name", "experiment", "header", "selection"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out["conditions"] = [
            {k: v for k, v in (("key", c.key), ("dir", c.dir)) if v is not None}
            | {"results": c.results.to_json()}
            | ({"curves": c.curves} if c.curves is not None else {})
            | ({"seed_verdicts": c.seed_verdicts} if c.seed_verdicts is not None else {})
            for c in self.conditions
        ]
        if self.stages is not None:
            out["stages"] = self.stages
        return out | self.extra


def read_results(path: str | Path) -> BatteryResults | RunResults:
    """A results.json of either kind; one UserError for anything else."""
    data = read_json(path)
    if RunResults.is_run(data):
        return RunResults.from_json(data, str(path))
    if BatteryResults.is_battery(data):
        return BatteryResults.from_json(data, str(path))
    expected = ", ".join([*(f"{BATTERY}/{v}" for v in BATTERY_VERSIONS), RUN_FORMAT])
    raise UserError(f"{path}: unknown format {_format(data)!r}; expected one of {expected}")
