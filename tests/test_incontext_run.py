"""`mechcheck incontext`: the baseline as a run on the experiment's own corpus, split and neuron."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from run_kit import tiny_data, write_experiment

from mechcheck.cli import main
from mechcheck.incontext import incontext_baseline
from mechcheck.readout import Neuron
from mechcheck.subject import load_subject

OPTIONS = ("--ks", "0,2", "--n-train", "40", "--n-test", "12")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tiny_data(tmp_path_factory.mktemp("incontext"))
    experiment = write_experiment(folder, folder)
    out = folder / "runs" / "ic"
    assert main(["incontext", str(experiment), "--out", str(out), *OPTIONS, "-q"]) == 0
    return folder, experiment, out


def test_the_baseline_runs_on_the_selected_neuron_and_the_split(baseline) -> None:
    folder, _, out = baseline
    results = json.loads((out / "incontext/results.json").read_text())
    chosen = json.loads((out / "select/neurons.json").read_text())["neurons"][0]
    assert results["neuron"] == {"layer": chosen["layer"], "index": chosen["index"]} and chosen["layer"] == 1
    assert [row["k"] for row in results["by_k"]] == [0, 2] and (results["n_train"], results["n_test"]) == (
        40,
        12,
    )
    splits = json.loads((out / "corpus/splits.json").read_text())
    want = incontext_baseline(
        load_subject(str(folder / "model")), Neuron(chosen["layer"], chosen["index"]), splits["train"][:40],
        splits["test"][:12], ks=(0, 2), seed=0,
    )  # fmt: skip
    assert results["by_k"] == want["by_k"]  # the same numbers as the library call on the same texts
    report = (out / "report.md").read_text()
    assert "| 2 |" in report and (out / "figures/incontext.png").is_file()


def test_report_rerenders_identically_and_a_rerun_skips(baseline, tmp_path: Path) -> None:
    _, experiment, out = baseline
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = (copy / "report.md").read_text()
    (copy / "report.md").unlink()
    assert main(["report", str(copy), "-q"]) == 0
    assert (copy / "report.md").read_text() == before
    stage = json.loads((copy / "incontext/stage.json").read_text())
    assert main(["incontext", str(experiment), "--out", str(copy), *OPTIONS, "-q"]) == 0
    assert json.loads((copy / "incontext/stage.json").read_text()) == stage  # done: not asked again


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ks", "0,50"], "more examples than --n-train"),
        (["--ks", "1,1"], "distinct"),
        (["--n-test", "1"], "2 test"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(baseline, tmp_path: Path, capsys, extra, message) -> None:
    _, experiment, _ = baseline
    out = tmp_path / "bad"
    assert main(["incontext", str(experiment), "--out", str(out), "--n-train", "40", *extra, "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()
