"""The nnsight subject against plain torch: padding, hooks left behind, edits, early stop, resume."""

from __future__ import annotations

import pytest
import torch

from mechcheck.errors import UserError
from mechcheck.subject import POSITIONS, Site, Subject, gather_position, weights_digest
from mechcheck.testing import random_texts

LAYER = 1
ATOL = 1e-5
TEXTS = random_texts(5, seed=3, min_words=2, max_words=14)
SEQUENTIAL = ("llama", "gpt2", "gemma", "qwen2")  # GPT-NeoX's MLP reads the layer input (parallel)


def hooks_on(model: torch.nn.Module) -> list[str]:
    """Every torch hook registered on any module, or globally."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    found = [
        f"{name or 'model'}.{kind}" for name, m in model.named_modules() for kind in kinds if getattr(m, kind)
    ]
    from torch.nn.modules import module as torch_module

    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(torch_module, kind):
            found.append(kind)
    return found


def forward_attributes(model: torch.nn.Module) -> dict[str, object]:
    return {name: m.__dict__.get("forward") for name, m in model.named_modules()}


def logits(subject: Subject, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return subject.model(**enc).logits


def hook_reference(subject: Subject, enc: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """Neuron activations from a plain forward pre-hook on the down projection, full forward."""
    seen = []
    handle = subject.anatomy.down_proj(layer).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        logits(subject, enc)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_equals_one_text_at_a_time(family_subject: Subject, side: str) -> None:
    s = family_subject
    enc = s.encode(TEXTS, padding_side=side)
    assert not enc["attention_mask"].all()  # the batch really is padded
    batched = s.mlp_post(enc, [LAYER])[LAYER]
    singles = [s.encode([text]) for text in TEXTS]
    single_acts = [s.mlp_post(e, [LAYER])[LAYER] for e in singles]
    for position in POSITIONS:
        got = gather_position(batched, enc["attention_mask"], position)
        want = torch.cat(
            [
                gather_position(a, e["attention_mask"], position)
                for a, e in zip(single_acts, singles, strict=True)
            ]
        )
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_nnsight_path_equals_plain_hook_path(family_subject: Subject) -> None:
    s = family_subject
    for side in ("right", "left"):
        enc = s.encode(TEXTS, padding_side=side)
        got = s.mlp_post(enc, [0, LAYER, 3])
        for layer, acts in got.items():
            torch.testing.assert_close(acts, hook_reference(s, enc, layer), atol=1e-6, rtol=0)


def _runs(s: Subject, enc: dict[str, torch.Tensor]):
    """Subject.run calls of every kind: read, edits, grad, resume, and one that raises."""
    u = torch.nn.functional.normalize(
        torch.randn(s.d_model, generator=torch.Generator().manual_seed(0)), dim=0
    )
    project = lambda x: x - (x @ u)[..., None] * u
    cached = s.run(enc, reads=[Site("resid_post", LAYER)])[Site("resid_post", LAYER)]

    def boom(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom inside the trace")

    yield lambda: s.run(enc, reads=[Site("mlp_post", LAYER), Site("logits")])
    yield lambda: s.run(enc, reads=[Site("final_norm")], edits=[(Site("mlp_in", LAYER), project)])
    yield lambda: s.run(
        enc, reads=[Site("resid_post", 2)], edits=[(Site("mlp_post", LAYER), lambda x: x * 0)]
    )
    yield lambda: s.run(enc, reads=[Site("final_norm")], grad=True)
    yield lambda: s.run(enc, reads=[Site("final_norm")], resume=(LAYER, cached))
    yield lambda: s.run(enc, reads=[Site("final_norm")], edits=[(Site("resid_post", LAYER), boom)])


def test_runs_leave_no_hooks_and_no_weight_changes(family_subject: Subject) -> None:
    s = family_subject
    enc = s.encode(TEXTS)
    before_logits, before_digest = logits(s, enc), weights_digest(dict(s.model.state_dict()))
    before_forwards = forward_attributes(s.model)
    assert hooks_on(s.model) == []
    for i, call in enumerate(_runs(s, enc)):
        if i == 5:
            with pytest.raises(Exception, match="boom"):
                call()
        else:
            out = call()
            assert out and all(v.isfinite().all() for v in out.values())
        assert hooks_on(s.model) == [], f"run {i} left hooks"
        assert forward_attributes(s.model) == before_forwards, f"run {i} left a patched forward"
    assert all(p.grad is None for p in s.model.parameters())
    assert weights_digest(dict(s.model.state_dict())) == before_digest
    assert torch.equal(logits(s, enc), before_logits)


@pytest.mark.parametrize("family_subject", SEQUENTIAL, indirect=True)
def test_mlp_in_edit_persists_in_the_residual_stream(family_subject: Subject) -> None:
    s = family_subject
    enc = s.encode(TEXTS)
    u = torch.nn.functional.normalize(
        torch.randn(s.d_model, generator=torch.Generator().manual_seed(1)), dim=0
    )
    mlp_in, resid_post = Site("mlp_in", LAYER), Site("resid_post", LAYER)
    clean = s.run(enc, reads=[resid_post])[resid_post]
    got = s.run(enc, reads=[mlp_in, resid_post], edits=[(mlp_in, lambda x: x - (x @ u)[..., None] * u)])
    assert (got[mlp_in] @ u).abs().max() < 1e-5
    with torch.no_grad():
        norm, mlp = s.anatomy.pre_mlp_norm(LAYER), s.anatomy.module(s.anatomy.mlp_path(LAYER))
        mlp_out = mlp(norm(got[mlp_in]))
    # resid_post = edited residual + MLP output, so along u only the MLP output is left
    torch.testing.assert_close(got[resid_post], got[mlp_in] + mlp_out, atol=ATOL, rtol=0)
    torch.testing.assert_close(got[resid_post] @ u, mlp_out @ u, atol=ATOL, rtol=0)
    assert (clean @ u - mlp_out @ u).abs().max() > 1e-2  # without the edit it would differ


def test_mlp_post_edit_sets_the_neuron(family_subject: Subject) -> None:
    s = family_subject
    enc = s.encode(TEXTS)
    index, value = 7, 3.5
    mlp_post, resid_post = Site("mlp_post", LAYER), Site("resid_post", LAYER)
    clean = s.run(enc, reads=[mlp_post, resid_post])

    def set_neuron(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., index] = value
        return x

    got = s.run(enc, reads=[mlp_post, resid_post], edits=[(mlp_post, set_neuron)])
    assert torch.all(got[mlp_post][..., index] == value)
    others = torch.arange(s.d_mlp) != index
    assert torch.equal(got[mlp_post][..., others], clean[mlp_post][..., others])
    shift = (value - clean[mlp_post][..., index, None]) * s.anatomy.W_out(LAYER, index)
    torch.testing.assert_close(got[resid_post] - clean[resid_post], shift, atol=ATOL, rtol=0)


def _call_counts(s: Subject, run) -> dict[str, int]:
    """How often each leaf module ran during `run()`, counted with plain forward hooks."""
    counts = {name: 0 for name, m in s.model.named_modules() if not list(m.children())}
    handles = [
        s.model.get_submodule(name).register_forward_hook(
            lambda m, a, o, n=name: counts.__setitem__(n, counts[n] + 1)
        )
        for name in counts
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return counts


@pytest.mark.parametrize("kind", ["mlp_post", "resid_post"])
def test_early_stop_runs_nothing_after_the_last_site(family_subject: Subject, kind: str) -> None:
    s = family_subject
    enc = s.encode(TEXTS)
    counts = _call_counts(s, lambda: s.run(enc, reads=[Site(kind, LAYER)]))
    a = s.anatomy
    later = [
        n for n in counts if any(n.startswith(a.layer_path(i) + ".") for i in range(LAYER + 1, s.n_layers))
    ]
    head = [n for n, m in s.model.named_modules() if m is s.model.get_output_embeddings()]
    assert later and head
    assert {n: counts[n] for n in [*later, *head, a.final_norm_path] if counts[n]} == {}
    assert counts[a.pre_mlp_norm_path(LAYER)] == 1  # the counters do count
    assert counts[a.down_proj_path(LAYER)] == (1 if kind == "resid_post" else 0)


def test_resume_reproduces_the_final_norm(family_subject: Subject) -> None:
    s = family_subject
    enc = s.encode(TEXTS)
    resid_post, final = Site("resid_post", LAYER), Site("final_norm")
    clean = s.run(enc, reads=[resid_post, final])
    counts = _call_counts(
        s, lambda: clean.update(resumed=s.run(enc, reads=[final], resume=(LAYER, clean[resid_post])))
    )
    torch.testing.assert_close(clean["resumed"][final], clean[final], atol=1e-6, rtol=0)
    assert counts[s.anatomy.down_proj_path(LAYER)] == 0  # the prefix really was skipped
    assert counts[s.anatomy.down_proj_path(LAYER + 1)] == 1


def test_bad_sites_are_errors_not_no_ops(family_subject: Subject, monkeypatch) -> None:
    s = family_subject
    enc = s.encode(TEXTS)
    for layer in (s.n_layers, -1):
        with pytest.raises(UserError, match="layers 0.."):
            s.run(enc, reads=[Site("mlp_post", layer)])
        with pytest.raises(UserError, match="layers 0.."):
            s.run(enc, reads=[Site("final_norm")], edits=[(Site("mlp_in", layer), lambda x: x * 0)])
    cached = s.run(enc, reads=[Site("resid_post", 2)])[Site("resid_post", 2)]
    with pytest.raises(UserError, match="skipped prefix"):
        s.run(
            enc,
            reads=[Site("final_norm")],
            edits=[(Site("mlp_post", 1), lambda x: x * 0)],
            resume=(2, cached),
        )
    monkeypatch.setattr(s.anatomy, "down_proj_name", "no_such_module")
    with pytest.raises(Exception, match="no_such_module"):
        s.run(enc, reads=[Site("final_norm")], edits=[(Site("mlp_post", LAYER), lambda x: x * 0)])
    assert hooks_on(s.model) == []


@pytest.mark.slow
@pytest.mark.parametrize("side", ["right", "left"])
def test_smollm2_batched_equals_one_at_a_time_and_hooks(smollm2: Subject, side: str) -> None:
    s, layer = smollm2, 8
    texts = ["The river flows north.", "Paris is the capital and largest city of France by population.", "Hi"]
    enc = s.encode(texts, padding_side=side)
    acts = s.mlp_post(enc, [layer])[layer]
    assert torch.equal(acts, hook_reference(s, enc, layer))
    got = gather_position(acts, enc["attention_mask"], "last")
    want = torch.cat([gather_position(s.mlp_post(e, [layer])[layer], e["attention_mask"], "last")
                      for e in (s.encode([t]) for t in texts)])  # fmt: skip
    scale = want.abs().max()
    assert scale > 1
    assert (got - want).abs().max() <= 1e-5 * scale
