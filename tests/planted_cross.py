"""Two tiny models of different families with planted neurons, for the cross-prediction control.

Both models are made transparent: every attention output and MLP down projection is zero (GPT-2's
biases and position embeddings too), so the residual at a token is its embedding and a reporter's
final normed residual at the last token is a function of the last word alone. Each model's
embedding, in its own random orthonormal basis q0..q31, is

    e(t) = C·q0 + v(t)·q1 + p(t)·q2 + small noise in q3..q31,

with C = 16 large (the norms divide by a near-constant), v(t) SHARED by the two models (the same
per-token value: both tokenizers are the tiny word-level one) and p(t) PRIVATE to each model.

- Model A (Llama), neuron (0, 5): gate reads q0 (a near-constant, so silu is nearly linear), up
  reads q2: the neuron is ≈ linear in p_A(t), which only A's residual carries. Planted self-report.
- Model B (GPT-2), neuron (0, 5): c_fc reads q1 with a large bias (GELU is the identity there): the
  neuron is ≈ linear in v(t), which both residuals carry. Both models report it equally well.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mechcheck.readout import Neuron
from mechcheck.testing import tiny_model

NEURON = Neuron(0, 5)
D_MODEL, D_MLP, N_LAYERS = 32, 16, 2
C, NOISE = 16.0, 0.3


def _basis(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.linalg.qr(torch.randn(D_MODEL, D_MODEL, generator=g)).Q


def _embedding(q: torch.Tensor, v: torch.Tensor, p: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    noise = NOISE * torch.randn(len(v), D_MODEL - 3, generator=g)
    return C * q[:, 0] + v[:, None] * q[:, 1] + p[:, None] * q[:, 2] + noise @ q[:, 3:].T


def planted_llama(v: torch.Tensor, seed: int = 0):
    """Model A: its neuron reads its private feature p_A."""
    model, tok = tiny_model("llama", seed, n_layers=N_LAYERS, d_model=D_MODEL, d_mlp=D_MLP)
    q, g = _basis(seed), torch.Generator().manual_seed(2000 + seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(_embedding(q, v, 2 * torch.rand(len(v), generator=g) - 1, g))
        mlp = model.model.layers[NEURON.layer].mlp
        gain = model.model.layers[NEURON.layer].post_attention_layernorm.weight
        mlp.gate_proj.weight[NEURON.index] = 2.0 * q[:, 0] / gain
        mlp.up_proj.weight[NEURON.index] = 2.0 * q[:, 2] / gain
    return model, tok


def planted_gpt2(v: torch.Tensor, seed: int = 1):
    """Model B: its neuron reads the shared feature v."""
    model, tok = tiny_model("gpt2", seed, n_layers=N_LAYERS, d_model=D_MODEL, d_mlp=D_MLP)
    q, g = _basis(seed), torch.Generator().manual_seed(2000 + seed)
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wte.weight.copy_(_embedding(q, v, 2 * torch.rand(len(v), generator=g) - 1, g))
        block = model.transformer.h[NEURON.layer]
        block.mlp.c_fc.weight[:, NEURON.index] = 2.0 * q[:, 1] / block.ln_2.weight
        block.mlp.c_fc.bias[NEURON.index] = 8.0 - float(2.0 * q[:, 1] / block.ln_2.weight @ block.ln_2.bias)
    return model, tok


def save_planted_pair(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write models A (Llama, private neuron) and B (GPT-2, shared neuron) as local HF directories."""
    folder = Path(folder)
    vocab = len(tiny_model("llama", 0, n_layers=1, d_model=8, d_mlp=8)[1])
    v = 2 * torch.rand(vocab, generator=torch.Generator().manual_seed(3000 + seed)) - 1
    paths = []
    for name, build in (("A", planted_llama), ("B", planted_gpt2)):
        model, tok = build(v)
        model.save_pretrained(folder / name)
        tok.save_pretrained(folder / name)
        paths.append(folder / name)
    return paths[0], paths[1]
