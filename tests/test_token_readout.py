"""Token-space readouts (digit, on_off) on the tiny word-level tokenizer and a tiny model."""

from __future__ import annotations

import pytest
import torch

from mechcheck.checkpoint import read_checkpoint, write_checkpoint
from mechcheck.errors import UserError
from mechcheck.readout import READOUTS, readout_values
from mechcheck.subject import Site, last_index
from mechcheck.testing import random_texts, tiny_subject, tiny_tokenizer
from mechcheck.token_readout import DigitReadout, OnOffReadout, answer_token_ids


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _labels(n: int = 1000) -> torch.Tensor:
    return torch.linspace(-5.0, 4.99, n)  # uniform: deciles are exact


def test_registered_beside_linear():
    assert {"linear", "digit", "on_off"} <= set(READOUTS.names())
    assert READOUTS.get("digit").site == Site("logits")


def test_answer_ids_are_the_digit_tokens_in_context(tok):
    ids = answer_token_ids(tok, DigitReadout.default_prompt, DigitReadout.default_answers)
    assert ids == tok.convert_tokens_to_ids([str(d) for d in range(10)])
    with pytest.raises(UserError, match="not a single token"):
        answer_token_ids(tok, DigitReadout.default_prompt, ["7 8"])


def test_fit_gives_deciles_and_class_means(tok):
    labels = _labels()
    readout = DigitReadout.fit(tok, labels)
    assert torch.allclose(readout.edges, torch.arange(-4.0, 5.0), atol=0.02)
    classes = readout.classes(labels)
    assert torch.bincount(classes, minlength=10).tolist() == [100] * 10
    assert torch.allclose(readout.values, torch.arange(10) - 4.505, atol=0.01)


def test_predictions_from_logits(tok):
    readout = DigitReadout.fit(tok, _labels())
    logits = torch.zeros(3, len(tok))
    logits[0, readout.answer_ids[3]] = 50.0  # certain: class 3
    logits[1, readout.answer_ids[[2, 6]]] = 50.0  # half 2, half 6
    logits[2, 5] = 100.0  # a non-answer token: ignored, answers uniform
    assert torch.allclose(readout(logits), torch.tensor([3.0, 4.0, 4.5]), atol=1e-4)
    assert readout.argmax(logits)[:2].tolist() == [3, 2]
    assert torch.allclose(readout.in_units(logits)[0], readout.values[3], atol=1e-4)
    assert torch.allclose(readout.in_units(logits)[2], readout.values.mean(), atol=1e-4)


def test_loss_is_cross_entropy_on_the_class_token(tok):
    readout = DigitReadout.fit(tok, _labels())
    labels = torch.tensor([-4.5, 4.5])  # classes 0 and 9
    good, bad = torch.zeros(2, len(tok)), torch.zeros(2, len(tok))
    good[0, readout.answer_ids[0]] = good[1, readout.answer_ids[9]] = 10.0
    bad[0, readout.answer_ids[9]] = bad[1, readout.answer_ids[0]] = 10.0
    assert readout.loss(good, labels) < 0.01 < 10.0 < readout.loss(bad, labels)
    uniform = readout.loss(torch.zeros(2, len(tok)), labels)
    assert float(uniform) == pytest.approx(float(torch.log(torch.tensor(float(len(tok))))), rel=1e-5)


def test_on_off_threshold(tok):
    labels = _labels()
    median = OnOffReadout.fit(tok, labels, answers=(" off", " on"))
    assert median.edges.tolist() == pytest.approx([0.0], abs=0.01)
    fixed = OnOffReadout.fit(tok, labels, answers=(" off", " on"), threshold=2.0)
    assert fixed.classes(torch.tensor([1.99, 2.0, 3.0])).tolist() == [0, 1, 1]
    assert fixed.values[1] == pytest.approx(float(labels[labels >= 2].mean()), abs=1e-4)


def test_checkpoint_round_trip(tmp_path, tok):
    readout = DigitReadout.fit(tok, _labels())
    run = {"base_model": "tiny", "neuron": {"layer": 1, "index": 3}, "position": "last"}
    run |= {"condition": "unfrozen", "target_mode": "fixed", "readout": readout.meta()}
    ckpt = read_checkpoint(write_checkpoint(tmp_path / "ckpt", run, readout))
    assert isinstance(ckpt.readout, DigitReadout)
    assert ckpt.run.readout["prompt"] == readout.prompt
    for name, value in readout.tensors().items():
        assert torch.equal(ckpt.readout.tensors()[name], value)


def test_report_reads_the_answer_position_batched_equals_single(tok):
    subject = tiny_subject("llama")
    readout = DigitReadout.fit(subject.tokenizer, _labels())
    texts = [readout.format_text(t) for t in random_texts(5, seed=3)]
    enc = subject.encode(texts)
    batched = readout_values(subject, enc, readout, "last")
    # the last real token of every prompted text is the ":" right before the answer
    last = enc["input_ids"][torch.arange(5), last_index(enc["attention_mask"])]
    assert set(last.tolist()) == {subject.tokenizer.convert_tokens_to_ids(":")}
    singles = torch.cat([readout_values(subject, subject.encode([t]), readout, "last") for t in texts])
    assert torch.allclose(batched, singles, atol=1e-5)
    assert ((batched >= 0) & (batched <= 9)).all() and batched.std() > 0
