"""JSON records read back from disk (run.json, predictions.json, results.json, stage.json, …).

`read_json(path)` never raises anything but a one-line `UserError`: unreadable, not UTF-8, not
JSON, or nested deeper than `MAX_DEPTH`. `check(data, shape, where)` then checks it against a
declared shape, so code that reads a record can trust the types of the fields it uses:

    NEURON = Obj({"layer": INDEX, "index": INDEX, "kind": STR}, required=("layer", "index"))
    check(run, Obj({"neuron": NEURON, "seed": INDEX}), "run.json")

Shapes: `STR`, `INT` (not bool, not 3.0), `INDEX` (an int ≥ 0), `NUMBER` (int or float, NaN
allowed: records keep what was measured), `BOOL`, `ANY`, `DICT`, `LIST`; `Obj` (a dict whose
listed fields have these shapes; other fields pass), `ListOf`, `MapOf` (a dict of str → shape),
`OneOf`. A record's own extra rules (equal lengths, …) stay with the code that owns the record.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechcheck.errors import UserError, field_path

MAX_DEPTH = 64  # no record mechcheck writes nests deeper than ~10
MAX_BYTES = 2**30  # a record is JSON text, not a data set


def read_json(path: str | Path) -> Any:
    """The JSON value in `path`; any failure is one line naming the file."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UserError(f"{path} is not a regular file, so not a mechcheck record")
    if path.is_file() and path.stat().st_size > MAX_BYTES:
        raise UserError(f"{path} is larger than {MAX_BYTES >> 20} MiB: not a mechcheck record")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text, so not a JSON record ({err.reason})") from err
    except OSError as err:
        raise UserError(f"{path} cannot be read: {err.strerror or err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path} is not valid JSON ({err.msg}, line {err.lineno} column {err.colno})"
        ) from err
    except RecursionError as err:
        raise UserError(f"{path} is nested too deeply to be a mechcheck record") from err
    if depth(data) > MAX_DEPTH:
        raise UserError(f"{path} is nested more than {MAX_DEPTH} levels deep: not a mechcheck record")
    return data


