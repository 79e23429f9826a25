"""Hostile settings: every value of an experiment file and of the command line is checked when it is
read — a bad one is one line, exit 2, before any model is loaded or anything is written.

The cases are generated from the dataclasses' declared constraints (every field: a value just past
each bound, NaN and infinities for numbers, a wrong type, an empty or repeated list), so a field
added later is covered without touching this file."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Annotated, Any

import pytest
from hostile_kit import fails, with_setting, world

import mechcheck.subject
from mechcheck.config import Check
from mechcheck.experiment import (
    BatteryConfig,
    CorpusConfig,
    CrossConfig,
    Experiment,
    LabelsConfig,
    NeuronConfig,
    SubjectConfig,
    TrainConfig,
)

TABLES = {
    "": Experiment,
    "subject": SubjectConfig,
    "corpus": CorpusConfig,
    "neuron": NeuronConfig,
    "train": TrainConfig,
    "battery": BatteryConfig,
}


def _unwrap(hint: Any) -> tuple[Any, list[Check]]:
    """(the plain type, its declared checks), through Optional and Annotated."""
    checks: list[Check] = []
    while True:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            hint, *meta = typing.get_args(hint)
            checks += [m for m in meta if isinstance(m, Check)]
        elif origin in (typing.Union, __import__("types").UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        else:
            return hint, checks


def _past_bounds(kind: Any, check: Check) -> list[Any]:
    step = 1 if kind is int else 1e-9
    values = []
    if check.ge is not None:
        values.append(kind(check.ge - step) if kind is int else check.ge - max(step, abs(check.ge) * 1e-6))
    if check.gt is not None:
        values += [kind(check.gt), kind(check.gt) - step]
    if check.le is not None:
        values.append(int(check.le) + 1 if kind is int else check.le * 1.001 + step)
    if check.lt is not None:
        values += [kind(check.lt), kind(check.lt) + 0.5]
    return values


def bad_values(hint: Any) -> list[tuple[str, Any]]:
    """(label, value) pairs the field must refuse."""
    kind, checks = _unwrap(hint)
    cases: list[tuple[str, Any]] = []
    if kind is int:
        cases += [("fractional", 2.5), ("string", "3"), ("bool", True), ("huge", 2**70)]
    if kind is float:
        cases += [
            ("nan", math.nan),
            ("inf", math.inf),
            ("-inf", -math.inf),
            ("string", "0.1"),
            ("bool", True),
        ]
    if kind is str:
        cases += [("number", 3), ("list", ["a"])]
    if kind is bool:
        cases += [("number", 1), ("string", "yes")]
    if typing.get_origin(kind) is tuple:
        inner, _ = _unwrap(typing.get_args(kind)[0])
        cases += [("scalar", 1 if inner is not str else "x")]
        if inner in (int, float):
            cases += [("nan_inside", [math.nan]), ("string_inside", ["1"])]
            cases += [(f"inside_{label}", [v]) for label, v in bad_values(typing.get_args(kind)[0])[:2]]
    for check in checks:
        cases += [(f"bound_{v!r}", v) for v in _past_bounds(kind, check)]
        if check.non_empty:
            cases.append(("empty", [] if typing.get_origin(kind) is tuple else ""))
        if check.distinct:
            cases.append(("repeated", [1, 1]))
        if check.pattern:
            cases += [("dotdot", ".."), ("slash", "a/b")]
    return cases


def _cases() -> list[Any]:
    out = []
    for table, cls in TABLES.items():
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(_unwrap(hints[f.name])[0]) or f.name in ("override", "neurons"):
                continue
            for label, value in bad_values(hints[f.name]):
                out.append(pytest.param(table, f.name, value, id=f"{table or 'top'}.{f.name}-{label}"))
    return out


CROSS_FIELD = [  # rules between fields, and values the registries refuse: (..., commands)
    ("corpus", "min_words", 70, "max_words", "run train"),
    ("corpus", "split", [0.5, 0.2, 0.2], "summing to 1", "run train"),
    ("corpus", "split", [0.5, 0.5], "three fractions", "run train"),
    ("neuron", "layer", None, "set both layer and index", "run train"),
    ("neuron", "neurons", [{"layer": 1, "index": 2}], "not both", "run train"),
    ("neuron", "neurons", [], "neurons is empty", "run train"),
    ("neuron", "position", "first", "neuron.position", "run train"),
    ("neuron", "criterion", "widest", "unknown criterion", "run"),
    ("train", "conditions", ["frozn"], "frozn", "run train"),
    ("train", "conditions", [], "train.conditions", "run train"),
    ("train", "target_modes", ["alive"], "alive", "run train"),
    ("train", "readout", "cubic", "cubic", "run train"),
    ("battery", "probes", ["nonsense"], "nonsense", "run"),
    ("battery", "max_eval", 5, "at least 20", "run"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return world(tmp_path_factory.mktemp("config"))


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """A bad value must fail before any model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad value was refused")

    monkeypatch.setattr(mechcheck.subject, "load_subject", refuse)
    monkeypatch.setattr(mechcheck.subject, "_load_hf", refuse)


