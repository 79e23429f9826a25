"""Several neurons in one run: [n, k] labels, a vector linear readout, per-neuron metrics."""

from __future__ import annotations

import json

import pytest
import torch
from run_kit import write_corpus

from mechcheck.checkpoint import read_checkpoint
from mechcheck.cli import main
from mechcheck.experiment import Experiment, NeuronConfig, NeuronRef, load_experiment
from mechcheck.readout import Neuron, readout_values
from mechcheck.targets import build_targets, compute_labels
from mechcheck.testing import random_texts, tiny_subject
from mechcheck.train.record import metrics_from_predictions, training_config
from mechcheck.train_command import train_chain

from .test_runner import _planted_linear_neuron, corpus_file, reload_and_report, write_toml  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

NEURONS = "neurons = [{layer = 0, index = 3}, {layer = 2, index = 9}, {layer = 1, index = 5}]"
NEURONS += '\nposition = "mean"'


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("position", ["last", "all"])
def test_labels_of_several_neurons_equal_single_neuron_labels(position):
    subject = tiny_subject("llama", seed=3)
    texts = random_texts(40, seed=2, min_words=2, max_words=15)
    neurons = (Neuron(2, 7), Neuron(0, 1), Neuron(2, 30))
    matrix, index = compute_labels(subject, texts, neurons, position, max_tokens=16, batch_size=7)
    assert matrix.shape == (len(index), 3)
    for i, n in enumerate(neurons):
        single, single_index = compute_labels(subject, texts, n, position, max_tokens=16, batch_size=7)
        assert torch.equal(index, single_index)
        assert torch.equal(matrix[:, i], single)
    splits = {"train": texts[:24], "val": texts[24:32], "test": texts[32:]}
    targets = build_targets(subject, splits, neurons, position, max_tokens=16)
    train = targets.train_labels.double()
    assert torch.allclose(targets.mean.double(), train.mean(0), atol=1e-6)
    assert torch.allclose(targets.std.double(), train.std(0, correction=0), atol=1e-6)
    z = targets.standardise(targets.train_labels).double()
    assert torch.allclose(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(z.std(0, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert targets.layer == 2 and targets.k == 3
    assert [s["std"] for s in targets.card["splits"]["train"]["per_neuron"]] == pytest.approx(
        targets.std.tolist(), rel=1e-5
    )


def test_frozen_vector_readout_reads_two_planted_neurons(tmp_path, corpus_file):  # noqa: F811
    model_dir = _planted_linear_neuron(tmp_path / "planted", index=6)
    with torch.no_grad():  # a second neuron of the same layer made linear the same way
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir)
        fc = model.transformer.h[-1].mlp.c_fc
        fc.weight[:, 9] *= -40.0
        fc.bias[9] = 30.0
        model.save_pretrained(model_dir)
    neurons = "neurons = [{layer = 3, index = 6}, {layer = 3, index = 9}]"
    toml = write_toml(tmp_path, model_dir, corpus_file, neurons, 'conditions = ["frozen"]')
    run = train_chain(load_experiment(toml), tmp_path / "out")[0]
    per = run.metrics["per_neuron"]
    assert [m["neuron"] for m in per] == [{"layer": 3, "index": 6}, {"layer": 3, "index": 9}]
    for m in per:
        assert m["neuron_before"]["std"] > 0.5 and m["test"]["skill"] > 0.99
        assert m["test_skill_ci"][0] > 0.98 and m["test_before"]["skill"] < 0.5
    assert run.extra["frozen_fit"]["ridge"]["test"]["skill"] > 0.99
    assert len(run.extra["frozen_fit"]["ridge"]["test"]["per_neuron"]) == 2


def test_every_condition_trains_a_vector_readout(tmp_path, tiny_dir, corpus_file):  # noqa: F811
    toml = write_toml(
        tmp_path, tiny_dir, corpus_file, NEURONS,
        'conditions = ["frozen", "unfrozen", "after_target"]\ntarget_modes = ["fixed", "live"]\n'
        "max_steps = 6",
    )  # fmt: skip
    out = tmp_path / "out"
    assert main(["train", str(toml), "--out", str(out), "-q"]) == 0
    target = json.loads((out / "target.json").read_text())
    assert "neuron" not in target and [n["layer"] for n in target["neurons"]] == [0, 2, 1]
    for name in ("frozen-fixed", "unfrozen-fixed", "unfrozen-live", "after_target-fixed"):
        ck = read_checkpoint(out / name / "seed-0")
        assert "neuron" not in ck.run.to_json() and len(ck.neurons) == 3
        assert ck.readout.weight.shape == (3, 32)
        assert set(ck.run.weights_sha256) == {"L0N3", "L2N9", "L1N5"}
        p = ck.predictions()
        assert len(p["labels"][0]) == 3 and p["neurons"] == ck.run.neuron_dicts
        recomputed = metrics_from_predictions(p, moves_neuron=name.startswith("unfrozen"))
        assert {k: ck.run.metrics[k] for k in recomputed} == json.loads(json.dumps(recomputed))
        again, trained, enc = reload_and_report(ck, p, "mean")
        torch.testing.assert_close(again, torch.tensor(p["predictions"]), atol=1e-4, rtol=1e-4)
        for i, (_, row) in enumerate(ck.views()):
            with torch.no_grad():
                torch.testing.assert_close(readout_values(trained, enc, row, "mean"), again[:, i])
        assert "per_neuron" in ck.run.curves[0] and len(ck.run.curves[0]["per_neuron"]) == 3
    after = read_checkpoint(out / "after_target-fixed/seed-0").run
    assert after.metrics["neuron_unchanged_maxdiff"] <= 1e-4  # layers 0..2 (the deepest) frozen
    assert after.extra["parameters"]["trainable"] < after.extra["parameters"]["total"]


@pytest.mark.parametrize(
    ("neuron", "message"),
    [
        ("layer = 1\nindex = 3\nneurons = [{layer = 0, index = 1}]", "not both"),
        ("neurons = [{layer = 0, index = 1}, {layer = 0, index = 1}]", "lists a neuron twice"),
        ("neurons = [{layer = 0, index = 1, sign = 1}]", "unknown key 'sign'"),
        ("neurons = [{layer = 0}]", "index"),
        ("neurons = [{layer = 9, index = 1}, {layer = 0, index = 1}]", "layer"),
        ("neurons = []", "neuron: neurons is empty"),
    ],
)
def test_bad_neuron_lists_are_one_line_errors(tmp_path, tiny_dir, corpus_file, capsys, neuron, message):  # noqa: F811
    toml = write_toml(tmp_path, tiny_dir, corpus_file, neuron, 'conditions = ["frozen"]')
    assert main(["train", str(toml), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_one_neuron_configuration_hashes_as_before_several_neurons_existed():
    """An unset neuron.neurons stays out of the hashed configuration, so one-neuron runs trained before
    it existed still resume (`train --resume`, `mechcheck run`) instead of being refused or retrained."""
    one = Experiment(neuron=NeuronConfig(layer=1, index=3))
    assert "neurons" not in training_config(one)["neuron"]
    several = Experiment(neuron=NeuronConfig(neurons=(NeuronRef(1, 3), NeuronRef(2, 9))))
    listed = training_config(several)["neuron"]["neurons"]
    assert list(listed) == [{"layer": 1, "index": 3}, {"layer": 2, "index": 9}]


def test_pipeline_runs_and_reports_several_neurons(tmp_path, tiny_dir):
    corpus = write_corpus(tmp_path / "corpus.txt")  # enough test texts for the battery's CIs
    toml = tmp_path / "multi.toml"
    toml.write_text(
        f'name = "multi"\n[subject]\nmodel = "{tiny_dir}"\n'
        f'[corpus]\nsource = "{corpus}"\nmax_tokens = 32\n'
        "[neuron]\nneurons = [{layer = 1, index = 3}, {layer = 2, index = 9}]\n"
        '[train]\nconditions = ["frozen", "after_target"]\nmax_steps = 4\nbatch_size = 8\neval_every = 2\n'
        "drift_texts = 4\neval_train_texts = 8\n"
        '[battery]\nprobes = ["cross_talk", "collapse"]\n'
        "n_null = 10\nn_null_secondary = 4\nn_bootstrap = 50\n"
    )
    out = tmp_path / "run"
    assert main(["run", str(toml), "--out", str(out), "-q"]) == 0
    selected = json.loads((out / "select/neurons.json").read_text())
    assert selected["fixed"] and len(selected["neurons"]) == 2
    results = json.loads((out / "results.json").read_text())
    keys = [c["key"] for c in results["conditions"]]
    assert keys == ["after_target-fixed", "frozen-fixed"]
    for condition in results["conditions"]:
        matrix = condition["results"]["cross_talk"]
        assert len(matrix["value"]) == 2 and all(len(row) == 2 for row in matrix["value"])
    text = (out / "report.md").read_text()
    for title in ("frozen (fixed), neuron L1N3", "after_target (fixed), neuron L2N9"):
        assert f"## Condition: {title}" in text and f"## Battery: {title}" in text
    assert text.count("## Cross-talk:") == 2
    first = text
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == first  # a view of the files alone
