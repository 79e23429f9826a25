"""`mechcheck train` end to end on tiny local models: checkpoints, provenance, planted answers, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from run_kit import write_corpus

from mechcheck.checkpoint import read_checkpoint, verify_base
from mechcheck.cli import main
from mechcheck.errors import UserError
from mechcheck.experiment import load_experiment
from mechcheck.readout import readout_values
from mechcheck.stats import regression_metrics
from mechcheck.testing import tiny_model
from mechcheck.train.record import metrics_from_predictions
from mechcheck.train_command import train_chain

TRAIN = """
epochs = 2
eval_every = 5
batch_size = 8
lr = 3e-3
readout_lr = 1e-2
warmup_steps = 2
drift_texts = 4
eval_train_texts = 16
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "texts.txt", 100, seed=7)


def write_toml(folder: Path, model: Path, corpus: Path, neuron: str, train: str) -> Path:
    file = folder / "experiment.toml"
    given = {line.split("=")[0].strip() for line in train.splitlines() if "=" in line}
    defaults = "\n".join(line for line in TRAIN.splitlines() if line.split("=")[0].strip() not in given)
    file.write_text(
        f'[subject]\nmodel = "{model}"\n[corpus]\nsource = "{corpus}"\nmax_texts = 1000\nmax_tokens = 32\n'
        f"[neuron]\n{neuron}\n[train]\n{defaults}\n{train}\n"
    )
    return file


def reload_and_report(ckpt, predictions: dict, position: str):
    """Reload the checkpoint's trained model from its files (base weights verified) and recompute
    the report on its saved test texts: (reports, trained subject, encoding)."""
    base = ckpt.load_base()
    verify_base(ckpt, base)
    trained = ckpt.load_subject(base)
    enc = trained.encode(predictions["texts"], max_length=32)
    with torch.no_grad():
        return readout_values(trained, enc, ckpt.readout, position), trained, enc


def test_checkpoints_carry_provenance_and_recomputable_metrics(tmp_path, tiny_dir, corpus_file):
    toml = write_toml(
        tmp_path, tiny_dir, corpus_file, 'layer = 0\nindex = 3\nposition = "mean"',
        'conditions = ["frozen", "unfrozen", "after_target"]\ntarget_modes = ["fixed", "live"]',
    )  # fmt: skip
    out = tmp_path / "out"
    assert main(["train", str(toml), "--out", str(out), "-q"]) == 0
    folders = sorted(p.parent.parent.name for p in out.glob("*/seed-0/run.json"))
    assert folders == ["after_target-fixed", "frozen-fixed", "unfrozen-fixed", "unfrozen-live"]
    target = json.loads((out / "target.json").read_text())
    assert (
        target["neuron"] == {"layer": 0, "index": 3}
        and target["seeds"]["0"]["corpus"]["card"]["split"]["texts"]["train"] > 0
    )
    for name in folders:
        ckpt = read_checkpoint(out / name / "seed-0")
        run, predictions = ckpt.run.to_json(), ckpt.predictions()  # as written
        assert (ckpt.model_dir is None) == name.startswith("frozen")
        for key in (
            "seed",
            "experiment",
            "corpus",
            "split",
            "target",
            "weights_sha256",
            "versions",
            "curves",
            "timing",
        ):
            assert key in run, key
        assert set(run["weights_sha256"]) == {"W_in.gate", "W_in.up", "W_out"}
        assert set(run["versions"]) >= {"python", "torch", "transformers", "nnsight", "mechcheck"}
        assert run["curves"][0]["step"] == 0 and run["readout"] == {
            "kind": "linear",
            "frozen": False,
            "init_std": 0.02,
        }
        # every reported test number is recomputed from predictions.json alone, exactly
        recomputed = metrics_from_predictions(predictions, moves_neuron=name.startswith("unfrozen"))
        assert {k: run["metrics"][k] for k in recomputed} == recomputed
        labels = predictions[predictions["target"]]
        assert run["metrics"]["test"]["mse"] == regression_metrics(predictions["predictions"], labels)["mse"]
        again, _, _ = reload_and_report(ckpt, predictions, "last")
        torch.testing.assert_close(again, torch.tensor(predictions["predictions"]), atol=1e-4, rtol=1e-4)
    frozen = json.loads((out / "frozen-fixed/seed-0/run.json").read_text())
    fit = frozen["frozen_fit"]
    assert set(fit) >= {"ridge", "sgd", "chosen", "features"} and fit["chosen"] in ("ridge", "sgd")
    assert fit[fit["chosen"]]["val"]["mse"] <= min(fit["ridge"]["val"]["mse"], fit["sgd"]["val"]["mse"])
    assert frozen["metrics"]["kl_after"] == 0.0 and "drift_note" in frozen["metrics"]
    assert all(row["kl"] == 0.0 for row in frozen["curves"])
    for name in ("frozen-fixed", "after_target-fixed"):
        metrics = json.loads((out / name / "seed-0/run.json").read_text())["metrics"]
        assert metrics["neuron_unchanged_maxdiff"] <= 1e-4
    after = json.loads((out / "after_target-fixed/seed-0/run.json").read_text())
    assert after["metrics"]["kl_after"] > 0 and after["curves"][0]["kl"] == 0.0
    fixed = json.loads((out / "unfrozen-fixed/seed-0/run.json").read_text())
    assert (
        fixed["metrics"]["best_step"] > 0 and fixed["metrics"]["kl_after"] > 0
    )  # the saved model did change
    live = json.loads((out / "unfrozen-live/seed-0/run.json").read_text())
    assert live["metrics"]["target"] == "live_labels" and "stale_labels" in live["metrics"]


