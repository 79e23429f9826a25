"""Typed, frozen experiment configs read from TOML; an unknown key is an error naming it and its file."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from mechcheck.errors import UserError

T = TypeVar("T")


def build(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build frozen dataclass `cls` from `data`; nested dataclasses recurse. `where` names the source."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        values[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**values)
    except TypeError as err:  # a required key is missing
        raise UserError(f"{where}: {err}") from err


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where) if len(args) == 1 else value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where) for v in value)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(map(repr, typing.get_args(hint)))
            raise UserError(f"{where}: {value!r} is not one of {choices}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    wrong_type = hint in (int, float, str, bool) and not isinstance(value, hint)
    if wrong_type or (hint is int and isinstance(value, bool)):
        raise UserError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"experiment file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML: {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)
