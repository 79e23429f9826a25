"""`mechcheck train` runs the pipeline's own corpus → select → train stages: the split and the neuron are
the stages' (made once, by the same stages as `mechcheck run`'s), a directory of the earlier
`mechcheck train` resumes with its checkpoints kept, and a changed run is refused, never deleted."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import mechcheck.selection
from mechcheck.cli import main
from mechcheck.corpus import experiment_splits
from mechcheck.experiment import load_experiment
from mechcheck.outputs import MARKER_NAME, remove_path
from mechcheck.pipeline import Pipeline
from mechcheck.train.plan import train_experiment
from mechcheck.train.record import config_hash

from .test_runner import feature_cache, write_toml  # noqa: F401 (feature_cache: autouse)

pytestmark = pytest.mark.usefixtures("one_thread")
SELECT = 'layers = [1, 2]\ncriterion = "std"\nscan_texts = 40'
FROZEN = 'conditions = ["frozen"]\nmax_steps = 3'
STAGES = ("corpus", "select", "stage.json")


def checkpoints(out: Path) -> dict[str, bytes]:
    """Every file of the checkpoints and target.json, as bytes."""
    files = [out / "target.json", *(p for p in out.glob("*-*/**/*") if p.is_file())]
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def test_train_runs_the_pipelines_corpus_and_select_stages_once(tmp_path, tiny_dir, corpus_file, monkeypatch):
    toml = write_toml(tmp_path, tiny_dir, corpus_file, SELECT, FROZEN)
    scans = []
    select = mechcheck.selection.select
    monkeypatch.setattr(mechcheck.selection, "select", lambda *a, **k: scans.append(1) or select(*a, **k))
    out = tmp_path / "out"
    assert main(["train", str(toml), "--out", str(out), "-q", "--seeds", "0,1"]) == 0
    assert len(scans) == 1  # the select stage's scan; the trainer chooses nothing
    assert main(["train", str(toml), "--out", str(out), "-q", "--seeds", "0,1", "--resume"]) == 0
    assert len(scans) == 1 and json.loads((out / "stage.json").read_text())["status"] == "done"

    experiment = load_experiment(toml)  # the stages of `mechcheck run` on the same experiment
    p = Pipeline(replace(experiment, train=replace(experiment.train, seeds=(0, 1))), tmp_path / "run", False)
    corpus = p.corpus()
    stage = p.select(corpus)
    for name, hash_ in (("corpus", corpus.hash), ("select", stage.hash)):
        assert json.loads((out / name / "stage.json").read_text())["hash"] == hash_
    for seed in (0, 1):
        file = Path("corpus") / "splits" / f"seed-{seed}.json"
        assert (out / file).read_bytes() == (p.out / file).read_bytes()
    neurons = json.loads((out / "select" / "neurons.json").read_text())
    assert neurons["neurons"] == json.loads((p.out / "select" / "neurons.json").read_text())["neurons"]
    chosen = neurons["neurons"][0]
    for seed in (0, 1):
        run = json.loads((out / "frozen-fixed" / f"seed-{seed}" / "run.json").read_text())
        split = json.loads((out / "corpus" / "splits" / f"seed-{seed}.json").read_text())
        assert run["neuron"] == {"layer": chosen["layer"], "index": chosen["index"]}
        assert run["neuron_selection"]["selected"] and run["neuron_selection"]["chosen"] == chosen
        assert run["split"]["sha256"] == split["card"]["split"]["sha256"]


@pytest.mark.parametrize("neuron", ["layer = 1\nindex = 3", SELECT])
def test_a_directory_of_the_earlier_train_command_resumes_with_its_checkpoints(
    tmp_path, tiny_dir, corpus_file, capsys, neuron
):
    toml = write_toml(tmp_path, tiny_dir, corpus_file, neuron, FROZEN)
    out, argv = tmp_path / "out", ["train", str(toml), "--out", str(tmp_path / "out"), "-q"]
    assert main(argv) == 0
    run_file = out / "frozen-fixed" / "seed-0" / "run.json"
    now = json.loads(run_file.read_text())
    earlier = config_hash(load_experiment(toml), "frozen", "fixed", 0)  # hashed before the choice
    marker = json.loads((out / MARKER_NAME).read_text())
    for with_marker in (True, False):  # as the earlier command left it: no stages; before the marker: none
        run_file.write_text(json.dumps(now | {"config_hash": earlier}))
        kept = checkpoints(out)
        for name in STAGES:
            remove_path(out / name)
        (out / MARKER_NAME).write_text(json.dumps(marker | {"entries": ["frozen-fixed", "target.json"]}))
        if not with_marker:
            (out / MARKER_NAME).unlink()
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "already holds results" in err and len(err.splitlines()) == 1
        assert main([*argv, "--resume"]) == 0
        assert "frozen-fixed seed 0: test MSE" in capsys.readouterr().out
        assert all((out / name).exists() for name in STAGES)
        adopted = json.loads(run_file.read_text())
        kept.pop("frozen-fixed/seed-0/run.json")
        assert {k: v for k, v in checkpoints(out).items() if k != "frozen-fixed/seed-0/run.json"} == kept
        assert adopted["config_hash"] == now["config_hash"]  # a selected neuron's: the chosen experiment's
        assert adopted.get("adopted_from", {}).get("config_hash", earlier) == earlier
        assert {k: v for k, v in adopted.items() if k not in ("adopted_from", "config_hash")} == {
            k: v for k, v in now.items() if k != "config_hash"
        }


def test_a_changed_run_is_refused_on_resume_never_deleted(tmp_path, tiny_dir, corpus_file, capsys):
    toml = write_toml(tmp_path, tiny_dir, corpus_file, "layer = 1\nindex = 3", FROZEN)
    out = tmp_path / "out"
    assert main(["train", str(toml), "--out", str(out), "-q"]) == 0
    kept = checkpoints(out)
    (tmp_path / "changed").mkdir()
    changed = write_toml(
        tmp_path / "changed", tiny_dir, corpus_file, "layer = 1\nindex = 3", f"{FROZEN}\nlr = 1e-2"
    )
    capsys.readouterr()
    assert main(["train", str(changed), "--out", str(out), "-q", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--resume with a different configuration" in err and len(err.splitlines()) == 1
    assert checkpoints(out) == kept
    assert main(["train", str(changed), "--out", str(out), "-q", "--overwrite"]) == 0
    assert checkpoints(out) != kept


def test_the_trainer_trains_only_a_neuron_the_select_stage_fixed(tmp_path, tiny_dir, corpus_file):
    experiment = load_experiment(write_toml(tmp_path, tiny_dir, corpus_file, SELECT, FROZEN))
    splits = experiment_splits(experiment, [0])
    with pytest.raises(ValueError, match="select stage"):
        train_experiment(experiment, tmp_path / "out", splits=splits, selection={"selected": False})
