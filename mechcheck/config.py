"""Typed, frozen experiment configs read from TOML; an unknown key is an error naming it and its file.

Every value is checked when the file is read, against its field's type and the constraints the
field declares (`Annotated[int, Check(ge=1)]` and the aliases below): no NaN or infinity anywhere,
counts at least 1, seeds non-negative and distinct, probabilities inside (0, 1), non-empty lists.
A dataclass may add cross-field rules in a `problems()` method that yields what is wrong. A bad
value is one line naming the key and its file, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from mechcheck.errors import UserError, field_path

T = TypeVar("T")
MAX_INT = 2**63 - 1  # every integer fits an int64 (torch, numpy)
MAX_SEED = 2**32 - 1  # numpy's legacy RandomState and scikit-learn take seeds below 2**32


@dataclass(frozen=True)
class Check:
    """A declared constraint on a config value (numbers: bounds; lists: non-empty, distinct;
    strings: non-empty, a full-match pattern)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    non_empty: bool = False
    distinct: bool = False
    pattern: str | None = None

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value`, or None."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            for bound, ok, word in (
                (self.ge, lambda b: value >= b, "at least"), (self.gt, lambda b: value > b, "above"),
                (self.le, lambda b: value <= b, "at most"), (self.lt, lambda b: value < b, "below"),
            ):  # fmt: skip
                if bound is not None and not ok(bound):
                    return f"must be {word} {_number(bound)}, got {value!r}"
        if self.non_empty and len(value) == 0:
            return "must not be empty"
        if self.distinct and len(set(value)) != len(value):
            twice = next(v for i, v in enumerate(value) if v in value[:i])
            return f"lists {twice!r} twice; values must be distinct"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"{value!r} is not a valid name (letters, digits, '_', '.', '-'; not starting with '.')"
        return None


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


Count = Annotated[int, Check(ge=1)]  # at least one
Size = Annotated[int, Check(ge=0)]  # zero allowed (e.g. "not measured")
Index = Annotated[int, Check(ge=0)]  # a layer or neuron index
Seed = Annotated[int, Check(ge=0, le=MAX_SEED)]
Positive = Annotated[float, Check(gt=0)]
NonNegative = Annotated[float, Check(ge=0)]
Probability = Annotated[float, Check(gt=0, lt=1)]
Text = Annotated[str, Check(non_empty=True)]
Name = Annotated[str, Check(pattern=r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")]  # safe as one path component
Seeds = Annotated[tuple[Seed, ...], Check(non_empty=True, distinct=True)]
Layers = Annotated[tuple[Index, ...], Check(distinct=True)]


def build(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build frozen dataclass `cls` from `data`; nested dataclasses recurse. `where` names the source."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls, include_extras=True)
    values = {}
    for name, value in data.items():
        values[name] = check_value(hints[name], value, field_path(where, name))
    try:
        built = cls(**values)
    except TypeError as err:  # a required key is missing
        raise UserError(f"{where}: {err}") from err
    for problem in _problems(built):
        raise UserError(f"{where}: {problem}")
    return built


def _problems(obj: Any) -> Iterator[str]:
    rules = getattr(obj, "problems", None)
    return iter(rules() if callable(rules) else ())


def check_value(hint: Any, value: Any, where: str) -> Any:
    """`value` coerced to `hint` (int → float, list → tuple) and checked against its constraints."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        inner, *checks = typing.get_args(hint)
        value = check_value(inner, value, where)
        for check in checks:
            problem = check.problem(value) if isinstance(check, Check) else None
            if problem:
                raise UserError(f"{where} {problem}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return check_value(args[0], value, where) if len(args) == 1 else value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(check_value(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(map(repr, typing.get_args(hint)))
            raise UserError(f"{where}: {value!r} is not one of {choices}")
        return value
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) <= MAX_INT else math.inf
    wrong_type = hint in (int, float, str, bool) and not isinstance(value, hint)
    if wrong_type or (hint in (int, float) and isinstance(value, bool)):
        raise UserError(f"{where}: expected {_kind(hint)}, got {value!r}")
    if hint is float and not math.isfinite(value):
        raise UserError(f"{where}: expected a finite number, got {value!r}")
    if hint is int and abs(value) > MAX_INT:
        raise UserError(f"{where}: {value} is out of range (|value| <= 2**63 - 1)")
    return value


def _kind(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"experiment file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML: {err}") from err
    except RecursionError as err:
        raise UserError(f"{path}: nested too deeply to be an experiment file") from err


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)
