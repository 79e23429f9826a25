"""The typed records: run.json (`RunRecord`) and results.json (`BatteryResults`, `RunResults`) each
read every file mechcheck has written — every committed report's — back to exactly its contents,
and refuse a foreign, corrupt or mistyped file with one UserError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mechcheck.errors import UserError
from mechcheck.neuron import Neuron
from mechcheck.records import read_json
from mechcheck.results_record import BatteryResults, RunResults, read_results
from mechcheck.run_record import FORMAT, RunRecord

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = sorted(ROOT.glob("reports/**/run.json"))
RESULT_FILES = sorted(
    p
    for p in [*ROOT.glob("reports/**/results.json"), *ROOT.glob("tests/data/**/results.json")]
    if str(read_json(p).get("format", "")).startswith(("mechcheck-results/", "mechcheck-run/"))
)  # not the cross-prediction or in-context reports' own results


def test_the_committed_records_are_found() -> None:
    assert len(RUN_FILES) >= 20 and len(RESULT_FILES) >= 20


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_run_json_reads_back_to_its_contents(path: Path) -> None:
    record = RunRecord.read(path)
    assert record.to_json() == read_json(path)
    assert record.neurons and all(isinstance(n, Neuron) for n in record.neurons)
    assert record.condition in ("frozen", "unfrozen", "after_target") and record.base_model


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_results_json_reads_back_to_its_contents(path: Path) -> None:
    record = read_results(path)
    data = read_json(path)
    assert record.to_json() == data
    batteries = [c.results for c in record.conditions] if isinstance(record, RunResults) else [record]
    for battery in batteries:
        assert battery.version in (1, 2) and battery.withdrawn == (battery.version == 1)
        assert battery.run is not None and battery.per_neuron


def run_fields() -> dict:
    return {
        "base_model": "tiny", "neuron": {"layer": 1, "index": 2}, "position": "last", "condition": "frozen",
        "target_mode": "fixed", "readout": {"kind": "linear", "frozen": False}, "seed": 3,
        "metrics": {"test": {"skill": 0.5}}, "curves": [{"step": 0}], "train_config": {"lr": 0.1},
        "frozen_fit": None,
    }  # fmt: skip


def test_a_run_record_round_trips_and_keeps_what_it_does_not_type() -> None:
    record = RunRecord.from_fields(run_fields())
    assert record.to_json() == {"format": FORMAT, **run_fields()}
    assert record.extra == {"train_config": {"lr": 0.1}, "frozen_fit": None}
    assert record.neuron == Neuron(1, 2) and record.seed == 3 and record.readout_kind == "linear"
    assert RunRecord.from_json(json.loads(json.dumps(record.to_json())), "x") == record
    several = RunRecord.from_fields(
        {**{k: v for k, v in run_fields().items() if k != "neuron"}, "neurons": [{"layer": 0, "index": 1},
                                                                                {"layer": 2, "index": 0}]}
    )  # fmt: skip
    assert several.to_json()["neurons"] == [{"layer": 0, "index": 1}, {"layer": 2, "index": 0}]
    assert "neuron" not in several.to_json() and "curves" not in record.without_curves().to_json()


def test_a_checkpoint_written_and_read_is_the_same_record(tmp_path: Path) -> None:
    from mechcheck.checkpoint import read_checkpoint, write_checkpoint
    from mechcheck.readout import LinearReadout

    record = RunRecord.from_fields(run_fields())
    ck = read_checkpoint(write_checkpoint(tmp_path / "ck", record, LinearReadout(8)))
    assert ck.run == record and ck.neuron == Neuron(1, 2) and ck.position == "last"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.update(format="mechcheck-checkpoint/9"), "not a mechcheck-checkpoint/1 checkpoint"),
        (lambda d: d.update(format="sae-lens"), "not a mechcheck-checkpoint/1 checkpoint"),
        (lambda d: d.pop("format"), "format=None"),
        (lambda d: d.pop("condition"), "missing required field 'condition'"),
        (lambda d: d.update(seed="3"), "seed: expected a non-negative integer"),
        (lambda d: d.update(neurons=[{"layer": 0, "index": 1}]), "exactly one of 'neuron'"),
        (lambda d: d.update(neuron={"layer": 0, "index": 1, "kind": "x"}), "malformed neuron field"),
    ],
)
def test_a_foreign_or_corrupt_run_json_is_refused(tmp_path: Path, change, fragment) -> None:
    data = {"format": FORMAT, **run_fields()}
    change(data)
    (tmp_path / "run.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        RunRecord.read(tmp_path / "run.json")


def test_a_corrupt_file_is_one_user_error(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(b'{"format": "mechc')
    with pytest.raises(UserError, match="not valid JSON"):
        read_results(path)
    path.write_text(json.dumps({"format": "mechcheck-results/3"}))
    with pytest.raises(UserError, match="unknown format 'mechcheck-results/3'"):
        read_results(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(UserError, match="unknown format None"):
        BatteryResults.read(path)


def test_battery_results_name_their_run_and_version() -> None:
    fixture = ROOT / "tests/data/report_fixture_v2/results.json"
    record = BatteryResults.read(fixture)
    assert record.format == "mechcheck-results/2" and not record.withdrawn
    assert record.name is None and record.title == record.key == "frozen-fixed"  # older files name no run
    named = BatteryResults.from_json({**read_json(fixture), "name": "audit"}, "x")
    assert named.title == "audit" and named.to_json()["name"] == "audit"
    old = BatteryResults.read(ROOT / "tests/data/report_fixture/results.json")
    assert old.version == 1 and old.withdrawn


def test_a_results_json_with_a_mistyped_embedded_run_is_refused(tmp_path: Path) -> None:
    data = read_json(ROOT / "tests/data/report_fixture_v2/results.json")
    data["run"]["condition"] = 3
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="condition: expected a string"):
        read_results(tmp_path / "results.json")
