"""Every registered probe, on a checkpoint whose trained model differs from its base (planted H3):
deterministic under a seed, no hooks or gradients left, weights unchanged, CIs and a control,
and — for probes that intervene — every edit really present in the activations."""

from __future__ import annotations

import json

import pytest
import torch
from planted import write_planted

from mechcheck.battery.base import PROBES, BatteryOptions
from mechcheck.battery.context import build_context
from mechcheck.battery.runner import load_probes
from mechcheck.checkpoint import read_checkpoint
from mechcheck.errors import UserError
from mechcheck.subject import Site, weights_digest

OPTIONS = BatteryOptions(n_random=6, n_null_texts=16, n_bootstrap=200)
NAMES = load_probes()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    ck = read_checkpoint(write_planted(tmp_path_factory.mktemp("conformance"), "H3", 0, n_eval=40))
    base = ck.load_base()
    return ck, base, ck.load_subject(base)


def context(models, audit: bool = True):
    ck, base, trained = models
    texts = ck.predictions()["texts"]
    ctx = build_context(trained, base, ck.readout, ck.neuron, ck.position, texts, OPTIONS, "test", ck.run)
    ctx.audit = audit
    return ctx


def hooks(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    ) + len(torch.nn.modules.module._global_forward_hooks)


def digest(model: torch.nn.Module) -> dict[str, str]:
    return weights_digest(dict(model.named_parameters()))


def test_every_probe_module_registered():
    assert {"ablation", "patching", "direction_ablation", "direction_injection", "geometry",
            "layerwise_probe", "variance", "baselines"} <= set(NAMES)  # fmt: skip


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", NAMES)
def test_probe_conformance(models, name):
    _, base, trained = models
    assert base is not trained
    before = {"base": digest(base.model), "trained": digest(trained.model)}
    n_hooks = hooks(base.model) + hooks(trained.model)
    runs = []
    for _ in range(2):
        ctx = context(models)
        ctx.start_probe(name)
        result = PROBES.get(name)().run(ctx).check(name)
        runs.append((result, ctx.interventions))
    (first, edits), (second, _) = runs
    assert json.dumps(first.to_dict(), sort_keys=True) == json.dumps(second.to_dict(), sort_keys=True)
    assert first.metrics and first.controls, "a probe reports metrics and at least one control"
    for entry in [*first.metrics.values(), *first.controls.values()]:
        lo, hi = entry["ci"]
        assert lo <= hi or lo != lo  # NaN only where a null was empty
    assert {"base": digest(base.model), "trained": digest(trained.model)} == before
    assert hooks(base.model) + hooks(trained.model) == n_hooks
    assert all(p.grad is None for m in (base.model, trained.model) for p in m.parameters())
    if PROBES.get(name).intervenes:
        assert edits, f"{name} intervenes but recorded no edit"
        assert all(e["present"] for e in edits), [e for e in edits if not e["present"]][:3]
        if name != "geometry":  # geometry's edit is the identity: a leaf to take the gradient at
            assert max(e["changed"] for e in edits) > 0
    else:
        assert not edits


def test_a_site_that_does_not_exist_is_an_error(models):
    ctx = context(models)
    with pytest.raises(UserError, match="layers 0..2"):
        ctx.report(0, [(Site("mlp_post", 99), lambda x: x)])
    with pytest.raises(ValueError, match="unknown site kind"):
        Site("attn_pattern", 1)


def test_resuming_from_the_cache_matches_a_full_pass(models):
    ctx = context(models, audit=False)
    direct = ctx.report(0).detach()
    assert torch.allclose(direct, ctx.clean[0].report, atol=1e-5)
    shift = torch.ones(ctx.trained.d_model)
    edit = [(Site("resid_post", ctx.layer), lambda x: x + shift)]
    shortcut = ctx.report(0, edit).detach()  # applied to the cached residual, resumed after L
    ctx.audit = True
    traced = ctx.report(0, edit).detach()  # applied inside the traced pass, resumed after L-1
    assert torch.allclose(shortcut, traced, atol=1e-5)
    assert not torch.allclose(shortcut, direct, atol=1e-3)