def _planted_linear_neuron(folder: Path, index: int = 6) -> Path:
    """A tiny GPT-2 whose last-layer neuron is an affine function of the final normed residual.

    Planted: the last block's attention and MLP write nothing (c_proj zeroed), so ln_f and the
    neuron's ln_2 normalise the same residual; a large bias keeps the neuron's GELU in its linear
    range. A linear readout on the final norm can therefore fit it exactly."""
    model, tok = tiny_model("gpt2", seed=3)
    block = model.transformer.h[-1]
    with torch.no_grad():
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            proj.weight.zero_()
            proj.bias.zero_()
        block.mlp.c_fc.weight[:, index] *= 40.0
        block.mlp.c_fc.bias[index] = 30.0
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_frozen_readout_finds_a_planted_linear_neuron(tmp_path, corpus_file):
    model_dir = _planted_linear_neuron(tmp_path / "planted")
    toml = write_toml(tmp_path, model_dir, corpus_file, "layer = 3\nindex = 6", 'conditions = ["frozen"]')
    run = train_chain(load_experiment(toml), tmp_path / "out")[0]
    assert run.target["std"] > 0.5  # a neuron with real spread
    assert run.metrics["test"]["skill"] > 0.99
    assert run.extra["frozen_fit"]["ridge"]["test"]["skill"] > 0.99
    assert run.metrics["test_before"]["skill"] < 0.5  # the untrained readout does not


def test_fixed_labels_go_stale_when_unfrozen_moves_the_neuron(tmp_path, tiny_dir, corpus_file):
    neuron = 'layer = 0\nindex = 3\nposition = "mean"'
    toml = write_toml(
        tmp_path, tiny_dir, corpus_file, neuron, 'conditions = ["unfrozen"]\nlr = 3e-3\npatience = 9'
    )
    run = train_chain(load_experiment(toml), tmp_path / "out")[0]
    m = run.metrics
    assert m["best_step"] > 0  # the checkpoint is a trained model
    variance = m["neuron_before"]["std"] ** 2
    assert m["stale_labels"]["mse"] > 0.1 * variance  # the labels no longer describe the trained model
    assert m["test_vs_live"]["mse"] != m["test_vs_fixed"]["mse"]
    assert m["kl_after"] > 0 and m["lm_loss_after"] != m["lm_loss_before"]


def test_position_all_keeps_a_text_index_per_label(tmp_path, tiny_dir, corpus_file):
    toml = write_toml(
        tmp_path, tiny_dir, corpus_file, 'layer = 2\nindex = 9\nposition = "all"',
        'conditions = ["frozen", "after_target"]\nmax_steps = 6',
    )  # fmt: skip
    runs = train_chain(load_experiment(toml), tmp_path / "out")
    predictions = json.loads((tmp_path / "out/after_target-fixed/seed-0/predictions.json").read_text())
    index = predictions["text_index"]
    assert len(index) == len(predictions["labels"]) > len(predictions["texts"])
    assert index == sorted(index) and set(index) == set(range(len(predictions["texts"])))
    assert all(r.metrics["neuron_unchanged_maxdiff"] <= 1e-4 for r in runs)


