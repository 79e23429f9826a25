"""The battery's context and engine: the clean pass, labels and positions, sinks, evaluation texts,
and the continuation from the clean cache, checked against full forward passes."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from planted import NEURON, planted_base

from mechcheck.battery.base import BatteryOptions
from mechcheck.battery.context import build_context, find_sinks
from mechcheck.battery.engine import Engine, SetCoords, SetUnit
from mechcheck.battery.evaluation import eval_texts
from mechcheck.battery.vectors import in_directions, orthonormal
from mechcheck.checkpoint import read_checkpoint, write_checkpoint
from mechcheck.errors import UserError
from mechcheck.readout import LinearReadout, Neuron, neuron_values, readout_values
from mechcheck.subject import Site, Subject, gather_position
from mechcheck.testing import random_texts, tiny_subject
from mechcheck.token_readout import DigitReadout

OPTIONS = BatteryOptions(n_null=4, n_null_secondary=2, n_bootstrap=50, batch_size=8)
TINY_NEURON = Neuron(2, 3)  # a 4-layer tiny model: layers 0–1 before it, layer 3 after

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def subject() -> Subject:
    model, tok = planted_base(0)
    return Subject(model, tok, "planted")


def readout(d_model: int, seed: int = 0) -> LinearReadout:
    r = LinearReadout(d_model)
    torch.nn.init.normal_(r.weight, generator=torch.Generator().manual_seed(seed))
    return r


# --- the continuation equals a full forward -----------------------------------------------------
CONTEXTS = [(f, p) for f in ("llama", "gpt2", "gpt_neox") for p in ("last", "max")]


@pytest.fixture(scope="module", params=CONTEXTS, ids=lambda fp: "-".join(fp))
def tiny_ctx(request):
    """`max`: the label position p is mid-text, so the continuation recomputes p..r (r the last token)."""
    family, position = request.param
    subject = tiny_subject(family, seed=1)
    texts = random_texts(20, seed=3)
    ctx = build_context(
        subject, subject, readout(subject.d_model), TINY_NEURON, position, texts, None, OPTIONS
    )
    if position == "max":
        assert any((b.label_pos < b.report_pos).any() for b in ctx.eval.batches)
    return ctx


def _dense(ctx, seed: int, k: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (ctx.eval.n, ctx.eval.width) + ((k,) if k else ())
    return 2.0 * torch.randn(shape, generator=g)


def _full_edit(op, rows: slice, where: torch.Tensor):
    """The same operation as a plain `Subject.run` edit on the batch's own full forward."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if isinstance(op, SetUnit):
            x = x.clone()
            x[..., op.index] = torch.where(where, op.values[rows, :t].to(x), x[..., op.index])
            return x
        basis = op.basis.to(x)
        change = (op.coords[rows, :t].to(x) - x @ basis) @ basis.T
        return x + torch.where(where[..., None], change, torch.zeros_like(change))

    return op.site, fn


def _full_forward(ctx, draw, where: str):
    """Final residual at the report position and, at p, the neuron, for every text. ([n, d], [n])"""
    finals, neurons = [], []
    last = Site("resid_post", ctx.trained.n_layers - 1)
    unit = Site("mlp_post", ctx.layer)
    for batch in ctx.eval.batches:
        edited = batch.edited(where)
        edits = [_full_edit(op, batch.texts, edited) for op in draw]
        got = ctx.trained.run(batch.enc, reads=[last, unit], edits=edits)
        rows = torch.arange(len(batch.label_pos))
        finals.append(got[last][rows, batch.report_pos])
        neurons.append(got[unit][rows, batch.label_pos, ctx.neuron.index])
    return torch.cat(finals), torch.cat(neurons)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= 1e-4 * scale, float((got - want).abs().max())


LAYOUTS = [None, "positions", "rows"]  # chosen per call, or forced (`mechcheck.continuation`)


@pytest.mark.parametrize("along", LAYOUTS)
def test_the_continuation_at_p_equals_a_full_forward_for_stacked_draws(tiny_ctx, along):
    ctx = tiny_ctx
    layer, index = ctx.layer, ctx.neuron.index
    basis = orthonormal(list(in_directions(ctx.trained, ctx.neuron).values()))
    draws = [
        (SetUnit(layer, index, _dense(ctx, 1)),),
        (SetUnit(layer, index, _dense(ctx, 2)),),  # same site, other values
        (SetCoords(layer, basis, _dense(ctx, 3, basis.shape[1])), SetUnit(layer, index, _dense(ctx, 4))),
        (SetUnit(0, 7, _dense(ctx, 5)),),  # starts at layer 0: no resume
        (SetUnit(1, 2, _dense(ctx, 6)), SetUnit(3, 1, _dense(ctx, 7))),  # two layers, one after L
    ]
    readings = Engine(ctx, max_queries=512, along=along).run(draws, where="label")
    assert readings.final.shape == (ctx.eval.n, len(draws), ctx.trained.d_model)
    for d, draw in enumerate(draws):
        final, neuron = _full_forward(ctx, draw, "label")
        _close(readings.final[:, d], final)
        _close(readings.neuron[:, d], neuron)
    # a neuron set by the draw reads back as what it was set to
    from mechcheck.battery.interchange import at_label

    want = draws[0][0].values[torch.arange(ctx.eval.n), _label_positions(ctx)]
    _close(readings.neuron[:, 0], want)
    assert at_label(ctx, want).shape == (ctx.eval.n, ctx.eval.width)
    # splitting the stack into many small calls changes nothing
    small = Engine(ctx, max_queries=2, along=along).run(draws, where="label")
    _close(small.final, readings.final)


