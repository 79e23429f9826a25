"""Conditions change exactly the parameters they should; label regimes route gradient as declared."""

from __future__ import annotations

import pytest
import torch

from mechcheck.errors import UserError
from mechcheck.experiment import TrainConfig
from mechcheck.readout import Neuron
from mechcheck.targets import build_targets
from mechcheck.testing import random_texts, tiny_subject
from mechcheck.train.bench import Bench
from mechcheck.train.cell import build_task
from mechcheck.train.conditions import CONDITIONS, check_pair, plan
from mechcheck.train.loop import Loop
from mechcheck.train.readouts import init_readout

LAYER, INDEX = 1, 5
CFG = TrainConfig(lr=1e-2, readout_lr=1e-2, warmup_steps=1, eval_train_texts=16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench() -> Bench:
    subject = tiny_subject("llama", seed=0)
    texts = random_texts(60, seed=0, min_words=3, max_words=12)
    splits = {"train": texts[:40], "val": texts[40:50], "test": texts[50:]}
    targets = build_targets(subject, splits, Neuron(LAYER, INDEX), "last", 32)
    return Bench(subject, targets, batch_size=8, drift_texts=4, layer=targets.layer)


def _expected_trainable(bench: Bench, name: str) -> set[str]:
    names = {n for n, _ in bench.subject.model.named_parameters()}
    if name == "frozen":
        return set()
    if name == "unfrozen":
        return names
    keep = tuple(f"model.layers.{i}." for i in range(LAYER + 1, 4)) + ("model.norm.",)
    return {n for n in names if n.startswith(keep)}


@pytest.mark.parametrize("name", ["frozen", "unfrozen", "after_target"])
def test_condition_trains_only_its_parameters(bench: Bench, name: str):
    model = bench.subject.model
    setup = build_task(bench, CONDITIONS.get(name), "fixed", 0, CFG)
    expected = _expected_trainable(bench, name)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert setup.trainable == expected
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    readout_before = setup.readout.weight.detach().clone()
    loop = Loop(setup.task, CFG, 0, None, "")
    for _ in range(3):
        loop.update()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # the LM head is never on the report's path (the readout reads the final norm), so it gets no gradient
    assert changed == expected - {"lm_head.weight"}
    if name == "unfrozen":
        assert "model.layers.0.mlp.gate_proj.weight" in changed and "model.embed_tokens.weight" in changed
    assert not torch.equal(setup.readout.weight, readout_before)
    bench.restore()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_readout_frozen_stays_at_its_seeded_init(bench: Bench):
    cfg = TrainConfig(lr=1e-2, readout_frozen=True, warmup_steps=1)
    setup = build_task(bench, CONDITIONS.get("unfrozen"), "fixed", 3, cfg)
    init = init_readout(bench.subject.d_model, 3, frozen=True)
    assert torch.equal(setup.readout.weight, init.weight) and float(setup.readout.bias) == 0.0
    assert "readout" not in {g["name"] for g in Loop(setup.task, cfg, 0, None, "").optimizer.param_groups}
    loop = Loop(setup.task, cfg, 0, None, "")
    loop.update()
    assert torch.equal(setup.readout.weight, init.weight)
    bench.restore()
    wide = init_readout(4096, 0, frozen=False).weight
    assert float(wide.std()) == pytest.approx(0.02, rel=0.05)
    assert not torch.equal(wide, init_readout(4096, 1, frozen=False).weight)
    with pytest.raises(UserError, match="would train nothing"):
        build_task(bench, CONDITIONS.get("frozen"), "fixed", 0, cfg)


def _grads_from_label(bench: Bench, mode: str) -> dict[str, torch.Tensor]:
    setup = build_task(bench, CONDITIONS.get("unfrozen"), mode, 0, CFG)
    with torch.no_grad():
        setup.readout.weight.zero_()  # the prediction is a constant: only the label can carry gradient
    bench.subject.model.zero_grad(set_to_none=True)
    setup.task.batch_loss(0).backward()
    grads = {n: p.grad.clone() for n, p in bench.subject.model.named_parameters() if p.grad is not None}
    bench.restore()
    return grads


def test_live_label_sends_gradient_into_the_neurons_upstream_weights(bench: Bench):
    grads = _grads_from_label(bench, "live")
    gate = grads[f"model.layers.{LAYER}.mlp.gate_proj.weight"]
    assert gate[INDEX].abs().sum() > 0  # the neuron's own input weights
    others = torch.cat([gate[:INDEX], gate[INDEX + 1 :]])
    assert torch.equal(others, torch.zeros_like(others))  # only the neuron is in the label
    assert grads["model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0  # and everything upstream
    downstream = [g for n, g in grads.items() if n.startswith(("model.layers.2.", "model.layers.3."))]
    assert all(torch.equal(g, torch.zeros_like(g)) for g in downstream)


def test_live_detached_sends_no_gradient_through_the_label(bench: Bench):
    grads = _grads_from_label(bench, "live_detached")
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads.values())


def test_live_and_detached_labels_equal_the_current_neuron(bench: Bench):
    setup = build_task(bench, CONDITIONS.get("unfrozen"), "live", 0, CFG)
    x, live = setup.source.forward("train", 0, grad=False)
    rows = bench.chunks["train"][0].rows
    torch.testing.assert_close(live, bench.targets.train_labels[rows], atol=1e-6, rtol=1e-5)
    bench.restore()


def test_plan_pairs_conditions_with_their_target_modes():
    pairs = plan(("frozen", "unfrozen", "after_target"), ("fixed", "live", "live_detached"))
    names = [(c.name, m) for c, m in pairs]
    assert names == [
        ("frozen", "fixed"),
        ("unfrozen", "fixed"),
        ("unfrozen", "live"),
        ("unfrozen", "live_detached"),
        ("after_target", "fixed"),
    ]
    assert [(c.name, m) for c, m in plan(("frozen", "unfrozen"), ("live",))] == [
        ("frozen", "fixed"),
        ("unfrozen", "live"),
    ]


@pytest.mark.parametrize(
    ("conditions", "modes", "message"),
    [
        (("frozen", "sideways"), ("fixed",), "unknown condition 'sideways'"),
        (("unfrozen",), ("stale",), "unknown target mode 'stale'"),
        (("frozen",), ("live",), "target mode 'live' applies to none of the conditions"),
        (("frozen", "after_target"), ("live_detached",), "add 'unfrozen'"),
        ((), ("fixed",), "train.conditions is empty"),
    ],
)
def test_plan_rejects_bad_pairs(conditions, modes, message):
    with pytest.raises(UserError, match=message):
        plan(conditions, modes)


def test_frozen_with_live_is_a_user_error():
    with pytest.raises(UserError, match="cannot use target mode 'live'"):
        check_pair(CONDITIONS.get("frozen"), "live")
    with pytest.raises(UserError, match="cannot use target mode 'live_detached'"):
        check_pair(CONDITIONS.get("after_target"), "live_detached")
    with pytest.raises(ValueError, match="registered twice"):
        CONDITIONS.register("frozen")(CONDITIONS.get("frozen"))


def test_a_target_set_from_another_model_trains_after_the_benchs_own_layer(bench: Bench):
    """Cross-prediction's cell: the bench's resume layer (0) decides what trains, the other model's
    target set (a neuron at layer 3 of another model) what the loss fits."""
    texts = {s: list(bench.targets.texts(s)) for s in ("train", "val", "test")}
    other = build_targets(tiny_subject("llama", seed=1), texts, Neuron(3, INDEX), "last", 32)
    reporter = Bench(bench.subject, bench.targets, batch_size=8, drift_texts=4, layer=0)
    setup = build_task(reporter, CONDITIONS.get("after_target"), "fixed", 0, CFG, targets=other)
    names = {n for n, _ in bench.subject.model.named_parameters()}
    keep = tuple(f"model.layers.{i}." for i in range(1, 4)) + ("model.norm.",)
    assert setup.trainable == {n for n in names if n.startswith(keep)} and not setup.own_labels
    assert setup.targets is other and not torch.equal(other.train_labels, bench.targets.train_labels)
    with torch.no_grad():
        x, _ = setup.source.forward("train", 0, grad=False)
        rows = reporter.chunks["train"][0].rows
        expected = setup.readout.loss(x, other.standardise(other.train_labels[rows]))
        torch.testing.assert_close(setup.task.batch_loss(0), expected)
    reporter.restore()
    with pytest.raises(UserError, match="cannot train on another model's labels"):
        build_task(reporter, CONDITIONS.get("unfrozen"), "fixed", 0, CFG, targets=other)
    fewer = build_targets(bench.subject, {**texts, "test": texts["test"][:-1]}, Neuron(3, INDEX), "last", 32)
    with pytest.raises(ValueError, match="the bench's texts"):
        build_task(reporter, CONDITIONS.get("frozen"), "fixed", 0, CFG, targets=fewer)
