"""The battery's context: evaluation batches, labels, the shared clean pass, edits, eval texts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted import NEURON, planted_base

from mechcheck.battery.base import BatteryOptions
from mechcheck.battery.context import build_context
from mechcheck.battery.edits import at_mlp_in, downstream
from mechcheck.battery.evaluation import eval_texts
from mechcheck.battery.vectors import in_directions, orthonormal
from mechcheck.checkpoint import read_checkpoint, write_checkpoint
from mechcheck.errors import UserError
from mechcheck.readout import LinearReadout, neuron_values
from mechcheck.subject import Site, Subject, gather_position
from mechcheck.testing import random_texts
from mechcheck.token_readout import DigitReadout

OPTIONS = BatteryOptions(n_random=4, n_null_texts=8, n_bootstrap=100, batch_size=8)


@pytest.fixture(scope="module")
def subject() -> Subject:
    model, tok = planted_base(0)
    return Subject(model, tok, "planted")


def readout(subject: Subject) -> LinearReadout:
    r = LinearReadout(subject.d_model)
    torch.nn.init.normal_(r.weight, generator=torch.Generator().manual_seed(0))
    return r


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("position", ["last", "max", "all"])
def test_labels_and_rows_line_up_with_one_text_at_a_time(subject, position):
    texts = random_texts(20, seed=4)
    ctx = build_context(subject, subject, readout(subject), NEURON, position, texts, OPTIONS, "t")
    lengths = [int(b.enc["attention_mask"].sum(1).max()) for b in ctx.eval.batches]
    assert lengths == sorted(lengths)  # length-sorted batches
    expected = [neuron_values(subject, subject.encode([t]), NEURON, position) for t in ctx.eval.texts]
    assert np.allclose(ctx.labels, torch.cat(expected).double().numpy(), atol=1e-5)
    per_text = [len(e) for e in expected]
    assert np.array_equal(ctx.eval.text_of, np.repeat(np.arange(len(texts)), per_text))
    assert len(ctx.clean_report) == ctx.eval.n == sum(per_text)
    assert ctx.random_neurons.tolist() == sorted(set(ctx.random_neurons.tolist()) - {NEURON.index})


@pytest.mark.usefixtures("one_thread")
def test_a_prompted_readout_reports_on_the_prompt_and_labels_the_bare_text(subject):
    texts = random_texts(24, seed=5)
    labels = neuron_values(subject, subject.encode(texts), NEURON, "last")
    digit = DigitReadout.fit(subject.tokenizer, labels)
    ctx = build_context(subject, subject, digit, NEURON, "last", texts, OPTIONS, "t")
    batch = ctx.eval.batches[0]
    assert batch.raw is not None and batch.enc["input_ids"].shape[1] > batch.raw["input_ids"].shape[1]
    bare = neuron_values(subject, subject.encode(list(ctx.eval.texts[:8])), NEURON, "last")
    assert np.allclose(ctx.labels[:8], bare.double().numpy(), atol=1e-5)
    logits = subject.run(batch.enc, reads=[Site("logits")])[Site("logits")]
    in_units = digit.in_units(gather_position(logits, batch.enc["attention_mask"], "last"))
    assert np.allclose(ctx.clean_report[:8], in_units.double().numpy(), atol=1e-5)
    with pytest.raises(UserError, match="position 'all'"):
        build_context(subject, subject, digit, NEURON, "all", texts, OPTIONS, "t")


@pytest.mark.usefixtures("one_thread")
def test_mean_ablating_a_direction_keeps_its_mean_and_removes_its_variation(subject):
    texts = random_texts(16, seed=6)
    ctx = build_context(subject, subject, readout(subject), NEURON, "last", texts, OPTIONS, "t")
    basis = orthonormal(list(in_directions(subject, NEURON).values()))
    site, fn = at_mlp_in(ctx, basis)
    got = subject.run(ctx.eval.batches[0].enc, reads=[site], edits=[(site, fn)])[site]
    mask = ctx.eval.batches[0].enc["attention_mask"].bool()
    along = (got[mask] @ basis)[:, 0]
    assert float(along.std()) < 1e-4
    assert float(along.mean()) == pytest.approx(float(ctx.site_mean(site) @ basis[:, 0]), abs=1e-4)
    edits = downstream(ctx, basis)
    assert [s.layer for s, _ in edits] == list(range(NEURON.layer, subject.n_layers))


def test_eval_texts_prefer_the_checkpoint_and_subsample_deterministically(subject, tmp_path):
    run = {"base_model": "x", "neuron": NEURON.as_dict(), "position": "last", "condition": "frozen",
           "target_mode": "fixed"}  # fmt: skip
    texts = random_texts(50, seed=8)
    ck = read_checkpoint(
        write_checkpoint(tmp_path / "ck", run, readout(subject), predictions={"texts": texts})
    )
    options = BatteryOptions(max_eval=30)
    got, source = eval_texts(ck, "ignored-corpus", options)
    assert source == "checkpoint test split" and len(got) == 30 and set(got) <= set(texts)
    assert eval_texts(ck, None, options)[0] == got
    assert [t for t in texts if t in got] == got  # original order kept
