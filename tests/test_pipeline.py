"""`mechcheck run` end to end on a tiny model: stages, resume, invalidation, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from run_kit import tiny_data, write_experiment

from mechcheck.cli import main
from mechcheck.experiment import load_experiment
from mechcheck.ownership import hold
from mechcheck.rundir import claim_run_dir

EXPERIMENTS = Path(__file__).parent.parent / "experiments"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, Path, str]:
    folder = tiny_data(tmp_path_factory.mktemp("pipeline"))
    experiment = write_experiment(folder, folder)
    out = folder / "runs" / "tiny"
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(["run", str(experiment), "--out", str(out), "-q"]) == 0
    return folder, out, buffer.getvalue()


def copy_run(first_run, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the finished run (same experiment file and model) to mutate."""
    folder, out, _ = first_run
    target = tmp_path / "tiny"
    shutil.copytree(out, target)
    return folder, target


def records(out: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text()) for p in out.rglob("stage.json")}


def run(experiment: Path, out: Path, *extra: str) -> int:
    return main(["run", str(experiment), "--out", str(out), "-q", *extra])


def test_layout_and_one_line_of_output(first_run) -> None:
    folder, out, printed = first_run
    assert printed == f"report: {out / 'report.md'}\n"
    stages = records(out)
    assert sorted(stages) == [
        "corpus",
        "report",
        "select",
        "test/after_target-fixed",
        "test/frozen-fixed",
        "train",
    ]
    assert all(r["status"] == "done" and len(r["hash"]) == 64 for r in stages.values())
    for path in ("corpus/splits.json", "select/neurons.json", "select/histogram.png", "train/target.json",
                 "train/frozen-fixed/seed-0/run.json", "train/after_target-fixed/seed-0/predictions.json",
                 "test/frozen-fixed/results.json", "test/after_target-fixed/predictions/seed-0.json",
                 "results.json", "report.md"):  # fmt: skip
        assert (out / path).is_file(), path
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "mechcheck-run/1"
    assert [c["key"] for c in results["conditions"]] == ["after_target-fixed", "frozen-fixed"]
    neuron = json.loads((out / "select" / "neurons.json").read_text())["neurons"][0]
    run_json = json.loads((out / "train/frozen-fixed/seed-0/run.json").read_text())
    assert run_json["neuron"] == {"layer": neuron["layer"], "index": neuron["index"]} and neuron["layer"] == 1
    splits = json.loads((out / "corpus" / "splits" / "seed-0.json").read_text())
    sizes = {k: len(splits[k]) for k in ("train", "val", "test")}
    assert run_json["corpus"]["card"]["split"]["texts"] == sizes
    assert run_json["split"]["sha256"] == splits["card"]["split"]["sha256"]  # the split it trained on
    predictions = json.loads((out / "train/frozen-fixed/seed-0/predictions.json").read_text())
    assert predictions["texts"] == splits["test"]
    report = (out / "report.md").read_text()
    headings = ["## Verdicts", "## Condition: frozen (fixed)", "## Condition: after_target (fixed)"]
    headings += ["## Battery: frozen (fixed)", "## Threats to validity", "## Pipeline stages"]
    assert all(h in report for h in headings)


def test_report_rerenders_from_files_alone(first_run, tmp_path: Path) -> None:
    _, out = copy_run(first_run, tmp_path)
    before = (out / "report.md").read_text()
    (out / "report.md").unlink()
    shutil.rmtree(out / "figures")
    shutil.rmtree(out / "train")  # the report needs no checkpoint, only results.json + predictions
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == before


def test_rerun_skips_every_stage(first_run, tmp_path: Path) -> None:
    folder, out = copy_run(first_run, tmp_path)
    before = records(out)
    assert run(folder / "tiny.toml", out) == 0
    assert records(out) == before


def test_resume_after_a_kill(first_run, tmp_path: Path) -> None:
    """Killed between stages (report and a battery dir gone) and inside one (stage.json left
    `running`): only those stages run again; corpus, select and train are skipped by their hashes."""
    folder, out = copy_run(first_run, tmp_path)
    before = records(out)
    (out / "report.md").unlink()
    shutil.rmtree(out / "report")
    shutil.rmtree(out / "test" / "frozen-fixed")
    interrupted = out / "test/after_target-fixed/stage.json"
    interrupted.write_text(json.dumps({**before["test/after_target-fixed"], "status": "running"}))
    assert run(folder / "tiny.toml", out) == 0
    after = records(out)
    for name in ("corpus", "select", "train"):
        assert after[name] == before[name], name
    for name in ("test/frozen-fixed", "test/after_target-fixed"):
        assert after[name]["status"] == "done" and after[name]["hash"] == before[name]["hash"]
    assert (out / "test/frozen-fixed/results.json").is_file() and (out / "report.md").is_file()


