"""The original study's settings as options (issue 12): its target kind, its texts and row split, its
training settings (constant LR, raw labels, a head frozen at random init reading the pre-norm residual)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mechcheck.checkpoint import read_checkpoint, verify_base
from mechcheck.cli import main
from mechcheck.corpus import load_corpus, make_split, split_corpus, split_rows
from mechcheck.errors import UserError
from mechcheck.experiment import load_experiment, variants
from mechcheck.readout import MLP_OUT_COORDINATE, Neuron, neuron_values, readout_values
from mechcheck.report.tables import fmt
from mechcheck.scan import scan
from mechcheck.study_texts import SUFFIXES, TEMPLATES, study_rows
from mechcheck.subject import Site
from mechcheck.targets import compute_labels
from mechcheck.testing import random_texts, tiny_subject
from mechcheck.train.loop import lr_factor
from mechcheck.train_command import train_chain

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the templated texts and the row split ------------------------------------------------
def test_generator_has_the_studys_structure_and_repeats() -> None:
    rows = study_rows(500, seed=42)
    assert len(TEMPLATES) == 20 and len(SUFFIXES) == 15 and len(rows) == 500
    assert all(text == TEMPLATES[t] + SUFFIXES[s] for text, t, s in rows)
    distinct = {text for text, _, _ in rows}
    assert len(distinct) == 245  # the study's R-after30 set: 500 draws of 300 texts gave 245 distinct
    assert len({TEMPLATES[t] + SUFFIXES[s] for t in range(20) for s in range(15)}) == 300
    assert study_rows(500, seed=42) == rows and study_rows(500, seed=1) != rows
    corpus = load_corpus("study_templates", max_texts=500, seed=42)
    assert corpus.texts == tuple(text for text, _, _ in rows)  # repeats kept: no deduplication
    assert corpus.groups == tuple(f"template:{t}" for _, t, _ in rows)
    assert corpus.card["distinct_texts"] == 245 and corpus.card["rows"] == 500
    assert "flawed" in corpus.card["sources"][0]


def test_row_split_has_the_studys_sizes_and_leaks_duplicates() -> None:
    corpus = load_corpus("study_templates", max_texts=500, seed=42)
    splits = split_rows(corpus, (0.7, 0.15, 0.15), seed=42)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (350, 75, 75)
    assert sorted(splits.train + splits.val + splits.test) == sorted(corpus.texts)
    train = set(splits.train)
    leaked = {name: sum(t in train for t in getattr(splits, name)) for name in ("val", "test")}
    assert leaked == splits.card["split"]["also_in_train"] and min(leaked.values()) > 25  # as the study had
    assert make_split(corpus, (0.7, 0.15, 0.15), 42, "row").test == splits.test
    # by group (template) nothing leaks: every repeat and near duplicate stays in one split
    grouped = split_corpus(corpus, (0.7, 0.15, 0.15), seed=42)
    assert grouped.card["split"]["also_in_train"] == {"val": 0, "test": 0}
    templates = [set(grouped.groups[name]) for name in ("train", "val", "test")]
    assert sum(len(t) for t in templates) == len(set().union(*templates)) == 20
    with pytest.raises(UserError, match="split_by"):
        make_split(corpus, (0.7, 0.15, 0.15), 42, "article")


# --- the target kind: a centred coordinate of the MLP output -----------------------------
def _mlp_output_by_hand(subject, enc, layer: int) -> torch.Tensor:
    """The MLP's output at `layer`, recomputed from its weights and its input (hooked)."""
    mlp = subject.anatomy.module(subject.anatomy.mlp_path(layer))
    got = {}
    handle = mlp.register_forward_hook(lambda m, args, out: got.setdefault("x", args[0].detach()))
    with torch.no_grad():
        subject.model(**enc)
    handle.remove()
    x = got["x"]
    if subject.model.config.model_type == "gpt2":
        h = torch.nn.functional.gelu(x @ mlp.c_fc.weight + mlp.c_fc.bias, approximate="tanh")
        return h @ mlp.c_proj.weight + mlp.c_proj.bias
    act = torch.nn.functional.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
    return act @ mlp.down_proj.weight.T


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mlp_out_coordinate_is_the_centred_mlp_output(family) -> None:
    subject = tiny_subject(family, seed=2)
    texts = random_texts(12, seed=3)
    target = Neuron(2, 5, MLP_OUT_COORDINATE)
    assert target.site == Site("mlp_out", 2) and target.as_dict() == {
        "layer": 2,
        "index": 5,
        "kind": MLP_OUT_COORDINATE,
    }
    labels, _ = compute_labels(subject, texts, target, "last", max_tokens=32, batch_size=5)
    expected = []
    for text in texts:
        enc = subject.encode([text], max_length=32)
        out = _mlp_output_by_hand(subject, enc, 2)[0, -1]
        expected.append(out[5] - out.mean())  # centred over d_model, as TransformerLens's hook_mlp_out
    torch.testing.assert_close(labels, torch.stack(expected), atol=1e-5, rtol=1e-4)
    enc = subject.encode(texts[:3], max_length=32)
    assert not torch.allclose(
        neuron_values(subject, enc, target, "last"), neuron_values(subject, enc, Neuron(2, 5), "last")
    )
    with pytest.raises(UserError, match="coordinate 32 is out of range"):
        Neuron(2, subject.d_model, MLP_OUT_COORDINATE).check(subject)
    result = scan(subject, texts, [1, 2], "last", kind=MLP_OUT_COORDINATE)
    assert result.layers[2].mean.shape == (subject.d_model,)
    torch.testing.assert_close(
        result.layers[2].mean[5].float(), labels.double().mean().float(), atol=1e-5, rtol=1e-4
    )


