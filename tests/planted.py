"""Tiny Llama models with planted mechanisms: the truth is known, so the battery must find it.

The residual stream is made readable by hand. Every attention output projection is zero and only
layer 1's MLP writes, so the residual at a token is its embedding plus what layer 1's MLP adds.
In an orthonormal basis e0..e31 (random per seed):

- e0: a large constant (C = 16) in every embedding, so the RMS norms divide by a near-constant;
- e1: a_t in [0.5, 3], the feature the neuron (layer 1, index 5) reads: gate and up rows are
  k·e1 ⊘ gain (so the *folded* W_in is along e1), hence n_t = silu(6 a/rms)·2 a/rms;
- e2: b_t = ½(n_t − mean n), a copy of the neuron's value in another direction (orthogonal to
  W_in and W_out) — a "separate model" of the neuron;
- e3: the neuron's W_out (norm 0.1); nothing else writes there;
- e4: h_t, noise unrelated to the neuron; e5..e31: small noise (other neurons write here).

Readouts (linear, on the final norm; their weight is v ⊘ final gain, scaled by least squares):
H1 reads e2, H2_in reads e1, H2_out reads e3, null reads e4 (uncalibrated). H3: the checkpoint's
trained model is the base with the neuron's gate/up rows zeroed (constant 0) and the H2_out head.

H1_sink (`sink_base`): an attention sink, as in the real SmolLM2 neuron. Every text starts with
the token "x" (which `random_texts` never produces), embedded as C·e0 + 40·e1 + 40·e6: its
residual norm is ~3.5× the rest and the neuron fires ~15× its largest value on ordinary tokens.
Layer 2's head 0 attends to it from every position (q reads the constant e0, k reads e6, both in
the head's lowest-frequency RoPE pair, dims 3/7 of head_dim 8, so rotation is negligible) and
copies its normed e1 coordinate (v) into the fresh direction e7 (o_proj): a constant of every
text, which the H1 readout reads beside e2 (the neuron's copy). Editing the W_in span at the
sink moves every report by the same amount — motion without information.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mechcheck.battery.base import BatteryOptions
from mechcheck.checkpoint import neuron_weights, write_checkpoint
from mechcheck.readout import LinearReadout, Neuron
from mechcheck.subject import Site, Subject, gather_position, weights_digest
from mechcheck.testing import random_texts, tiny_model

CASES = ("H1", "H2_in", "H2_out", "H3", "null")
SINK_CASE, SINK_TOKEN = "H1_sink", "x"
SINK_SIZE, SINK_SCORE, SINK_COPY = 40.0, 2.0, 0.5  # sink embedding; q·k gain; e7 per unit of v
NEURON = Neuron(1, 5)
D_MODEL, D_MLP, N_LAYERS = 32, 64, 3
C, W_OUT_NORM = 16.0, 0.1
READS = {"H1": 2, "H2_in": 1, "H2_out": 3, "H3": 3, "null": 4}
SINK_READS = (2, 7)


def _basis(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.linalg.qr(torch.randn(D_MODEL, D_MODEL, generator=g)).Q  # columns e0..e31


def _neuron_per_token(model, vocab: int) -> torch.Tensor:
    """The neuron's value with each token alone (attention is off, so it is per token). [vocab]"""
    captured = {}
    mlp = model.model.layers[NEURON.layer].mlp
    hook = mlp.down_proj.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        model(input_ids=torch.arange(vocab)[:, None])
    hook.remove()
    return captured["x"][:, 0, NEURON.index]


def planted_base(seed: int):
    """The base model (shared by every case) and its tokenizer."""
    model, tok = tiny_model("llama", seed, n_layers=N_LAYERS, d_model=D_MODEL, d_mlp=D_MLP)
    q, g = _basis(seed), torch.Generator().manual_seed(2000 + seed)
    vocab = model.config.vocab_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        a = 0.5 + 2.5 * torch.rand(vocab, generator=g)
        h = torch.randn(vocab, generator=g)
        noise = 0.3 * torch.randn(vocab, D_MODEL - 5, generator=g)
        emb = C * q[:, 0] + a[:, None] * q[:, 1] + h[:, None] * q[:, 4] + noise @ q[:, 5:].T
        model.model.embed_tokens.weight.copy_(emb)
        mlp = model.model.layers[NEURON.layer].mlp
        gain = model.model.layers[NEURON.layer].post_attention_layernorm.weight
        mlp.gate_proj.weight[NEURON.index] = 6.0 * q[:, 1] / gain
        mlp.up_proj.weight[NEURON.index] = 2.0 * q[:, 1] / gain
        others = q[:, 5:] @ torch.randn(D_MODEL - 5, D_MLP, generator=g)
        mlp.down_proj.weight.copy_(W_OUT_NORM * others / others.norm(dim=0))
        mlp.down_proj.weight[:, NEURON.index] = W_OUT_NORM * q[:, 3]
        for _ in range(2):  # b_t copies the neuron; b enters the norm, so settle it twice
            n = _neuron_per_token(model, vocab)
            b = 0.5 * (n - n.mean())
            model.model.embed_tokens.weight.copy_(emb + b[:, None] * q[:, 2])
    return model, tok