@pytest.mark.parametrize("along", LAYOUTS)
def test_the_continuation_at_every_non_sink_position_equals_a_full_forward(tiny_ctx, along):
    ctx = tiny_ctx
    layer, index = ctx.layer, ctx.neuron.index
    basis = orthonormal(list(in_directions(ctx.trained, ctx.neuron).values()))
    draws = [
        (SetUnit(layer, index, _dense(ctx, 11)),),
        (SetCoords(layer, basis, _dense(ctx, 12, basis.shape[1])), SetUnit(layer, 5, _dense(ctx, 13))),
    ]
    # (`sink` with a mid-text label position: see test_a_sink_edit_in_a_text_without_sinks_…)
    for where in ("non_sink", "sink") if ctx.position == "last" else ("non_sink",):
        readings = Engine(ctx, max_queries=512, along=along).run(draws, where=where)
        for d, draw in enumerate(draws):
            final, neuron = _full_forward(ctx, draw, where)
            _close(readings.final[:, d], final)
            _close(readings.neuron[:, d], neuron)
    with pytest.raises(ValueError, match="neuron's layer"):
        Engine(ctx, 512).run([(SetUnit(0, 1, _dense(ctx, 14)),)], where="non_sink")


def test_a_sink_edit_in_a_text_without_sinks_reads_the_clean_label_position(subject):
    """Position `max` with every label at position 0 (each text starts with the token the neuron
    fires most on): p = 0 is then no sink, so a `sink` edit touches nothing in these texts — and
    the readings at p must be the clean ones."""
    acts = subject.run({"input_ids": torch.arange(len(subject.tokenizer))[:, None]},
                       reads=[Site("mlp_post", NEURON.layer)])[Site("mlp_post", NEURON.layer)]  # fmt: skip
    best = subject.tokenizer.convert_ids_to_tokens(int(acts[:, 0, NEURON.index].argmax()))
    texts = [f"{best} {t}" for t in random_texts(20, seed=12)]
    ctx = build_context(subject, subject, readout(subject.d_model), NEURON, "max", texts, None, OPTIONS)
    assert all((b.label_pos == 0).all() and not b.sinks.any() for b in ctx.eval.batches)
    from mechcheck.battery.interchange import pin

    readings = Engine(ctx, 512).run([(pin(ctx),)], where="sink")
    _close(readings.final[:, 0], ctx.eval.x_final)
    _close(readings.neuron[:, 0], ctx.eval.units_p[:, ctx.layer, ctx.neuron.index])
    _close(readings.mlp_in[:, 0], ctx.eval.mlp_in_p)


def test_a_no_op_edit_reproduces_the_clean_pass(tiny_ctx):
    ctx = tiny_ctx
    from mechcheck.battery.interchange import pin

    readings = Engine(ctx, 512).run([(pin(ctx),)], where="label")
    _close(readings.final[:, 0], ctx.eval.x_final)
    _close(readings.mlp_in[:, 0], ctx.eval.mlp_in_p)
    _close(readings.resid_pre[:, 0], ctx.eval.resid_p[:, ctx.layer])


def _label_positions(ctx) -> torch.Tensor:
    return torch.cat([b.label_pos for b in ctx.eval.batches])


