"""In-context baseline on a tiny model: prompt format, last-token logits, metrics, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechcheck.incontext import (
    Answers,
    answer_metrics,
    incontext_baseline,
    incontext_prompt,
    last_token_logits,
)
from mechcheck.readout import Neuron
from mechcheck.subject import Site, last_index
from mechcheck.testing import random_texts, tiny_subject


@pytest.fixture(scope="module")
def subject():
    return tiny_subject("llama")


def test_prompt_format():
    assert incontext_prompt([], "the cat") == "Text: the cat\nActivation level (0-9): "
    two = incontext_prompt([("a dog", 7), ("the sea", 0)], "the cat")
    assert two == (
        "Text: a dog\nActivation level (0-9): 7\n\n"
        "Text: the sea\nActivation level (0-9): 0\n\n"
        "Text: the cat\nActivation level (0-9): "
    )


def test_last_token_logits_equal_the_full_logits_there(subject):
    enc = subject.encode([incontext_prompt([("a dog", 3)], t) for t in random_texts(4, seed=1)])
    full = subject.run(enc, reads=[Site("logits")])[Site("logits")]
    want = full[torch.arange(4), last_index(enc["attention_mask"])]
    assert torch.allclose(last_token_logits(subject, enc), want, atol=1e-5)


def test_skill_of_known_answers():
    classes = np.repeat(np.arange(10), 10)
    labels = classes + np.tile(np.linspace(-0.4, 0.4, 10), 10)
    perfect = Answers(classes.astype(float), classes, classes.astype(float))
    got = answer_metrics(perfect, classes, labels, n_boot=200)
    assert got["spearman_digit"]["value"] == pytest.approx(1.0)
    assert got["mae_digit"]["value"] == 0.0 and got["accuracy_argmax"]["value"] == 1.0
    # in units the class mean misses only the within-class spread: R² = 1 - var_within / var_total
    assert got["r2_units"]["value"] == pytest.approx(
        1 - labels.var() ** -1 * (labels - classes).var(), abs=1e-9
    )
    flat = Answers(np.full(100, 4.5), np.zeros(100, int), np.full(100, labels.mean()))
    none = answer_metrics(flat, classes, labels, n_boot=200)
    assert none["spearman_digit"]["value"] is None
    assert none["r2_units"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert none["mae_digit"]["value"] == pytest.approx(2.5)
    lo, hi = got["r2_units"]["ci"]
    assert lo <= got["r2_units"]["value"] <= hi


def test_baseline_runs_and_is_deterministic(subject):
    train, test = random_texts(60, seed=2), random_texts(20, seed=3)
    kw = {"ks": (0, 2), "seed": 5, "n_boot": 100}
    first = incontext_baseline(subject, Neuron(1, 7), train, test, **kw)
    again = incontext_baseline(subject, Neuron(1, 7), train, test, **kw)
    assert first == again
    assert [row["k"] for row in first["by_k"]] == [0, 2]
    assert len(first["decile_edges"]) == 9 and first["n_test"] == 20
    for row in first["by_k"]:
        assert 0 <= row["mae_digit"]["value"] <= 9
        assert 0 <= row["accuracy_argmax"]["value"] <= 1
    # the prompts differ with k, so do the answers
    assert first["by_k"][0]["mae_digit"] != first["by_k"][1]["mae_digit"]