def test_unset_neuron_is_selected_on_train_texts_and_recorded(tmp_path, tiny_dir, corpus_file):
    toml = write_toml(
        tmp_path, tiny_dir, corpus_file, 'layers = [1, 2]\ncriterion = "std"\nscan_texts = 40',
        'conditions = ["frozen"]\nmax_steps = 3',
    )  # fmt: skip
    run = train_chain(load_experiment(toml), tmp_path / "out")[0]
    selection = json.loads((tmp_path / "out/target.json").read_text())["selection"]
    assert selection["selected"] and selection["layers"] == [1, 2] and selection["scan_texts"] == 40
    chosen = selection["chosen"]
    assert run.neuron.as_dict() == {"layer": chosen["layer"], "index": chosen["index"]} and chosen[
        "layer"
    ] in (1, 2)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ('conditions = ["frozen", "sideways"]', "unknown condition 'sideways'"),
        ('conditions = ["frozen"]\ntarget_modes = ["live"]', "target mode 'live' applies to none"),
        ('target_modes = ["stale"]', "unknown target mode 'stale'"),
        ("learning_rate = 1e-3", "unknown key 'learning_rate'"),
        ('conditions = ["frozen"]\nreadout_frozen = true', "would train nothing"),
    ],
)
def test_bad_experiments_are_one_line_errors(tmp_path, tiny_dir, corpus_file, capsys, train, message):
    toml = write_toml(tmp_path, tiny_dir, corpus_file, "layer = 1\nindex = 3", train)
    assert main(["train", str(toml), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_existing_output_is_never_overwritten_silently(tmp_path, tiny_dir, corpus_file, capsys):
    toml = write_toml(
        tmp_path, tiny_dir, corpus_file, "layer = 1\nindex = 3", 'conditions = ["frozen"]\nmax_steps = 2'
    )
    out = tmp_path / "out"
    assert main(["train", str(toml), "--out", str(out), "-q"]) == 0
    first = (out / "frozen-fixed/seed-0/run.json").read_text()
    assert main(["train", str(toml), "--out", str(out), "-q"]) == 2
    assert "already holds results" in capsys.readouterr().err
    assert (out / "frozen-fixed/seed-0/run.json").read_text() == first
    assert main(["train", str(toml), "--out", str(out), "-q", "--resume"]) == 0  # finished: skipped
    assert (out / "frozen-fixed/seed-0/run.json").read_text() == first
    assert main(["train", str(toml), "--out", str(out), "-q", "--overwrite", "--seeds", "0,1"]) == 0
    assert (out / "frozen-fixed/seed-1/run.json").is_file()
    with pytest.raises(UserError, match="set both layer and index"):
        toml = write_toml(tmp_path, tiny_dir, corpus_file, "layer = 1", "")
        train_chain(load_experiment(toml), tmp_path / "other")


@pytest.mark.slow
def test_smollm2_after_target_checkpoint_round_trip(tmp_path, smollm2):
    """The real model: the trained copy saves (GGUF weights are float after loading) and reloads,
    the prefix up to the neuron is untouched, and the saved readout reproduces the predictions."""
    from mechcheck.corpus import load_corpus

    corpus = tmp_path / "wiki.txt"
    corpus.write_text("\n".join(load_corpus("default", max_texts=120, seed=0).texts) + "\n")
    toml = write_toml(
        tmp_path, Path("smollm2-135m"), corpus, "layer = 26\nindex = 799",
        'conditions = ["frozen", "after_target"]\nmax_steps = 4\neval_every = 2\nlr = 1e-4',
    )  # fmt: skip
    runs = train_chain(load_experiment(toml), tmp_path / "out", subject=smollm2)
    assert all(r.metrics["neuron_unchanged_maxdiff"] <= 1e-4 for r in runs)
    ckpt = read_checkpoint(tmp_path / "out/after_target-fixed/seed-0")
    verify_base(ckpt, smollm2)
    trained = ckpt.load_subject(smollm2)
    first = dict(trained.model.named_parameters())["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(first, dict(smollm2.model.named_parameters())["model.layers.0.mlp.up_proj.weight"])
    predictions = ckpt.predictions()
    enc = trained.encode(predictions["texts"][:8], max_length=32)
    with torch.no_grad():
        again = readout_values(trained, enc, ckpt.readout, "last")
    torch.testing.assert_close(again, torch.tensor(predictions["predictions"][:8]), atol=1e-3, rtol=1e-4)


def test_a_target_card_computed_again_matches_to_float_noise_and_no_further() -> None:
    from mechcheck.train.plan import same_card

    def card(mean: float) -> dict:
        return {"neuron": {"layer": 10, "index": 507}, "splits": {"test": {"mean": mean, "n": 73}}}

    assert same_card(card(-1.0140666686224216), card(-1.0140667191960595))  # the 8th digit: the same
    assert same_card(card(-0.3460923954844475), card(-0.3460940644145012))  # a median, seen moving 2e-6
    other = card(-1.0150666686224216)  # the 3rd digit: other labels
    base = card(-1.0140666686224216)
    assert not same_card(base, other)
    assert not same_card(base, {**base, "neuron": {"layer": 10, "index": 508}})
    assert not same_card(base, {**base, "splits": {"test": {"mean": -1.0140666686224216}}})  # a key fewer
    assert not same_card({"n": 73}, {"n": 74}) and not same_card({"x": "a"}, {"x": 1.0})