# --- labels, positions, the clean report ---------------------------------------------------------
@pytest.mark.parametrize("position", ["last", "max", "mean"])
@pytest.mark.parametrize("separate_base", [False, True])
def test_labels_line_up_with_one_text_at_a_time(subject, position, separate_base):
    """Batched (padded, length-sorted) labels equal one-text-at-a-time values, whether the labels
    come from the trained model's own pass or a separate base model's."""
    texts = random_texts(20, seed=4)
    base = Subject(copy.deepcopy(subject.model), subject.tokenizer, "copy") if separate_base else subject
    r = readout(subject.d_model)
    ctx = build_context(subject, base, r, NEURON, position, texts, None, OPTIONS)
    lengths = [int(b.real.sum(1).max()) for b in ctx.eval.batches]
    assert len(lengths) == 3 and lengths == sorted(lengths)  # length-sorted batches of 8
    assert sorted(ctx.eval.texts) == sorted(texts) and list(ctx.eval.groups) == list(ctx.eval.texts)
    one = [subject.encode([t]) for t in ctx.eval.texts]
    expected = torch.cat([neuron_values(subject, e, NEURON, position) for e in one])
    assert np.allclose(ctx.labels, expected.double().numpy(), atol=1e-5)
    site = Site("mlp_post", NEURON.layer)
    acts = [subject.run(e, reads=[site])[site][0, :, NEURON.index] for e in one]
    want_pos = [int(a.argmax()) if position == "max" else len(a) - 1 for a in acts]
    assert _label_positions(ctx).tolist() == want_pos
    assert ctx.eval.n_tokens.tolist() == [len(a) for a in acts]
    clean = torch.cat([readout_values(subject, e, r, "last") for e in one]).detach()
    assert np.allclose(ctx.eval.report, clean.double().numpy(), atol=1e-5)
    at_p = torch.stack([a[p] for a, p in zip(acts, want_pos, strict=True)])
    assert torch.allclose(ctx.eval.units_p[:, NEURON.layer, NEURON.index], at_p, atol=1e-5)


def test_position_all_is_refused(subject):
    with pytest.raises(UserError, match="position 'all'"):
        build_context(
            subject, subject, readout(subject.d_model), NEURON, "all", random_texts(20), None, OPTIONS
        )


def test_a_prompted_readout_reports_on_the_prompt_and_labels_the_bare_text(subject):
    texts = random_texts(24, seed=5)
    labels = neuron_values(subject, subject.encode(texts), NEURON, "last")
    digit = DigitReadout.fit(subject.tokenizer, labels)
    ctx = build_context(subject, subject, digit, NEURON, "last", texts, None, OPTIONS)
    bare = [subject.encode([t]) for t in ctx.eval.texts]
    expected = torch.cat([neuron_values(subject, e, NEURON, "last") for e in bare])
    assert np.allclose(ctx.labels, expected.double().numpy(), atol=1e-5)
    for batch in ctx.eval.batches:
        chunk = ctx.eval.texts[batch.texts]
        bare_len = torch.tensor([len(subject.tokenizer(t)["input_ids"]) for t in chunk])
        prompted_len = torch.tensor(
            [len(subject.tokenizer(digit.format_text(t))["input_ids"]) for t in chunk]
        )
        assert (prompted_len > bare_len).all()
        assert batch.label_pos.tolist() == (bare_len - 1).tolist()  # the bare text's last token
        assert batch.report_pos.tolist() == (prompted_len - 1).tolist()  # the prompt's last token
        logits = subject.run(batch.enc, reads=[Site("logits")])[Site("logits")]
        want = digit.in_units(gather_position(logits, batch.enc["attention_mask"], "last"))
        assert np.allclose(ctx.eval.report[batch.texts], want.double().numpy(), atol=1e-5)


# --- attention sinks ------------------------------------------------------------------------------
def test_sinks_are_position_0_and_outlier_norms():
    norms = torch.tensor([[1.0, 1.0, 1.0, 9.0, 1.0, 1.0], [2.0, 1.0, 3.5, 1.0, 1.0, 50.0]])
    real = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]).bool()
    mlp_in = norms[..., None] * torch.nn.functional.normalize(torch.randn(2, 6, 4), dim=-1)
    sinks = find_sinks(mlp_in, real)
    # row 0: position 0 always, position 3 (9 > 4 × median 1); row 1: 3.5 < 4 × 1, padding never
    assert sinks.tolist() == [
        [True, False, False, True, False, False],
        [True, False, False, False, False, False],
    ]
    assert find_sinks(mlp_in, real, factor=3.0)[1].tolist() == [True, False, True, False, False, False]


def test_the_label_position_is_never_a_sink(subject):
    texts = random_texts(20, seed=6)
    ctx = build_context(subject, subject, readout(subject.d_model), NEURON, "last", texts, None, OPTIONS)
    for batch in ctx.eval.batches:
        assert batch.sinks[:, 0].all()
        assert not batch.sinks[torch.arange(len(batch.label_pos)), batch.label_pos].any()
        assert not (batch.sinks & ~batch.real).any()
        classes = batch.classes()
        assert (classes[torch.arange(len(batch.label_pos)), batch.label_pos] == 0).all()
        assert ((classes == 2) == batch.sinks).all() and ((classes == -1) == ~batch.real).all()


# --- evaluation texts -----------------------------------------------------------------------------
def _checkpoint(tmp_path, name: str, predictions: dict | None):
    run = {"base_model": "x", "neuron": NEURON.as_dict(), "position": "last", "condition": "frozen",
           "target_mode": "fixed"}  # fmt: skip
    return read_checkpoint(write_checkpoint(tmp_path / name, run, readout(32), predictions=predictions))


