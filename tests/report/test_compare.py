"""`mechcheck compare` over trained checkpoints: the token-space summary is its output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mechcheck.cli import main

REPORTS = Path(__file__).resolve().parents[2] / "reports"
SUMMARY = REPORTS / "token_space"
RUNS = [
    "reports/token_space/digit/run.json",
    "reports/token_space/linear/run.json",
    "reports/smollm2-default/train/frozen-fixed/seed-0/run.json",
]


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPORTS.parent)  # the rows name their run.json as given, relative to the repo


def test_the_committed_token_space_summary_is_what_compare_writes(in_repo, tmp_path: Path, capsys) -> None:
    md, js = tmp_path / "summary.md", tmp_path / "summary.json"
    assert main(["compare", *RUNS, "--out", str(md), "--json", str(js)]) == 0
    assert capsys.readouterr().out == md.read_text() == (SUMMARY / "summary.md").read_text()
    assert json.loads(js.read_text()) == json.loads((SUMMARY / "summary.json").read_text())


def test_digit_columns_only_for_a_digit_readout(in_repo, tmp_path: Path, capsys) -> None:
    js, checkpoint = tmp_path / "rows.json", tmp_path / "checkpoint"
    checkpoint.mkdir()
    shutil.copy(RUNS[1], checkpoint / "run.json")  # a checkpoint folder: its run.json, no results.json
    assert main(["compare", RUNS[0], str(checkpoint), "--json", str(js)]) == 0
    digit, linear = json.loads(js.read_text())
    assert set(digit["digit_after"]) == {"spearman", "mae", "argmax_accuracy", "within_one"}
    assert 0 < digit["chance_accuracy"] < digit["digit_after"]["argmax_accuracy"]
    assert "digit_after" not in linear and linear["run"] == str(checkpoint / "run.json")
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| digit | after_target | 2421/313/266 |")
    assert lines[3].endswith("| – | – | – |")


def test_battery_runs_and_checkpoints_are_not_mixed(in_repo, capsys) -> None:
    assert main(["compare", RUNS[0], "reports/smollm2-default"]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_run_json_without_training_metrics_is_one_line(tmp_path: Path, capsys) -> None:
    data = json.loads((REPORTS.parent / RUNS[1]).read_text())
    del data["metrics"]["best_step"]
    (tmp_path / "run.json").write_text(json.dumps(data))
    assert main(["compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "best_step" in err and len(err.splitlines()) == 1


def test_outputs_never_take_a_runs_own_file_name(in_repo, tmp_path: Path, capsys) -> None:
    shutil.copy(REPORTS.parent / RUNS[1], tmp_path / "x.json")
    assert main(["compare", str(tmp_path / "x.json"), "--json", str(tmp_path / "run.json")]) == 2
    assert "choose another name" in capsys.readouterr().err
