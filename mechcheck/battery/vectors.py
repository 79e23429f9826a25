"""Residual-space directions the probes use: the neuron's `W_in`/`W_out`, the readout pulled back,
random directions, and projections.

`W_in` is taken *folded* (the pre-MLP norm's gain multiplied in, as `Anatomy.W_in` gives it): the
neuron reads `w · norm(x)`, and for an RMSNorm `w · (g ⊙ x / rms(x)) = (w ⊙ g) · x / rms(x)`, so
`w ⊙ g` is the residual direction whose component the neuron reads (the rms is a scalar). For a
LayerNorm the mean is subtracted first, so the direction is `w ⊙ g` centred (its mean removed);
the LayerNorm bias only adds a constant. The same holds for the readout behind the final norm.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mechcheck.readout import Neuron, Readout
from mechcheck.subject import Subject


def _centre_if_layernorm(v: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    return v - v.mean() if isinstance(norm, nn.LayerNorm) else v


def unit(v: torch.Tensor) -> torch.Tensor:
    norm = v.norm()
    if not norm > 0:
        raise ValueError("cannot normalise a zero vector")
    return v / norm


def in_directions(subject: Subject, neuron: Neuron) -> dict[str, torch.Tensor]:
    """The residual directions the neuron reads (folded, centred for LayerNorm), not normalised."""
    a = subject.anatomy
    norm = a.pre_mlp_norm(neuron.layer)
    folded = a.W_in(neuron.layer, neuron.index, folded=True)
    return {name: _centre_if_layernorm(w.float(), norm) for name, w in folded.items()}


def out_direction(subject: Subject, neuron: Neuron) -> torch.Tensor:
    """`W_out`: what one unit of the neuron adds to the residual stream. [d_model]"""
    return subject.anatomy.W_out(neuron.layer, neuron.index).float()


def readout_pullback(subject: Subject, readout: Readout) -> torch.Tensor | None:
    """The residual direction a linear readout on the final norm reads (None if it is not linear)."""
    direction = getattr(readout, "direction", None)
    if direction is None:
        return None
    norm = subject.anatomy.final_norm()
    w = direction().float() * subject.anatomy.norm_gain(norm).float()
    return _centre_if_layernorm(w, norm)


def orthonormal(vectors: list[torch.Tensor], tol: float = 1e-6) -> torch.Tensor:
    """An orthonormal basis [d, k] of the span of `vectors` (rank-deficient spans shrink k)."""
    m = torch.stack([v.float() for v in vectors], dim=1)
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    keep = s > tol * s.max()
    return u[:, keep].contiguous()


def project_out(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """`x` with its component in span(basis) removed (basis [d, k] orthonormal)."""
    basis = basis.to(dtype=x.dtype, device=x.device)
    return x - (x @ basis) @ basis.T


def random_bases(rng: np.random.Generator, n: int, d_model: int, k: int = 1) -> list[torch.Tensor]:
    """`n` random orthonormal bases [d, k] (uniform on the sphere / Grassmannian)."""
    out = []
    for _ in range(n):
        g = torch.from_numpy(rng.standard_normal((d_model, k))).float()
        out.append(torch.linalg.qr(g).Q)
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def all_in_directions(subject: Subject, layer: int) -> dict[str, torch.Tensor]:
    """Every neuron's folded `W_in` at `layer`, by name, as [d_mlp, d_model] (centred for LayerNorm)."""
    a = subject.anatomy
    names = list(a.W_in_raw(layer, 0))
    norm = a.pre_mlp_norm(layer)
    gain = a.norm_gain(norm).float()
    out = {}
    for name in names:
        rows = torch.stack([a.W_in_raw(layer, i)[name] for i in range(a.d_mlp)]).float() * gain
        out[name] = rows - rows.mean(1, keepdim=True) if isinstance(norm, nn.LayerNorm) else rows
    return out


def all_out_directions(subject: Subject, layer: int) -> torch.Tensor:
    """Every neuron's `W_out` at `layer`, folded like `Anatomy.W_out`. [d_mlp, d_model]"""
    a = subject.anatomy
    w = a.down_proj(layer).weight.detach().float()
    rows = w.T.contiguous() if a._down_in_dim == 1 else w.contiguous()
    post = a.post_mlp_norm(layer)
    return rows * a.norm_gain(post).float() if post is not None else rows