# --- the training settings, end to end on a tiny model -----------------------------------
STUDY = """
seed = 42
[subject]
model = "{model}"
[corpus]
source = "study_templates"
max_texts = 120
split = [0.7, 0.15, 0.15]
split_by = "row"
[neuron]
layers = [0, 1, 2]
criterion = "study"
target = "mlp_out_coordinate"
scan_texts = 50
[train]
conditions = ["frozen", "unfrozen"]
epochs = 1
max_steps = 4
batch_size = 16
lr = 1e-4
readout_lr = 1e-4
warmup_steps = 0
lr_schedule = "constant"
standardise = false
readout_site = "resid_final"
eval_every = 2
patience = 5
drift_texts = 4
eval_train_texts = 16
seeds = [42]
[[train.override]]
condition = "unfrozen"
readout_frozen = true
"""


def test_study_settings_train_and_are_recorded(tmp_path, tiny_dir, monkeypatch) -> None:
    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))
    file = tmp_path / "study.toml"
    file.write_text(STUDY.format(model=tiny_dir))
    runs = {r.condition: r.to_json() for r in train_chain(load_experiment(file), tmp_path / "out")}
    unfrozen = runs["unfrozen"]
    assert unfrozen["neuron"]["kind"] == MLP_OUT_COORDINATE and unfrozen["neuron"]["layer"] in (0, 1, 2)
    assert unfrozen["neuron_selection"]["chosen"]["kind"] == MLP_OUT_COORDINATE
    assert unfrozen["readout"]["frozen"] is True
    assert unfrozen["readout"]["site"] == {"kind": "resid_post", "layer": 3}
    assert unfrozen["split"]["by"] == "row" and unfrozen["split"]["also_in_train"]["test"] > 0
    assert {row["lr"]["model"] for row in unfrozen["curves"] if row["step"] > 0} == {1e-4}  # constant
    ckpt = read_checkpoint(tmp_path / "out/unfrozen-fixed/seed-42")
    assert ckpt.neuron.kind == MLP_OUT_COORDINATE and ckpt.readout.site == Site("resid_post", 3)
    weight = ckpt.readout.weight.detach()
    init = torch.randn(1, weight.shape[1], generator=torch.Generator().manual_seed(42)) * 0.02
    torch.testing.assert_close(weight, init)  # frozen at its seeded random init, raw units: nothing folded
    predictions = ckpt.predictions()
    trained = ckpt.load_subject()
    enc = trained.encode(predictions["texts"], max_length=128)
    with torch.no_grad():
        again = readout_values(trained, enc, ckpt.readout, "last")
    torch.testing.assert_close(again, torch.tensor(predictions["predictions"]), atol=1e-4, rtol=1e-4)
    with pytest.raises(UserError, match="the battery tests neurons"):
        verify_base(ckpt, ckpt.load_base())
    frozen = runs["frozen"]
    assert (
        frozen["frozen_fit"]["chosen"] in ("ridge", "sgd") and frozen["metrics"]["test"]["skill"] is not None
    )