def test_changed_train_config_reruns_train_and_downstream(first_run, tmp_path: Path) -> None:
    folder, out = copy_run(first_run, tmp_path)
    before = records(out)
    override = '[[train.override]]\ncondition = "after_target"\nmax_steps = 3\n'
    changed = write_experiment(tmp_path, folder, override=override)
    assert run(changed, out) == 2  # a changed experiment needs --overwrite
    assert records(out) == before
    assert run(changed, out, "--overwrite") == 0
    after = records(out)
    assert after["corpus"] == before["corpus"] and after["select"] == before["select"]
    for name in ("train", "test/frozen-fixed", "test/after_target-fixed", "report"):
        assert after[name]["hash"] != before[name]["hash"], name  # the trainer hashes the whole train config
    run_json = json.loads((out / "train/after_target-fixed/seed-0/run.json").read_text())
    assert run_json["curves"][-1]["step"] == 3


def test_battery_change_reruns_only_the_battery(first_run, tmp_path: Path) -> None:
    folder, out = copy_run(first_run, tmp_path)
    before = records(out)
    assert run(write_experiment(tmp_path, folder, n_bootstrap=60), out, "--overwrite") == 0
    after = records(out)
    for name in ("corpus", "select", "train"):
        assert after[name] == before[name], name
    for name in ("test/frozen-fixed", "test/after_target-fixed", "report"):
        assert after[name]["hash"] != before[name]["hash"], name


def test_a_fixed_neuron_skips_the_scan_and_is_the_one_trained(first_run, tmp_path: Path) -> None:
    folder, _, _ = first_run
    experiment = write_experiment(tmp_path, folder, name="fixed")
    text = experiment.read_text().replace('layers = [1]\ncriterion = "std"', "layer = 2\nindex = 7")
    experiment.write_text(text.replace('conditions = ["frozen", "after_target"]', 'conditions = ["frozen"]'))
    out = tmp_path / "runs" / "fixed"
    assert run(experiment, out) == 0
    chosen = json.loads((out / "select/neurons.json").read_text())
    assert chosen["fixed"] and chosen["neurons"] == [{"layer": 2, "index": 7}]
    run_json = json.loads((out / "train/frozen-fixed/seed-0/run.json").read_text())
    assert run_json["neuron"] == {"layer": 2, "index": 7}


def test_refuses_another_experiments_dir(first_run, tmp_path: Path, capsys) -> None:
    folder, out = copy_run(first_run, tmp_path)
    other = write_experiment(tmp_path, folder, name="other")
    marker = (out / "experiment.json").read_text()
    assert run(other, out) == 2
    err = capsys.readouterr().err
    assert "holds a run of experiment 'tiny', not 'other'; pass --overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert (out / "experiment.json").read_text() == marker


def test_refuses_a_foreign_dir_even_with_overwrite(first_run, tmp_path: Path, capsys) -> None:
    folder, _, _ = first_run
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for extra in ((), ("--overwrite",)):
        assert run(folder / "tiny.toml", foreign, *extra) == 2
        assert "holds no mechcheck output" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_a_run(first_run, tmp_path: Path) -> None:
    _, out = copy_run(first_run, tmp_path)
    (out / "notes.txt").write_text("mine")
    with hold(out) as output:
        assert claim_run_dir(output, "other", {}, overwrite=True) == "replaced"
    assert sorted(p.name for p in out.iterdir()) == [".mechcheck.json", "notes.txt"]


def test_bad_experiment_fails_before_writing(first_run, tmp_path: Path, capsys) -> None:
    folder, _, _ = first_run
    bad = write_experiment(tmp_path, folder, name="bad", override='[[train.override]]\ncondition = "frozn"\n')
    assert run(bad, tmp_path / "out") == 2
    assert "frozn" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.toml")), ids=lambda p: p.name)
def test_every_experiment_file_parses(path: Path) -> None:
    experiment = load_experiment(path)
    for condition in experiment.train.conditions:
        assert experiment.train.for_condition(condition).override == ()


def test_gpt2_reproduction_settings() -> None:
    e = load_experiment(EXPERIMENTS / "gpt2_reproduction.toml")
    assert e.subject.model == "gpt2" and e.reference == "study" and e.neuron.criterion == "study"
    assert e.neuron.layers == tuple(range(9)) and e.neuron.position == "last"
    epochs = {c: e.train.for_condition(c).epochs for c in e.train.conditions}
    assert epochs == {"frozen": 10, "unfrozen": 10, "after_target": 30}
    frozen_readout = {c: e.train.for_condition(c).readout_frozen for c in e.train.conditions}
    assert frozen_readout == {"frozen": False, "unfrozen": True, "after_target": True}
    assert (e.train.lr, e.train.batch_size) == (1e-4, 16)


@pytest.mark.slow
def test_trained_smollm2_can_be_saved_and_reloaded(tmp_path: Path) -> None:
    """The GGUF model is float after loading; a trained copy must survive save_pretrained (unfrozen runs)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mechcheck.subject import load_subject

    subject = load_subject("smollm2-135m")
    subject.model.save_pretrained(tmp_path / "model")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    saved, reloaded = subject.model.state_dict(), again.state_dict()
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
