"""The trainer with token-space readouts: the model learns to answer through its own LM head."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mechcheck.battery.base import BatteryOptions
from mechcheck.battery.runner import run_battery
from mechcheck.checkpoint import read_checkpoint
from mechcheck.errors import UserError
from mechcheck.experiment import CorpusConfig, Experiment, NeuronConfig, TrainConfig
from mechcheck.readout import Neuron, neuron_values, readout_values
from mechcheck.report.markdown import digit_table
from mechcheck.report.tables import fmt
from mechcheck.report.views import trained_conditions
from mechcheck.stats import digit_metrics
from mechcheck.subject import gather_position, load_subject
from mechcheck.targets import build_targets
from mechcheck.testing import random_texts, tiny_model, tiny_subject
from mechcheck.token_readout import DigitReadout
from mechcheck.train.bench import Bench
from mechcheck.train.cell import build_task
from mechcheck.train.conditions import CONDITIONS
from mechcheck.train.loop import Loop
from mechcheck.train.readouts import fit_token_readout
from mechcheck.train.record import metrics_from_predictions
from mechcheck.train.sources import FINAL_NORM, LOGITS, head_logits
from mechcheck.train_command import summary_line, train_chain

LAYER, INDEX = 1, 5
LM_HEAD_SCALE = 25.0
CFG = TrainConfig(readout="digit", lr=1e-2, warmup_steps=1, eval_train_texts=16, batch_size=8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench() -> Bench:
    subject = tiny_subject("llama", seed=0)
    with torch.no_grad():  # a random head at init std 0.02 gives near-uniform logits; make them matter
        subject.model.lm_head.weight.mul_(LM_HEAD_SCALE)
    texts = random_texts(80, seed=0, min_words=3, max_words=12)
    splits = {"train": texts[:56], "val": texts[56:68], "test": texts[68:]}
    targets = build_targets(subject, splits, Neuron(LAYER, INDEX), "last", 32)
    prompt = fit_token_readout("digit", subject, targets)
    return Bench(subject, targets, batch_size=8, drift_texts=4, prompt=prompt, layer=targets.layer)


def experiment(corpus_file: Path, conditions=("after_target",), **train) -> Experiment:
    settings = dict(
        readout="digit", conditions=conditions, epochs=3, eval_every=6, patience=10, lr=3e-3,
        warmup_steps=2, drift_texts=4, eval_train_texts=16, batch_size=8,
    )  # fmt: skip
    return Experiment(
        corpus=CorpusConfig(source=str(corpus_file), max_texts=None, max_tokens=32),
        neuron=NeuronConfig(layer=LAYER, index=INDEX, position="last"),
        train=TrainConfig(**(settings | train)),
    )


def _mean_loss(setup, bench: Bench, split: str) -> float:
    """Cross-entropy of the readout on `split`, labels from the RAW texts."""
    labels = bench.targets.labels(split)
    losses = []
    with torch.no_grad():
        for i, chunk in enumerate(bench.chunks[split]):
            x, _ = setup.source.forward(split, i, grad=False)
            losses.append(float(setup.readout.loss(x, labels[chunk.rows])) * len(chunk.rows))
    return sum(losses) / len(labels)


def test_model_reads_prompted_texts_labels_stay_on_raw_texts(bench: Bench):
    subject, t = bench.subject, bench.targets
    assert bench.texts["train"][0] == DigitReadout.default_prompt.format(text=t.train_texts[0])
    chunk = bench.chunks["train"][0]
    raw = [t.train_texts[i] for i in chunk.ids.tolist()]
    on_raw = neuron_values(subject, subject.encode(raw, max_length=32), t.neuron, "last")
    prompted = subject.encode([bench.texts["train"][i] for i in chunk.ids.tolist()])
    on_prompted = neuron_values(subject, prompted, t.neuron, "last")
    assert torch.allclose(t.train_labels[chunk.rows], on_raw, atol=1e-6)
    assert not torch.allclose(t.train_labels[chunk.rows], on_prompted, atol=1e-2)
    # the chunk reads the prompt's last token (the answer position), never cut off
    last = chunk.enc["input_ids"][torch.arange(len(raw)), chunk.enc["attention_mask"].sum(1) - 1]
    assert set(last.tolist()) == {subject.tokenizer.convert_tokens_to_ids(":")}


@pytest.mark.parametrize("name", ["after_target", "unfrozen"])
def test_digit_training_lowers_cross_entropy_and_changes_only_allowed_weights(bench: Bench, name: str):
    model = bench.subject.model
    setup = build_task(bench, CONDITIONS.get(name), "fixed", 0, CFG)
    assert isinstance(setup.readout, DigitReadout) and not list(setup.readout.parameters())
    assert set(setup.task.named()) == {f"model.{n}" for n in setup.trainable}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ce_train, ce_val = _mean_loss(setup, bench, "train"), _mean_loss(setup, bench, "val")
    loop = Loop(setup.task, CFG, 0, None, "")
    for _ in range(14):  # two epochs of 7 batches
        loop.update()
    assert _mean_loss(setup, bench, "train") < 0.6 * ce_train
    assert _mean_loss(setup, bench, "val") < ce_val
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    if name == "after_target":
        keep = tuple(f"model.layers.{i}." for i in range(LAYER + 1, 4)) + ("model.norm.",)
        assert changed == {n for n in before if n.startswith(keep)}  # the LM head stays frozen
    else:
        assert "lm_head.weight" in changed and "model.embed_tokens.weight" in changed
    bench.restore()


def test_digit_metrics():
    m = digit_metrics([0.2, 1.1, 1.9, 3.0], [0, 1, 2, 2], [0, 1, 2, 3])
    assert m["spearman"] == pytest.approx(1.0) and m["argmax_accuracy"] == 0.75
    assert m["mae"] == pytest.approx((0.2 + 0.1 + 0.1 + 0.0) / 4) and m["within_one"] == 1.0


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A local tiny model (the battery reloads the base model from run.json's base_model)."""
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    model, tok = tiny_model("llama", seed=2)
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_run_writes_comparable_metrics_and_round_trips(tmp_path, corpus_file, tiny_dir):
    exp = experiment(corpus_file)
    exp = replace(exp, subject=replace(exp.subject, model=str(tiny_dir)))
    subject = load_subject(str(tiny_dir))
    out = tmp_path / "run" / "train"
    [record] = train_chain(exp, out, subject=subject, cache_dir=tmp_path / "cache")
    run = record.to_json()  # as written
    folder = out / "after_target-fixed" / "seed-0"
    ck = read_checkpoint(folder)
    assert isinstance(ck.readout, DigitReadout)
    assert run["readout"]["kind"] == "digit" and len(run["readout"]["edges"]) == 9
    preds = json.loads((folder / "predictions.json").read_text())
    # every metric is recomputable from predictions.json; skill in neuron units and in digit space
    assert json.loads(json.dumps(metrics_from_predictions(preds, False))) == json.loads(
        json.dumps({k: run["metrics"][k] for k in metrics_from_predictions(preds, False)})
    )
    m, curves = run["metrics"], run["curves"]
    # early stopping and the kept state follow the training objective: val cross-entropy
    best = min(curves, key=lambda row: row["val_ce"])
    assert m["best_step"] == best["step"] > 0 and best["val_ce"] < 0.6 * curves[0]["val_ce"]
    assert {"spearman", "mae", "argmax_accuracy"} <= set(m["digit"])
    assert m["digit"]["n"] == len(preds["texts"])
    assert {"skill", "mse", "r"} <= set(m["test"])  # in the neuron's units, like the linear head's
    assert "digit Spearman" in summary_line(record) and "test MSE" in summary_line(record)
    assert preds["labels_digit"] == ck.readout.classes(torch.tensor(preds["labels"])).tolist()
    # the report shows the answer in class space, before -> after, as run.json's metrics have it
    [view] = trained_conditions(out.parent)
    rows = [line for line in digit_table(view).splitlines() if line.startswith("| 0 |")]
    before, after = m["digit_before"], m["digit"]
    cells = [f"{fmt(before[k])} → {fmt(after[k])}" for k in ("spearman", "argmax_accuracy")]
    within, mae = (f"{fmt(before[k])} → {fmt(after[k])}" for k in ("within_one", "mae"))
    assert rows == [
        f"| 0 | {after['n']} | {' | '.join(cells)} | {fmt(after['chance_accuracy'])} | {within} | {mae} |"
    ]
    # the checkpoint rebuilds the same predictions through the battery's path (prompted text, logits)
    trained = ck.load_subject(subject)
    enc = trained.encode([ck.readout.format_text(t) for t in preds["texts"]], max_length=run["max_tokens"])
    digits = readout_values(trained, enc, ck.readout, "last")
    assert np.allclose(digits.numpy(), preds["predictions_digit"], atol=1e-4)
    x = trained.run(enc, reads=[ck.readout.site])[ck.readout.site]
    in_units = ck.readout.in_units(x[torch.arange(len(enc["input_ids"])), enc["attention_mask"].sum(1) - 1])
    assert np.allclose(in_units.numpy(), preds["predictions"], atol=1e-4)
    # the battery runs unchanged on it (the report is the expected value over the answer classes)
    options = BatteryOptions(n_null=10, n_null_secondary=2, n_bootstrap=100, batch_size=8, min_labels=5)
    results = run_battery([folder], options=options)
    assert set(results["verdicts"]) == {"H1", "H2_in", "H2_out", "H3"}
    ran = {"informative", "neuron", "in_bypass", "in_total", "remainder", "collapse"}
    assert ran <= set(results["probes"])
    # the report is read after the prompt, not at the label position: the direct write has no path
    assert "out_direct" not in results["probes"]
    assert "not read at the label position" in results["skipped"]["out_direct"]
    # the report the battery scores is the prompted checkpoint's expected value in neuron units
    report_r2 = results["probes"]["informative"]["metrics"]["report.r2"]["value"]
    r = np.corrcoef(preds["labels"], preds["predictions"])[0, 1]
    assert results["eval"]["n_texts"] == len(preds["texts"])
    assert report_r2 == pytest.approx(r**2, abs=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(conditions=("frozen", "after_target")), "nothing would train"),
        (dict(target_modes=("live",), conditions=("unfrozen",)), "fixed labels only"),
    ],
)
def test_token_readouts_refuse_what_they_cannot_train(tmp_path, corpus_file, change, message):
    exp = experiment(corpus_file)
    exp = replace(exp, train=replace(exp.train, **change))
    with pytest.raises(UserError, match=message):
        train_chain(exp, tmp_path / "out", subject=tiny_subject("llama"), cache_dir=tmp_path)


def test_position_all_and_long_texts_are_refused(tmp_path, corpus_file):
    exp = experiment(corpus_file)
    with pytest.raises(UserError, match="answers once per text"):
        train_chain(replace(exp, neuron=replace(exp.neuron, position="all")), tmp_path / "a")
    short = replace(exp, corpus=replace(exp.corpus, max_tokens=8))
    with pytest.raises(UserError, match="would cut its question off"):
        train_chain(short, tmp_path / "b", subject=tiny_subject("llama"), cache_dir=tmp_path)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_head_logits_at_the_report_rows_equal_the_logits_site(family: str):
    subject = tiny_subject(family, seed=1)
    enc = subject.encode(random_texts(5, seed=4))
    got = subject.run(enc, reads=[LOGITS, FINAL_NORM])
    rows = gather_position(got[FINAL_NORM], enc["attention_mask"], "last")
    expected = gather_position(got[LOGITS], enc["attention_mask"], "last")
    assert torch.allclose(head_logits(subject, rows), expected, atol=1e-5)