@pytest.mark.parametrize(("table", "key", "value"), _cases())
def test_a_nonsense_value_is_refused_when_the_file_is_read(tiny, tmp_path, capsys, table, key, value):
    toml = with_setting(tiny["experiment"], tmp_path / "bad.toml", table, key, value)
    out = tmp_path / "out"
    fails(capsys, ["run", str(toml), "--out", str(out)], f": {table}.{key}" if table else f": {key}")
    assert not out.exists()


@pytest.mark.parametrize(
    ("table", "key", "value", "fragment", "commands"), CROSS_FIELD, ids=lambda v: str(v)[:20]
)
def test_a_rule_between_fields_is_checked_before_work(
    tiny, tmp_path, capsys, table, key, value, fragment, commands
):
    toml = with_setting(tiny["experiment"], tmp_path / "bad.toml", table, key, value)
    if key == "criterion":  # the criterion matters only when the neuron is selected
        toml.write_text(toml.read_text().replace("layer = 1\nindex = 2\n", ""))
    for command in commands.split():
        out = tmp_path / command
        fails(capsys, [command, str(toml), "--out", str(out)], fragment)
        assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--seed", "-1"], "--seed: must be at least 0"),
        (["--seed", str(2**40)], "--seed: must be at most"),
        (["--seed", "1.5"], "--seed: expected an integer"),
        (["--seed", "nan"], "--seed: expected an integer"),
        (["--seeds", "0,0"], "--seeds: lists 0 twice"),
        (["--seeds", "3,-1"], "--seeds: value[1] must be at least 0"),
        (["--seeds", ","], "--seeds: must not be empty"),
        (["--seeds", "a"], "--seeds: expected comma-separated integers"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_a_nonsense_command_line_value_is_one_line(tiny, tmp_path, capsys, argv, fragment):
    command = "train" if argv[0] == "--seeds" else "run"
    out = tmp_path / "out"
    fails(capsys, [command, str(tiny["experiment"]), "--out", str(out), *argv], fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--top", "0"],
        ["--max-texts", "-5"],
        ["--batch-size", "0"],
        ["--layers", "1,1"],
        ["--layers", "x"],
        ["--seed", "-2"],
        ["--position", "first"],
    ],
    ids=" ".join,
)
def test_select_refuses_nonsense_options(tiny, tmp_path, capsys, argv):
    out = tmp_path / "sel" / "neurons.json"
    fails(capsys, ["select", "--model", str(tiny["model"]), "--out", str(out), *argv], "argument")
    assert not out.parent.exists()


@pytest.mark.parametrize(
    ("table", "value", "fragment"),
    [
        ("variant", {"name": "../escape"}, "it names a folder"),
        ("variant", {"name": "a/b"}, "it names a folder"),
        ("neuron", {"layer": -1}, "must be at least 0"),
        ("neuron", {"index": 1.5}, "expected an integer"),
        ("cross", {"n_bootstrap": 10}, "must be at least 100"),
        ("cross", {"ci": 1.5}, "must be below 1"),
        ("cross", {"min_advantage": math.nan}, "finite"),
    ],
    ids=lambda v: str(v)[:24],
)
def test_cross_experiment_values_are_checked(tiny, tmp_path, capsys, table, value, fragment):
    from hostile_kit import toml_value

    models = [
        {"name": "one", "model": str(tiny["model"]), "neuron": {"layer": 1, "index": 2}},
        {"name": "two", "model": str(tiny["root"] / "other"), "neuron": {"layer": 1, "index": 3}},
    ]
    cross: dict[str, Any] = {}
    target = {"variant": models[0], "neuron": models[0]["neuron"]}.get(table, cross)
    target.update(value)
    text = 'name = "cross"\n' + f'[corpus]\nsource = "{tiny["corpus"]}"\n'
    text += "[cross]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in cross.items())
    for m in models:
        neuron = ", ".join(f"{k} = {toml_value(v)}" for k, v in m["neuron"].items())
        text += (
            f"[[variant]]\nname = {toml_value(m['name'])}\nsubject = {{ model = {toml_value(m['model'])} }}\n"
        )
        text += f"neuron = {{ {neuron} }}\n"
    toml = tmp_path / "cross.toml"
    toml.write_text(text)
    out = tmp_path / "out"
    fails(capsys, ["run", str(toml), "--out", str(out)], fragment)
    assert not out.exists()


def test_every_constrained_field_has_cases():
    """The generator really covers the dataclasses (a field with no case would go untested)."""
    names = {case.id.split("-")[0] for case in _cases()}
    for table, cls in TABLES.items():
        for f in dataclasses.fields(cls):
            kind = _unwrap(typing.get_type_hints(cls, include_extras=True)[f.name])[0]
            if not dataclasses.is_dataclass(kind) and f.name not in ("override", "neurons"):
                assert f"{table or 'top'}.{f.name}" in names, f.name
    assert {f.name for f in dataclasses.fields(LabelsConfig)} and {
        f.name for f in dataclasses.fields(CrossConfig)
    }
