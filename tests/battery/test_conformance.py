"""Every registered probe, on a checkpoint whose trained model differs from its base (planted H3):
deterministic under a seed, no hooks or gradients left, weights unchanged, a well-formed result,
and — for probes that intervene — every edit really present in the activations."""

from __future__ import annotations

import json

import pytest
import torch
from planted import NEURON, write_planted

from mechcheck.battery.base import PROBES, BatteryOptions
from mechcheck.battery.context import build_context
from mechcheck.battery.runner import load_probes, unmet_need
from mechcheck.battery.scoring import InformationTest, heads
from mechcheck.checkpoint import read_checkpoint
from mechcheck.readout import Neuron
from mechcheck.subject import weights_digest

OPTIONS = BatteryOptions(n_null=12, n_null_secondary=3, n_bootstrap=100)
NAMES = load_probes()
OTHER = Neuron(2, 4)  # a second reported neuron, for the probes that need several

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    ck = read_checkpoint(write_planted(tmp_path_factory.mktemp("conformance"), "H3", 0, n_eval=40))
    base = ck.load_base()
    return ck, base, ck.load_subject(base)


def context(models, name: str, audit: bool = True):
    ck, base, trained = models
    texts = ck.predictions()["texts"]
    targets = (NEURON, OTHER) if "several_neurons" in PROBES.get(name).needs else ()
    ctx = build_context(trained, base, ck.readout, ck.neuron, ck.position, texts, None, OPTIONS,
                        ck.run.to_json(), targets=targets)  # fmt: skip
    ctx.audit = audit
    return ctx


def hooks(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    ) + len(torch.nn.modules.module._global_forward_hooks)


def digest(model: torch.nn.Module) -> dict[str, str]:
    return weights_digest(dict(model.named_parameters()))


def test_every_probe_module_registered():
    assert set(NAMES) == {"informative", "neuron", "in_bypass", "in_total", "out_direct", "remainder",
                          "layerwise_probe", "collapse", "cross_talk"}  # fmt: skip
    primary = {n for n in NAMES if PROBES.get(n).primary}
    assert primary == {"neuron", "in_bypass", "in_total", "out_direct"}


@pytest.mark.parametrize("name", NAMES)
def test_probe_conformance(models, name):
    _, base, trained = models
    assert base is not trained
    before = {"base": digest(base.model), "trained": digest(trained.model)}
    n_hooks = hooks(base.model) + hooks(trained.model)
    runs = []
    for _ in range(2):  # a fresh context each time: nothing shared between the runs
        ctx = context(models, name)
        assert unmet_need(PROBES.get(name), ctx) is None
        ctx.start_probe(name)
        result = PROBES.get(name)().run(ctx).check(name)
        runs.append((result, list(ctx.interventions), ctx))
    (first, edits, ctx), (second, _, _) = runs
    assert json.dumps(first.to_dict(), sort_keys=True) == json.dumps(second.to_dict(), sort_keys=True)
    assert {"base": digest(base.model), "trained": digest(trained.model)} == before
    assert hooks(base.model) + hooks(trained.model) == n_hooks
    assert all(p.grad is None for m in (base.model, trained.model) for p in m.parameters())
    probe = PROBES.get(name)
    if issubclass(probe, InformationTest):
        _check_information_test(first.test, ctx, name)
    else:
        assert first.test is None and (first.samples or first.metrics), name
        for entry in [*first.metrics.values(), *first.controls.values()]:
            lo, hi = entry["ci"]
            assert lo <= hi or lo != lo  # NaN only where a null was empty
    if probe.intervenes:
        assert edits, f"{name} intervenes but recorded no edit"
        assert all(e["present"] for e in edits), [e for e in edits if not e["present"]][:3]
        assert max(e["changed"] for e in edits) > 0, f"{name}: no edit changed anything"
        assert {e["probe"] for e in edits} == {name}
    else:
        assert not edits


def _check_information_test(test: dict, ctx, name: str) -> None:
    """Per head: the report under every named edit (one value per text) and the null's Δr² draws."""
    names = set(heads(ctx).heads)
    assert {"report", "control.token_count", "twin.H1", "twin.H2_in", "twin.H2_out", "twin.null"} <= names
    assert "effect" in test["edited"] and test["null_about"]
    for edit, per_head in test["edited"].items():
        assert set(per_head) == names, edit
        assert all(len(v) == ctx.eval.n for v in per_head.values()), edit
    assert set(test["null"]) == names
    secondary = name in ("remainder", "cross_talk")
    expected = ctx.options.n_null_secondary if secondary else ctx.options.n_null
    assert {len(v) for v in test["null"].values()} == {expected}, name


def test_the_audit_catches_an_edit_that_does_not_land(models):
    """A subspace edit with a non-orthonormal basis does not set the coordinates it claims to: the
    audit must say so (the conformance test above is only as good as this check)."""
    from mechcheck.battery.engine import SetCoords
    from mechcheck.battery.interchange import at_label
    from mechcheck.battery.scoring import engine
    from mechcheck.battery.spans import in_basis

    ctx = context(models, "in_bypass")
    basis = in_basis(ctx)
    target = at_label(ctx, ctx.eval.mlp_in_p @ basis + 1.0)
    engine(ctx).run([(SetCoords(ctx.layer, basis, target),)])
    assert ctx.interventions and all(e["present"] for e in ctx.interventions)
    ctx.interventions.clear()
    engine(ctx).run([(SetCoords(ctx.layer, 2 * basis, target),)])
    assert not all(e["present"] for e in ctx.interventions if e["kind"] == "SetCoords")
