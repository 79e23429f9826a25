"""Anatomy identities: what `Subject.mlp_post`, `W_in` and `W_out` claim, recomputed by hand.

The pre-MLP norm's input is taken from a plain torch forward pre-hook; the norm, the input
projections and the nonlinearity are then applied by hand from the weights, in float32.
"""

from __future__ import annotations

import pytest
import torch

from mechcheck.anatomy import anatomy_for
from mechcheck.subject import Subject
from mechcheck.testing import random_texts, tiny_subject

LAYER = 2
ATOL = 1e-5
GATED = ("llama", "qwen2", "gemma")


def norm_input(subject: Subject, enc: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """The pre-MLP norm's input at `layer`, captured with a plain torch hook. [batch, pos, d_model]"""
    seen = []
    handle = subject.anatomy.pre_mlp_norm(layer).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        with torch.no_grad():
            subject.model(**enc)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def hand_norm(
    subject: Subject, layer: int, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised x before the gain, the gain, the bias) of the pre-MLP norm, written out per family."""
    norm, config = subject.anatomy.pre_mlp_norm(layer), subject.model.config
    weight = norm.weight.detach()
    if config.model_type in GATED:  # RMSNorm; Gemma multiplies by (1 + weight)
        normalised = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps)
        gain = 1 + weight if config.model_type == "gemma" else weight
        return normalised, gain, torch.zeros_like(weight)
    eps = config.layer_norm_epsilon if config.model_type == "gpt2" else config.layer_norm_eps
    centred = x - x.mean(-1, keepdim=True)
    normalised = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    return normalised, weight, norm.bias.detach()


def hand_pre_activations(subject: Subject, layer: int, normed: torch.Tensor) -> dict[str, torch.Tensor]:
    """The MLP's input projections of the normed residual, from the raw weights. [batch, pos, d_mlp]"""
    mlp = subject.anatomy.module(subject.anatomy.mlp_path(layer))
    model_type = subject.model.config.model_type
    if model_type in GATED:
        return {"gate": normed @ mlp.gate_proj.weight.T, "up": normed @ mlp.up_proj.weight.T}
    if model_type == "gpt2":  # Conv1D: weight is [d_in, d_out]
        return {"in": normed @ mlp.c_fc.weight + mlp.c_fc.bias}
    return {"in": normed @ mlp.dense_h_to_4h.weight.T + mlp.dense_h_to_4h.bias}


def hand_activation(subject: Subject, layer: int, pre: dict[str, torch.Tensor]) -> torch.Tensor:
    mlp = subject.anatomy.module(subject.anatomy.mlp_path(layer))
    if "gate" in pre:
        return mlp.act_fn(pre["gate"]) * pre["up"]
    return mlp.act(pre["in"])


@pytest.fixture
def enc(family_subject: Subject) -> dict[str, torch.Tensor]:
    return family_subject.encode(random_texts(6, seed=1, min_words=3, max_words=12))


def test_mlp_post_equals_hand_recomputation(family_subject: Subject, enc) -> None:
    s = family_subject
    acts = s.mlp_post(enc, [LAYER])[LAYER]
    normalised, gain, bias = hand_norm(s, LAYER, norm_input(s, enc, LAYER))
    with torch.no_grad():
        expected = hand_activation(s, LAYER, hand_pre_activations(s, LAYER, normalised * gain + bias))
    assert acts.shape == (*enc["input_ids"].shape, s.d_mlp)
    assert acts.dtype == torch.float32
    assert acts.abs().max() > 1e-3  # a real signal, not all zeros
    torch.testing.assert_close(acts, expected, atol=ATOL, rtol=0)


def test_W_out_times_activation_is_the_neurons_share_of_the_mlp_output(family_subject: Subject, enc) -> None:
    s = family_subject
    acts = s.mlp_post(enc, [LAYER])[LAYER]
    down = s.anatomy.down_proj(LAYER)
    for index in (0, 17, s.d_mlp - 1):
        zeroed = acts.clone()
        zeroed[..., index] = 0
        with torch.no_grad():
            share = down(acts) - down(zeroed)  # [batch, pos, d_model]
        expected = acts[..., index, None] * s.anatomy.W_out(LAYER, index, folded=False)
        assert share.abs().max() > 1e-6
        torch.testing.assert_close(share, expected, atol=ATOL, rtol=0)


def test_W_in_folds_the_norm_gain_and_reproduces_the_pre_activation(family_subject: Subject, enc) -> None:
    s = family_subject
    normalised, gain, bias = hand_norm(s, LAYER, norm_input(s, enc, LAYER))
    with torch.no_grad():
        pre = hand_pre_activations(s, LAYER, normalised * gain + bias)
    mlp = s.anatomy.module(s.anatomy.mlp_path(LAYER))
    proj_bias = {"gpt2": "c_fc", "gpt_neox": "dense_h_to_4h"}.get(s.model.config.model_type)
    for index in (0, 5, s.d_mlp - 1):
        raw = s.anatomy.W_in(LAYER, index, folded=False)
        folded = s.anatomy.W_in(LAYER, index)
        assert set(folded) == set(pre) == ({"gate", "up"} if "gate" in pre else {"in"})
        for name, w in folded.items():
            torch.testing.assert_close(w, raw[name] * gain, atol=0, rtol=0)
            # pre-activation = normalised · (W_in ⊙ gain) + bias · W_in + projection bias
            offset = bias @ raw[name] + (getattr(mlp, proj_bias).bias[index] if proj_bias else 0)
            torch.testing.assert_close(normalised @ w + offset, pre[name][..., index], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family_subject", ["gemma"], indirect=True)
def test_gemma_gain_is_one_plus_weight(family_subject: Subject) -> None:
    s = family_subject
    weight = s.anatomy.pre_mlp_norm(1).weight.detach()
    raw = s.anatomy.W_in(1, 3, folded=False)["gate"]
    torch.testing.assert_close(s.anatomy.W_in(1, 3)["gate"], raw * (1 + weight), atol=0, rtol=0)
    assert not torch.allclose(raw * (1 + weight), raw * weight)


@pytest.mark.slow
def test_smollm2_mlp_post_equals_hand_recomputation(smollm2: Subject) -> None:
    s, layer = smollm2, 8
    enc = s.encode(["The river flows north.", "Paris is the capital and largest city of France."])
    acts = s.mlp_post(enc, [layer])[layer]
    normalised, gain, bias = hand_norm(s, layer, norm_input(s, enc, layer))
    with torch.no_grad():
        pre = hand_pre_activations(s, layer, normalised * gain + bias)
        expected = hand_activation(s, layer, pre)
    scale = expected.abs().max()
    assert scale > 1
    assert (acts - expected).abs().max() <= 1e-5 * scale
    index = 1188
    w = s.anatomy.W_in(layer, index)
    torch.testing.assert_close(normalised @ w["gate"], pre["gate"][..., index], atol=1e-5 * scale, rtol=0)


def test_W_out_folds_a_post_mlp_norm_gain_only_where_there_is_one() -> None:
    """Gemma 2/3 normalise the MLP output before the residual add: W_out folds that gain (1 + w)."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).eval()
    post = model.model.layers[1].post_feedforward_layernorm
    with torch.no_grad():
        post.weight.copy_(torch.linspace(-0.5, 2.0, 16))
    anatomy = anatomy_for(model)
    raw = anatomy.W_out(1, 3, folded=False)
    assert torch.equal(raw, model.model.layers[1].mlp.down_proj.weight[:, 3])
    assert torch.allclose(anatomy.W_out(1, 3), raw * (1.0 + post.weight.detach()))
    plain = tiny_subject("llama").anatomy
    assert torch.equal(plain.W_out(1, 3), plain.W_out(1, 3, folded=False))
