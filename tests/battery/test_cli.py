"""`mechcheck test` through `mechcheck.cli.main`: a full run once, and every kind of bad input
answered by one line on stderr, exit code 2, and nothing written over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from planted import write_planted

from mechcheck.battery.runner import load_probes
from mechcheck.checkpoint import write_checkpoint
from mechcheck.cli import main
from mechcheck.readout import LinearReadout
from mechcheck.testing import random_texts, save_tiny


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return write_planted(tmp_path_factory.mktemp("cli"), "H2_out", 0, n_eval=48)


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """A hand-written checkpoint with only the required run.json fields, around a tiny model."""
    root = tmp_path_factory.mktemp("bare")
    base = save_tiny(root / "base", "llama", seed=3)
    readout = LinearReadout(32)
    torch.nn.init.normal_(readout.weight, generator=torch.Generator().manual_seed(0))
    run = {"base_model": str(base), "neuron": {"layer": 1, "index": 2}, "position": "last",
           "condition": "frozen", "target_mode": "fixed"}  # fmt: skip
    return write_checkpoint(root / "ck", run, readout)


def corpus_file(path: Path, n: int) -> str:
    path.write_text("\n".join(random_texts(n, seed=7, min_words=6, max_words=14)) + "\n")
    return str(path)


def fails(capsys, *argv: str, match: str) -> None:
    assert main(["test", *argv, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mechcheck: error: "), err
    assert match in err, err


@pytest.mark.usefixtures("one_thread")
def test_cli_runs_the_battery_and_writes_a_self_contained_directory(planted, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["test", str(planted), "--out", str(out), "-q"]) == 0
    stdout = capsys.readouterr().out
    assert "H2_out: supported\n" in stdout and "H2_in: not_supported" in stdout and "results: " in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "mechcheck-results/2"
    assert results["checkpoints"] == [str(planted)] and results["run"]["planted"] == "H2_out"
    assert results["eval"] == {"source": "checkpoint test split", "n_texts": 48, "n_labels": 48, "seeds": [0]}
    assert results["verdicts"]["H2_out"]["verdict"] == "supported"
    assert set(results["timing"]) >= {"total_s", "per_probe_s", "bare_forward_s", "ratio_to_bare_forward"}
    assert "curves" not in results["runs"][0]
    # every registered probe ran, except the one that needs several neurons, which says why
    assert set(results["probes"]) == set(load_probes()) - {"cross_talk"}
    assert "one neuron" in results["skipped"]["cross_talk"]
    neuron = results["probes"]["neuron"]
    assert neuron["hypotheses"] == ["H2_out"] and neuron["kind"] == "information"
    assert neuron["heads"]["report"]["null"]["n"] == 100  # the default: ≥ 100 matched draws
    assert results["config"]["n_null"] == 100
    assert (out / "predictions" / "seed-0.json").is_file() and (out / "battery" / "seed-0.json").is_file()
    assert (out / "report.md").is_file()
    # a second run into the same directory is refused, and the first results are kept
    before = (out / "results.json").read_text()
    fails(capsys, str(planted), "--out", str(out), match="--overwrite")
    assert (out / "results.json").read_text() == before


@pytest.mark.usefixtures("one_thread")
def test_a_hand_written_checkpoint_runs_on_a_corpus_and_says_what_it_skipped(bare, tmp_path, capsys):
    corpus = corpus_file(tmp_path / "texts.txt", 400)
    out = tmp_path / "out"
    argv = [
        "test",
        str(bare),
        "--corpus",
        corpus,
        "--probes",
        "informative,collapse",
        "--out",
        str(out),
        "-q",
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["eval"]["source"] == corpus and results["eval"]["n_texts"] >= 20
    assert set(results["skipped"]) == {"verify_base", "predictions"}
    assert set(results["probes"]) == {"informative", "collapse"}
    assert results["verdicts"]["H3"]["verdict"] == "not_supported"  # frozen: the neuron is unchanged
    assert results["probes"]["collapse"]["metrics"]["std_ratio"]["value"] == pytest.approx(1.0)
    for h in ("H1", "H2_in", "H2_out"):  # their tests were not selected
        assert results["verdicts"][h]["verdict"] == "inconclusive"
    assert not (out / "predictions").exists()


def test_missing_checkpoint(tmp_path, capsys):
    fails(capsys, str(tmp_path / "nope"), "--out", str(tmp_path / "out"), match="does not exist")
    assert not (tmp_path / "out").exists()


def test_corrupt_and_foreign_checkpoints(tmp_path, capsys):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "run.json").write_text("{not json")
    fails(capsys, str(corrupt), "--out", str(tmp_path / "out"), match="corrupt")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "run.json").write_text(json.dumps({"format": "someone-else/2"}))
    fails(capsys, str(foreign), "--out", str(tmp_path / "out"), match="not a mechcheck-checkpoint/1")
    assert not (tmp_path / "out").exists()


def test_base_model_with_different_weights_is_refused(planted, tmp_path, capsys):
    copy = tmp_path / "ck"
    copy.mkdir()
    for f in planted.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    run = json.loads((copy / "run.json").read_text())
    run["weights_sha256"]["W_out"] = "0" * 64
    (copy / "run.json").write_text(json.dumps(run))
    fails(capsys, str(copy), "--out", str(tmp_path / "out"), match="different W_out")
    assert not (tmp_path / "out").exists()


def test_unknown_probe(planted, tmp_path, capsys):
    fails(
        capsys,
        str(planted),
        "--probes",
        "neuron,telepathy",
        "--out",
        str(tmp_path / "o"),
        match="telepathy",
    )


def test_evaluation_set_too_small_for_a_ci(bare, tmp_path, capsys):
    corpus = corpus_file(tmp_path / "small.txt", 60)
    fails(capsys, str(bare), "--corpus", corpus, "--out", str(tmp_path / "out"), match="at least 20")
    assert not (tmp_path / "out").exists()


def test_no_texts_without_predictions_or_corpus(bare, tmp_path, capsys):
    fails(capsys, str(bare), "--out", str(tmp_path / "out"), match="pass --corpus")


def test_checkpoints_of_different_runs_are_refused(planted, bare, tmp_path, capsys):
    fails(capsys, str(planted), str(bare), "--out", str(tmp_path / "out"), match="only seeds of one run")


@pytest.mark.parametrize(
    "neurons", [{"layer": 1, "index": 999}, [{"layer": 1, "index": 2}, {"layer": 0, "index": 999}]]
)
def test_a_neuron_index_outside_the_base_model_is_refused(bare, tmp_path, capsys, neurons):
    """A hand-written run.json naming a neuron its layer does not have (one neuron or one of several)."""
    several = isinstance(neurons, list)
    readout = LinearReadout(32, 2 if several else 1)
    run = json.loads((bare / "run.json").read_text())
    run.pop("neuron")
    run |= {"neurons": neurons} if several else {"neuron": neurons}
    ck = write_checkpoint(tmp_path / "ck", run, readout)
    corpus = corpus_file(tmp_path / "texts.txt", 400)
    out = str(tmp_path / "out")
    fails(capsys, str(ck), "--corpus", corpus, "--out", out, match="index 999 is out of range")
    assert not (tmp_path / "out").exists()