def _fit_readout(
    subject: Subject, direction: torch.Tensor, texts: list[str], calibrate: bool
) -> LinearReadout:
    """weight = α·direction ⊘ final gain, bias β: least squares of the neuron on the projection."""
    gain = subject.anatomy.final_norm().weight.detach()
    w = direction / gain
    enc = subject.encode(texts)
    got = subject.run(enc, reads=[Site("final_norm"), Site("mlp_post", NEURON.layer)])
    x = gather_position(got[Site("final_norm")], enc["attention_mask"], "last") @ w
    y = gather_position(got[Site("mlp_post", NEURON.layer)], enc["attention_mask"], "last")[:, NEURON.index]
    if calibrate:
        design = torch.stack([x, torch.ones_like(x)], 1).double()
        alpha, beta = torch.linalg.lstsq(design, y.double()[:, None]).solution[:, 0].float()
    else:
        alpha, beta = torch.tensor(1.0), y.mean()
    readout = LinearReadout(D_MODEL)
    with torch.no_grad():
        readout.weight.copy_(alpha * w[None])
        readout.bias.fill_(float(beta))
    return readout


def with_sink(texts: list[str]) -> list[str]:
    return [f"{SINK_TOKEN} {t}" for t in texts]


def sink_base(seed: int):
    """planted_base plus the attention sink of case H1_sink (see the module docstring)."""
    model, tok = planted_base(seed)
    q = _basis(seed)
    sink = tok.convert_tokens_to_ids(SINK_TOKEN)
    attn = model.model.layers[2].self_attn
    gain = model.model.layers[2].input_layernorm.weight
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    low = head_dim // 2 - 1  # RoPE pairs (i, i + head_dim/2); the last pair rotates slowest
    fresh = q[:, 6:8]  # e6, e7: only the sink (key) and the head (copy) write there
    with torch.no_grad():
        emb, down = model.model.embed_tokens.weight, model.model.layers[NEURON.layer].mlp.down_proj.weight
        emb.sub_((emb @ fresh) @ fresh.T)
        down.sub_(fresh @ (fresh.T @ down))
        emb[sink] = C * q[:, 0] + SINK_SIZE * (q[:, 1] + q[:, 6])
        attn.q_proj.weight[:head_dim] = 0.0  # head 0
        attn.k_proj.weight[:head_dim] = 0.0  # kv head 0 (heads 0 and 1)
        attn.v_proj.weight[:head_dim] = 0.0
        attn.q_proj.weight[low] = SINK_SCORE * q[:, 0] / gain
        attn.k_proj.weight[low] = q[:, 6] / gain
        attn.v_proj.weight[0] = q[:, 1] / gain
        attn.o_proj.weight[:, 0] = SINK_COPY * q[:, 7]
    return model, tok


def write_planted(root: str | Path, case: str, seed: int, n_eval: int = 64) -> Path:
    """Write the base model dir and a checkpoint for `case`; returns the checkpoint path."""
    root = Path(root)
    sink = case == SINK_CASE
    model, tok = sink_base(seed) if sink else planted_base(seed)
    base_dir = root / (f"base-sink-{seed}" if sink else f"base-{seed}")
    if not base_dir.exists():
        model.save_pretrained(base_dir)
        tok.save_pretrained(base_dir)
    subject = Subject(model, tok, str(base_dir))
    q = _basis(seed)
    direction = q[:, list(SINK_READS)].sum(1) / len(SINK_READS) ** 0.5 if sink else q[:, READS[case]]
    fit_texts, texts = random_texts(200, seed=seed), random_texts(n_eval, seed=10_000 + seed)
    if sink:
        fit_texts, texts = with_sink(fit_texts), with_sink(texts)
    readout = _fit_readout(subject, direction, fit_texts, calibrate=case != "null")
    trained = None
    if case == "H3":
        trained, _ = planted_base(seed)
        mlp = trained.model.layers[NEURON.layer].mlp
        with torch.no_grad():
            mlp.gate_proj.weight[NEURON.index] = 0.0
            mlp.up_proj.weight[NEURON.index] = 0.0
    run = {
        "base_model": str(base_dir), "neuron": NEURON.as_dict(), "position": "last",
        "condition": "unfrozen" if case == "H3" else "frozen", "target_mode": "fixed", "seed": seed,
        "weights_sha256": weights_digest(neuron_weights(subject, NEURON)), "planted": case,
    }  # fmt: skip
    return write_checkpoint(
        root / f"{case}-{seed}", run, readout, model=trained, predictions={"texts": texts}
    )


# Frugal battery settings for tests (the defaults are for real models).
TEST_OPTIONS = BatteryOptions(n_null=100, n_null_secondary=5, n_bootstrap=500)
