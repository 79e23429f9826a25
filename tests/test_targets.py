"""Target sets: length-sorted chunks, labels from the original model, train-only standardisation."""

from __future__ import annotations

import pytest
import torch

from mechcheck.errors import UserError
from mechcheck.readout import Neuron, neuron_values
from mechcheck.targets import build_targets, compute_labels, label_stats, make_chunks, text_index
from mechcheck.testing import random_texts, tiny_subject

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def subject():
    return tiny_subject("llama", seed=3)


@pytest.fixture(scope="module")
def texts():
    return random_texts(50, seed=1, min_words=2, max_words=15)


def test_chunks_cover_every_text_once_sorted_by_length(subject, texts):
    chunks = make_chunks(subject, texts, 8, 64, "last")
    ids = torch.cat([c.ids for c in chunks])
    assert sorted(ids.tolist()) == list(range(len(texts)))
    lengths = [int(c.enc["attention_mask"].sum(1).max()) for c in chunks]
    assert lengths == sorted(lengths)
    padded = sum(c.enc["attention_mask"].numel() for c in chunks)
    unsorted = sum(
        subject.encode(texts[i : i + 8], max_length=64)["attention_mask"].numel() for i in range(0, 50, 8)
    )
    assert padded < 0.8 * unsorted  # sorting by length removes most of the padding
    assert torch.equal(text_index(chunks), torch.arange(len(texts)))


@pytest.mark.parametrize("position", ["last", "max", "mean", "all"])
def test_batched_labels_equal_one_by_one(subject, texts, position):
    neuron = Neuron(2, 7)
    labels, index = compute_labels(subject, texts, neuron, position, max_tokens=64, batch_size=16)
    single = [neuron_values(subject, subject.encode([t], max_length=64), neuron, position) for t in texts]
    expected = torch.cat(single)
    assert labels.shape == expected.shape
    torch.testing.assert_close(labels, expected, atol=1e-6, rtol=1e-5)
    counts = torch.tensor([len(s) for s in single])
    assert torch.equal(index, torch.arange(len(texts)).repeat_interleave(counts))
    if position == "all":
        assert len(labels) == sum(len(subject.tokenizer(t)["input_ids"]) for t in texts)


def test_truncation_to_max_tokens(subject):
    long = [" ".join(["the cat"] * 40)]
    labels, _ = compute_labels(subject, long, Neuron(1, 0), "all", max_tokens=16)
    assert len(labels) == 16


def test_target_set_standardises_with_train_statistics_only(subject, texts):
    splits = {"train": texts[:30], "val": texts[30:40], "test": texts[40:]}
    ts = build_targets(subject, splits, Neuron(3, 11), "last", 64)
    assert ts.mean == pytest.approx(float(ts.train_labels.double().mean()), abs=1e-12)
    assert ts.std == pytest.approx(float(ts.train_labels.double().std(correction=0)), abs=1e-12)
    assert ts.mean != pytest.approx(float(ts.val_labels.double().mean()), abs=1e-9)
    z = ts.standardise(ts.train_labels.double())
    assert float(z.mean()) == pytest.approx(0, abs=1e-9) and float(z.std(correction=0)) == pytest.approx(
        1, abs=1e-6
    )
    torch.testing.assert_close(ts.destandardise(ts.standardise(ts.test_labels)), ts.test_labels)
    card = ts.card
    assert card["standardisation"] == {"mean": ts.mean, "std": ts.std, "from": "train split"}
    assert card["splits"]["val"]["n"] == 10 and card["splits"]["test"]["texts"] == 10
    assert set(card["splits"]["train"]["quantiles"]) == {"p1", "p5", "p25", "p50", "p75", "p95", "p99"}
    assert card["splits"]["test"]["max"] == pytest.approx(float(ts.test_labels.max()))
    assert ts.texts("val") == tuple(texts[30:40])


def test_label_stats_numbers():
    stats = label_stats(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert stats["n"] == 4 and stats["mean"] == 2.5 and stats["min"] == 1.0 and stats["max"] == 4.0
    assert stats["std"] == pytest.approx(1.118033988749895)
    assert stats["quantiles"]["p50"] == 2.5


def test_dead_neuron_is_a_user_error(texts):
    subject = tiny_subject("llama", seed=4)
    mlp = subject.model.model.layers[1].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[5].zero_()  # silu(0) * up = 0 for every input
    splits = {"train": texts[:30], "val": texts[30:40], "test": texts[40:]}
    with pytest.raises(UserError, match="constant on the train split"):
        build_targets(subject, splits, Neuron(1, 5), "last", 64)


def test_empty_split_and_bad_position_are_user_errors(subject, texts):
    with pytest.raises(UserError, match="val split is empty"):
        build_targets(subject, {"train": texts, "val": [], "test": texts}, Neuron(0, 0))
    with pytest.raises(UserError, match="unknown position"):
        build_targets(subject, {"train": texts, "val": texts, "test": texts}, Neuron(0, 0), "first")