def depth(data: Any) -> int:
    """How deeply lists and dicts nest in `data` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def read_record(path: str | Path, shape: Shape) -> Any:
    """`read_json` then `check` against `shape`, errors naming the file."""
    data = read_json(path)
    check(data, shape, str(path))
    return data


# --- shapes -------------------------------------------------------------------------------
class Shape(ABC):
    """Something a JSON value can be checked against; `name` says what it expects."""

    name: str

    @abstractmethod
    def problem(self, value: Any, where: str) -> str | None:
        """Why `value` (at `where`) does not fit, or None when it does."""


@dataclass(frozen=True)
class _Scalar(Shape):
    name: str
    test: Callable[[Any], bool]

    def problem(self, value: Any, where: str) -> str | None:
        return None if self.test(value) else _wrong(where, self.name, value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


STR = _Scalar("a string", lambda v: isinstance(v, str))
INT = _Scalar("an integer", _is_int)
INDEX = _Scalar("a non-negative integer", lambda v: _is_int(v) and v >= 0)
NUMBER = _Scalar("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool))
BOOL = _Scalar("true or false", lambda v: isinstance(v, bool))
ANY = _Scalar("a value", lambda v: True)
DICT = _Scalar("an object", lambda v: isinstance(v, dict))
LIST = _Scalar("a list", lambda v: isinstance(v, list))


@dataclass(frozen=True)
class Obj(Shape):
    fields: Mapping[str, Shape]
    required: tuple[str, ...] = ()
    nullable: tuple[str, ...] = ()  # fields that may be null
    name: str = "an object"

    def problem(self, value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return _wrong(where, self.name, value)
        for key in self.required:
            if key not in value:
                return f"{where}: missing required field {key!r}"
        return _first(
            shape.problem(value[key], field_path(where, key))
            for key, shape in self.fields.items()
            if key in value and not (value[key] is None and key in self.nullable)
        )


@dataclass(frozen=True)
class ListOf(Shape):
    item: Shape
    min_len: int = 0
    name: str = "a list"

    def problem(self, value: Any, where: str) -> str | None:
        if not isinstance(value, list):
            return _wrong(where, self.name, value)
        if len(value) < self.min_len:
            return f"{where}: needs at least {self.min_len} entries, has {len(value)}"
        return _first(self.item.problem(item, f"{where}[{i}]") for i, item in enumerate(value))


@dataclass(frozen=True)
class MapOf(Shape):
    value: Shape
    name: str = "an object"

    def problem(self, value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return _wrong(where, self.name, value)
        return _first(self.value.problem(item, field_path(where, str(key))) for key, item in value.items())


@dataclass(frozen=True)
class OneOf(Shape):
    options: tuple[Shape, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:  # type: ignore[override]
        return " or ".join(o.name for o in self.options)

    def problem(self, value: Any, where: str) -> str | None:
        if any(o.problem(value, where) is None for o in self.options):
            return None
        return _wrong(where, self.name, value)


def _first(problems: Iterable[str | None]) -> str | None:
    """The first problem found (the rest are not even looked for)."""
    return next((p for p in problems if p), None)


def _wrong(where: str, expected: str, value: Any) -> str:
    shown = repr(value) if isinstance(value, int | float | bool | type(None)) else type(value).__name__
    if isinstance(value, str):
        shown = f"the string {value[:40]!r}"
    return f"{where}: expected {expected}, got {shown}"


def check(data: Any, shape: Shape, where: str) -> None:
    """Raise a one-line UserError naming the first field of `data` that does not fit `shape`."""
    found = shape.problem(data, where)
    if found:
        raise UserError(found)


def fits(data: Any, shape: Shape) -> bool:
    return shape.problem(data, "") is None


# --- the shapes of mechcheck's own records ------------------------------------------------
NEURON = Obj({"layer": INDEX, "index": INDEX, "kind": STR}, required=("layer", "index"))
VALUES = ListOf(OneOf((NUMBER, ListOf(NUMBER))))  # one neuron: numbers; several: one row per label
HASHES = MapOf(OneOf((STR, MapOf(STR))))  # {name: sha256}, or that per neuron key for several neurons

# a checkpoint's run.json (DESIGN.md: required fields, and those the trainer adds)
RUN_FIELDS: dict[str, Shape] = {
    "format": STR, "base_model": STR, "label_model": STR, "position": STR, "condition": STR,
    "target_mode": STR, "readout": Obj({"kind": STR, "frozen": BOOL}, required=("kind",)),
    "neuron": NEURON, "neurons": ListOf(NEURON, min_len=1), "seed": INDEX, "config_hash": STR,
    "weights_sha256": HASHES, "label_weights_sha256": HASHES, "frozen_params_sha256": STR,
    "parameters": Obj({"trainable": INDEX, "total": INDEX}), "experiment": DICT, "corpus": DICT,
    "target": DICT, "curves": ListOf(DICT), "metrics": DICT, "versions": DICT, "train_config": DICT,
    "max_tokens": INDEX, "timing": DICT, "neuron_selection": DICT, "cross": DICT, "frozen_fit": DICT,
    "resumed_from_step": INDEX,
}  # fmt: skip
RUN_NULLABLE = ("frozen_fit", "resumed_from_step")
RUN = Obj(RUN_FIELDS, nullable=RUN_NULLABLE)

# a checkpoint's predictions.json (and the battery's copies under predictions/)
_LABEL_ARRAYS = ("labels", "live_labels", "predictions", "predictions_before", "labels_digit",
                 "predictions_digit", "predictions_argmax", "predictions_digit_before",
                 "predictions_argmax_before")  # fmt: skip
PREDICTIONS = Obj(
    {"split": STR, "texts": ListOf(STR), "target": STR, "neurons": ListOf(NEURON, min_len=1),
     "text_index": ListOf(INDEX), **{name: VALUES for name in _LABEL_ARRAYS}},
    required=("texts",),
)  # fmt: skip


def check_predictions(data: Any, where: str) -> dict[str, Any]:
    """A predictions record: its shape, one value (row) per label in every array, a `target` that
    names one of them, and text indices inside the texts."""
    check(data, PREDICTIONS, where)
    arrays = {name: data[name] for name in _LABEL_ARRAYS if name in data}
    rows = len(data["text_index"]) if "text_index" in data else len(data["texts"])
    for name, values in arrays.items():
        if len(values) != rows:
            raise UserError(f"{where}: {name} has {len(values)} values for {rows} labels")
    if "target" in data and data["target"] not in arrays:
        raise UserError(f"{where}: target {data['target']!r} names no array of the record")
    if any(i >= len(data["texts"]) for i in data.get("text_index", ())):
        raise UserError(f"{where}: text_index points past its {len(data['texts'])} texts")
    return data


COLUMNS = ("labels", "live_labels", "predictions", "predictions_before")  # one value per neuron a row


def column(predictions: dict[str, Any], i: int) -> dict[str, Any]:
    """Neuron i's own predictions record (as a one-neuron run writes it) from a several-neuron one,
    whose arrays are rows of k values in the order of its `neurons`."""
    p = predictions
    out = {k: v for k, v in p.items() if k not in (*COLUMNS, "neurons")}
    out |= {k: [row[i] for row in p[k]] for k in COLUMNS if isinstance(p.get(k), list)}
    return out | {"neuron": p["neurons"][i]}
