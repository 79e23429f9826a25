"""Hostile records: a run.json, predictions.json, results.json, experiment.json, marker or saved state
with a wrong field type, a missing field, broken bytes or absurd nesting is one line and exit 2,
never a traceback — and a checkpoint's records are refused before any model is loaded.

Field mutations are generated from the declared record shapes (`mechcheck.records`), so a field
added to a shape is attacked without touching this file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hostile_kit import checkpoint, deep_json, edit_json, fails, listing, world

import mechcheck.subject
from mechcheck.cli import main
from mechcheck.records import PREDICTIONS, fits
from mechcheck.results_record import BATTERY_RESULTS
from mechcheck.run_record import RUN_JSON

FIXTURE = Path(__file__).parent.parent / "data" / "report_fixture"
WRONG: list[Any] = [[1, 2], "text", {"a": 1}, 2.5, -1, True, None, [[[[[[]]]]]]]
RAW = {  # whole-file corruptions
    "not_utf8": b"\xff\xfe\x00garbage",
    "empty": b"",
    "truncated": b'{"format": "mechc',
    "a_list": b"[1, 2, 3]",
    "a_string": b'"run"',
    "deep_100k": deep_json(100_000).encode(),
    "deep_100": deep_json(100).encode(),
    "nan_only": b"NaN",
}


def mutations(shape, skip: tuple[str, ...] = ()) -> list[Any]:
    """(field, wrong value) for every field of `shape`: each value that does not fit the field."""
    out = []
    for name, field in shape.fields.items():
        if name in skip:
            continue
        for value in WRONG:
            if value is None and name in shape.nullable:
                continue
            if not fits(value, field):
                out.append(pytest.param(name, value, id=f"{name}={json.dumps(value)[:12]}"))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    w = world(tmp_path_factory.mktemp("records"))
    w["checkpoint"] = checkpoint(w["root"] / "ck", w["model"], "frozen")
    preds = {
        "split": "test",
        "texts": ["a cat", "the dog"],
        "target": "labels",
        "labels": [0.1, 0.2],
        "live_labels": [0.1, 0.2],
        "predictions": [0.3, 0.1],
        "predictions_before": [0.0, 0.0],
    }
    (w["checkpoint"] / "predictions.json").write_text(json.dumps(preds))
    return w


@pytest.fixture
def ck(tiny, tmp_path) -> Path:
    folder = tmp_path / "ck"
    shutil.copytree(tiny["checkpoint"], folder)
    return folder


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the malformed record was refused")

    monkeypatch.setattr(mechcheck.subject, "_load_hf", refuse)


def refused_test(capsys, ck: Path, tmp_path: Path, *fragments: str) -> None:
    out = tmp_path / "out"
    fails(capsys, ["test", str(ck), "--out", str(out)], *fragments)
    assert not out.exists()


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        pytest.param("run.json", *case.values, id=f"run.{case.id}")
        for case in mutations(RUN_JSON, ("neurons",))
    ]
    + [
        pytest.param("predictions.json", *case.values, id=f"predictions.{case.id}")
        for case in mutations(PREDICTIONS)
    ],
)
def test_a_checkpoint_record_with_a_wrong_field_type(ck, tmp_path, capsys, name, field, value):
    edit_json(ck / name, lambda record: record.__setitem__(field, value))
    refused_test(capsys, ck, tmp_path, name)


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("neuron", "layer"), 1.5),
        (("neuron", "index"), 2.5),
        (("neuron", "index"), "2"),
        (("neuron", "index"), -3),
        (("neuron", "layer"), True),
        (("neuron",), {"layer": 1}),
        (("readout", "kind"), ["linear"]),
        (("readout", "prompt"), 7),
        (("readout", "answers"), "abc"),
        (("weights_sha256", "W_out"), ["x"]),
    ],
    ids=lambda v: ".".join(v) if isinstance(v, tuple) else json.dumps(v),
)
def test_run_json_with_a_wrong_nested_field(ck, tmp_path, capsys, path, value):
    def change(run):
        target = run
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    edit_json(ck / "run.json", change)
    refused_test(capsys, ck, tmp_path, "run.json")


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize(
    "field", ["format", "base_model", "position", "condition", "target_mode", "readout", "neuron"]
)
def test_run_json_without_a_required_field(ck, tmp_path, capsys, field):
    edit_json(ck / "run.json", lambda run: run.pop(field))
    refused_test(capsys, ck, tmp_path, "run.json")


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize("name", ["run.json", "predictions.json"])
@pytest.mark.parametrize("kind", sorted(RAW))
def test_a_corrupt_checkpoint_file(ck, tmp_path, capsys, name, kind):
    (ck / name).write_bytes(RAW[kind])
    refused_test(capsys, ck, tmp_path, name)


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize("name", ["run.json", "predictions.json"])
@pytest.mark.parametrize("kind", ["directory", "link_to_device", "dangling_link"])
def test_a_checkpoint_file_that_is_not_a_file(ck, tmp_path, capsys, name, kind):
    (ck / name).unlink()
    if kind == "directory":
        (ck / name).mkdir()
    else:
        (ck / name).symlink_to("/dev/zero" if kind == "link_to_device" else tmp_path / "absent")
    out = tmp_path / "out"
    fails(capsys, ["test", str(ck), "--out", str(out), "--corpus", str(tmp_path / "absent.txt")])
    assert not out.exists()


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"labels": [0.1]}, "values for 2 labels"),
        ({"predictions": [0.1, 0.2, 0.3]}, "values for 2 labels"),
        ({"target": "nothing"}, "names no array"),
        ({"text_index": [0, 7], "labels": [1.0, 2.0]}, "points past"),
        ({"labels": [0.1, "x"]}, "labels[1]"),
        ({"texts": ["a", 3]}, "texts[1]"),
    ],
    ids=lambda v: json.dumps(v)[:30] if isinstance(v, dict) else v,
)
def test_predictions_json_that_does_not_add_up(ck, tmp_path, capsys, change, fragment):
    edit_json(ck / "predictions.json", lambda p: p.update(change))
    refused_test(capsys, ck, tmp_path, "predictions.json", fragment)


# --- results.json and the report ------------------------------------------------------------
@pytest.fixture
def results_dir(tmp_path) -> Path:
    folder = tmp_path / "results"
    shutil.copytree(FIXTURE, folder)
    return folder


def refused_report(capsys, folder: Path, *fragments: str) -> None:
    before = listing(folder)
    fails(capsys, ["report", str(folder)], *fragments)
    assert listing(folder) == before


@pytest.mark.parametrize(("field", "value"), mutations(BATTERY_RESULTS, skip=("per_neuron", "cross_talk")))
def test_results_json_with_a_wrong_field_type(results_dir, capsys, field, value):
    edit_json(results_dir / "results.json", lambda r: r.__setitem__(field, value))
    refused_report(capsys, results_dir, "results.json")


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["verdicts"].__setitem__("H1", "supported"),
        lambda r: r["verdicts"]["H1"].__setitem__("verdict", 3),
        lambda r: r["probes"].__setitem__("collapse", []),
        lambda r: r["run"].__setitem__("neuron", {"layer": "x"}),
        lambda r: r["runs"].append("a run"),
        lambda r: r["skipped"].__setitem__("x", {"why": 1}),
        lambda r: r.__setitem__("format", "mechcheck-results/9"),
    ],
    ids=["verdict_str", "verdict_number", "probe_list", "run_neuron", "runs_str", "skipped_dict", "format"],
)
def test_results_json_with_a_wrong_nested_field(results_dir, capsys, change):
    edit_json(results_dir / "results.json", change)
    refused_report(capsys, results_dir, "results.json")


@pytest.mark.parametrize("kind", sorted(RAW))
def test_a_corrupt_results_json(results_dir, capsys, kind):
    (results_dir / "results.json").write_bytes(RAW[kind])
    refused_report(capsys, results_dir, "results.json")


@pytest.mark.parametrize("kind", ["not_utf8", "truncated", "deep_100k", "a_list"])
def test_a_corrupt_saved_prediction(results_dir, capsys, kind):
    (results_dir / "predictions" / "seed-1.json").write_bytes(RAW[kind])
    refused_report(capsys, results_dir, "seed-1.json")


def _leaf_paths(data, path=()):
    """Every key path of a JSON value (two entries of each list)."""
    yield path
    items = data.items() if isinstance(data, dict) else enumerate(data[:2]) if isinstance(data, list) else ()
    for key, value in items:
        yield from _leaf_paths(value, (*path, key))


DEEP = [p for p in _leaf_paths(json.loads((FIXTURE / "results.json").read_text())) if len(p) >= 3]


@pytest.mark.parametrize("index", range(4))
def test_a_wrong_type_deep_inside_results_json_is_one_line_or_ignored(results_dir, capsys, index):
    """Fields deeper than the record shapes look (a probe's metrics, a verdict's evidence …), picked
    at random: the report renders, or refuses with one line."""
    import random

    path = random.Random(index).choice(DEEP)

    def change(results):
        target = results
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = [{"x": None}] if index % 2 else "text"

    edit_json(results_dir / "results.json", change)
    capsys.readouterr()
    code = main(["report", str(results_dir)])
    err = capsys.readouterr().err
    assert code in (0, 2) and (
        code == 0 or (err.count("\n") == 1 and err.startswith("mechcheck: error: "))
    ), err


# --- records inside a run directory -----------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        '{"lr": 0.1}',
        "[]",
        '{"identity": ["x"], "config": {}}',
        '{"identity": "hostile", "config": "x"}',
        deep_json(100_000),
        "\xff",
    ],
    ids=["foreign", "list", "identity_list", "config_str", "deep", "binary"],
)
def test_a_run_directory_with_a_malformed_experiment_json(tmp_path, capsys, content, monkeypatch):
    w = world(tmp_path / "w")
    out = tmp_path / "run"
    out.mkdir()
    (out / "experiment.json").write_text(content)
    (out / "notes.txt").write_text("keep")
    before = listing(out)
    for extra in ((), ("--overwrite",)):
        fails(capsys, ["run", str(w["experiment"]), "--out", str(out), *extra])
        assert listing(out) == before


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '{"format": "mechcheck-output/9", "run_id": "x", "kind": "run", "entries": []}',
        '{"format": "mechcheck-output/1", "run_id": "x", "kind": "run", "entries": "corpus"}',
        "{",
        deep_json(5000),
    ],
    ids=["list", "format", "entries_str", "truncated", "deep"],
)
def test_a_malformed_ownership_marker_is_never_trusted(tmp_path, capsys, content):
    w = world(tmp_path / "w")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".mechcheck.json").write_text(content)
    (out / "corpus").mkdir()
    (out / "corpus" / "mine.txt").write_text("keep")
    before = listing(out)
    for command in ("run", "train"):
        fails(capsys, [command, str(w["experiment"]), "--out", str(out), "--overwrite"], ".mechcheck.json")
        assert listing(out) == before