def test_eval_texts_prefer_the_checkpoint_and_subsample_deterministically(tmp_path):
    texts = random_texts(50, seed=8)
    ck = _checkpoint(tmp_path, "ck", {"texts": texts + texts[:5]})  # duplicates are dropped
    options = BatteryOptions(max_eval=30)
    got, groups, source = eval_texts(ck, "ignored-corpus", options)
    assert source == "checkpoint test split" and len(got) == 30 and set(got) <= set(texts)
    assert eval_texts(ck, None, options) == (got, groups, source)  # seeded
    assert [t for t in texts if t in got] == got  # original order kept
    assert groups == got  # no groups saved, no corpus: every text is its own article
    other = eval_texts(ck, None, BatteryOptions(max_eval=30, seed=1))[0]
    assert other != got and len(other) == 30
    assert eval_texts(ck, None, BatteryOptions(max_eval=100))[0] == texts


def test_eval_texts_use_the_saved_groups(tmp_path):
    texts = random_texts(40, seed=9)
    groups = [f"article-{i // 4}" for i in range(40)]
    ck = _checkpoint(tmp_path, "ck", {"texts": texts, "groups": groups})
    got, got_groups, _ = eval_texts(ck, None, BatteryOptions(max_eval=25))
    table = dict(zip(texts, groups, strict=True))
    assert len(got) == 25 and got_groups == [table[t] for t in got]
    assert json.loads((ck.path / "predictions.json").read_text())["groups"] == groups


def test_eval_texts_refuse_what_cannot_give_a_ci(tmp_path):
    with pytest.raises(UserError, match="pass --corpus"):
        eval_texts(_checkpoint(tmp_path, "none", None), None, BatteryOptions())
    with pytest.raises(UserError, match="at least 20"):
        eval_texts(_checkpoint(tmp_path, "few", {"texts": random_texts(10)}), None, BatteryOptions())


def _corpus_checkpoint(tmp_path, config, seed: int):
    """A checkpoint recording, as the trainer does, the corpus spec and the split it trained on."""
    from dataclasses import asdict

    from mechcheck.corpus import configured_corpus, configured_split

    splits = configured_split(config, configured_corpus(config, seed), seed)
    run = {"base_model": "x", "neuron": NEURON.as_dict(), "position": "last", "condition": "frozen",
           "target_mode": "fixed", "corpus": {"spec": asdict(config), "card": splits.card}}  # fmt: skip
    return read_checkpoint(write_checkpoint(tmp_path / "ck", run, readout(32))), splits


def test_a_corpus_the_checkpoint_trained_on_gives_its_recorded_test_split(tmp_path):
    """Not the battery's own fractions and seed: the split run.json records (issue 13)."""
    from mechcheck.corpus import configured_corpus, configured_split
    from mechcheck.experiment import CorpusConfig

    corpus_file = tmp_path / "texts.txt"
    corpus_file.write_text("\n".join(random_texts(400, seed=4)) + "\n")
    config = CorpusConfig(source=str(corpus_file), max_texts=300, split=(0.5, 0.2, 0.3))
    ck, trained = _corpus_checkpoint(tmp_path, config, seed=7)
    options = BatteryOptions(max_eval=1000)
    texts, groups, source = eval_texts(ck, str(corpus_file), options)
    assert texts == list(trained.test) and groups == list(trained.groups["test"])
    assert source == str(corpus_file)
    whole = CorpusConfig(source=str(corpus_file), max_texts=None)
    battery_own = configured_split(whole, configured_corpus(whole, options.seed), options.seed)
    assert set(texts) != set(battery_own.test)  # what the battery's own split would have evaluated
    corpus_file.write_text("\n".join(random_texts(400, seed=5)) + "\n")  # the corpus changed since
    with pytest.raises(UserError, match="no longer gives the split"):
        eval_texts(ck, str(corpus_file), options)


def test_another_corpus_is_split_as_the_pipeline_splits_it(tmp_path):
    from mechcheck.corpus import configured_corpus, configured_split
    from mechcheck.experiment import CorpusConfig

    trained_on, other = tmp_path / "a.txt", tmp_path / "b.txt"
    trained_on.write_text("\n".join(random_texts(200, seed=1)) + "\n")
    other.write_text("\n".join(random_texts(500, seed=2)) + "\n")
    ck, _ = _corpus_checkpoint(tmp_path, CorpusConfig(source=str(trained_on), max_texts=None), 3)
    options = BatteryOptions(max_eval=1000, seed=5)
    texts, groups, _ = eval_texts(ck, str(other), options)
    config = CorpusConfig(source=str(other), max_texts=None)
    expected = configured_split(config, configured_corpus(config, 5), 5)
    assert texts == list(expected.test) and groups == list(expected.groups["test"])