def test_constant_schedule_keeps_the_rate_after_warm_up() -> None:
    assert [lr_factor(s, 2, 10, "constant") for s in (0, 1, 2, 9, 20)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert lr_factor(9, 2, 10, "cosine") < 0.1


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('target = "mlp_out_coordinate"', 'target = "coordinate"', "neuron.target 'coordinate'"),
        ('split_by = "row"', 'split_by = "article"', "corpus.split_by 'article'"),
        ('split_by = "row"', 'split_by = "row"\nsplit_seed = "both"', "corpus.split_seed 'both'"),
        ('lr_schedule = "constant"', 'lr_schedule = "linear"', "train.lr_schedule 'linear'"),
        ('readout_site = "resid_final"', 'readout_site = "resid_mid"', "train.readout_site 'resid_mid'"),
        ("patience = 5", "patience = 5\ndrift_cap = 0.0", "train.drift_cap must be above 0"),
        ("patience = 5", "patience = 5\nlr_grid = [1e-4, 1e-4]", "train.lr_grid must list distinct"),
    ],
)
def test_bad_study_options_are_one_line_errors(tmp_path, tiny_dir, capsys, old, new, message) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(STUDY.format(model=tiny_dir).replace(old, new, 1))
    assert main(["train", str(file), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_study_experiment_files_hold_the_studys_settings() -> None:
    root = Path(__file__).parent.parent / "experiments"
    e = load_experiment(root / "study_as_it_ran.toml")
    assert (e.corpus.source, e.corpus.split_by, e.neuron.target) == (
        "study_templates",
        "row",
        MLP_OUT_COORDINATE,
    )
    assert (e.train.lr, e.train.weight_decay, e.train.batch_size, e.train.grad_clip) == (1e-4, 0.01, 16, 1.0)
    assert e.train.lr_schedule == "constant" and not e.train.standardise
    epochs = {o.condition: o.epochs for o in e.train.override if o.epochs}
    assert epochs == {"frozen": 10, "unfrozen": 10, "after_target": 30}
    assert {o.condition for o in e.train.override if o.readout_frozen} == {"unfrozen", "after_target"}
    rows = Counter(load_corpus("study_templates", max_texts=e.corpus.max_texts, seed=e.seed).texts)
    assert sum(rows.values()) == 500 and len(rows) == 245
    runs = variants(e, "study_as_it_ran.toml")
    assert runs["true_neuron"].neuron.target == "neuron" and runs["as_it_ran"].train == e.train
    assert (runs["natural_texts"].corpus.source, runs["natural_texts"].corpus.split_by) == (
        "default",
        "group",
    )
    unfrozen = runs["trained_readout"].train.for_condition("unfrozen")
    assert not unfrozen.readout_frozen and unfrozen.epochs == 10
    corrected = runs["corrected"]
    assert corrected.neuron.target == "neuron" and corrected.corpus.split_by == "group"
    assert not corrected.train.for_condition("unfrozen").readout_frozen
    # the variants asked from true_neuron as the base pin its neuron, so that one setting changes
    pinned = {"neuron_natural_texts", "neuron_trained_readout", "corrected"}
    assert {(runs[n].neuron.target, runs[n].neuron.layer, runs[n].neuron.index) for n in pinned} == {
        ("neuron", 19, 824)
    }
    assert runs["neuron_natural_texts"].corpus == runs["natural_texts"].corpus
    # they train unfrozen only, with the unfrozen settings of the variant each is asked beside
    unfrozen_only = {"neuron_natural_texts": "true_neuron", "neuron_trained_readout": "trained_readout"}
    for name, like in unfrozen_only.items():
        assert runs[name].train.conditions == ("unfrozen",)
        assert runs[name].train.for_condition("unfrozen") == replace(
            runs[like].train.for_condition("unfrozen"), conditions=("unfrozen",)
        )
    assert runs["neuron_trained_readout"].corpus == runs["true_neuron"].corpus
    # their frozen condition is trained by the variant with the same texts and neuron
    assert runs["corrected"].corpus == runs["neuron_natural_texts"].corpus
    frozen = runs["true_neuron"].train.for_condition("frozen")
    assert runs["corrected"].train.for_condition("frozen") == frozen


def test_a_coordinate_target_runs_through_the_pipeline_without_the_battery(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))
    file = tmp_path / "study.toml"
    file.write_text(
        STUDY.format(model=tiny_dir).replace('conditions = ["frozen", "unfrozen"]', 'conditions = ["frozen"]')
    )
    out = tmp_path / "run"
    assert main(["run", str(file), "--out", str(out), "-q"]) == 0
    assert (out / "report.md").is_file() and not (out / "test").exists()  # the battery tests neurons only
    run = json.loads((out / "train/frozen-fixed/seed-42/run.json").read_text())
    assert (
        run["neuron"]["kind"] == MLP_OUT_COORDINATE
        and run["neuron_selection"]["target"] == MLP_OUT_COORDINATE
    )
    # the report shows the training, read from the checkpoint's own files, and says there is no battery
    report = (out / "report.md").read_text()
    assert "## No battery" in report and "## Condition: frozen (fixed)" in report
    assert f"coordinate {run['neuron']['index']} of layer {run['neuron']['layer']}'s MLP output" in report
    saved = json.loads((out / "train/frozen-fixed/seed-42/predictions.json").read_text())
    labels, predictions = np.asarray(saved["labels"]), np.asarray(saved["predictions"])
    skill = 1 - np.mean((predictions - labels) ** 2) / np.var(labels)
    assert f"| 42 | fixed labels | {len(labels)} |" in report and f"| {fmt(float(skill))} [" in report
    std = fmt(float(np.std(labels)))
    assert f"| {std} | " in report  # the target's std before training, on the test split
