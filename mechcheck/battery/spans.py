"""The neuron's input span and its comparison subspaces, built once per battery (`ctx.once`).

`in_basis`: an orthonormal basis of the `W_in` span; `subspaces`: random subspaces of layer L's MLP
input matched to it in variance (the null of the span's tests); `label_basis`: the most
label-predictive directions outside it. The information tests and the twins' heads share them.
"""

from __future__ import annotations

import numpy as np
import torch

from mechcheck.battery.context import Context
from mechcheck.battery.nulls import label_subspace, matched_subspaces
from mechcheck.battery.vectors import in_directions, orthonormal


def in_basis(ctx: Context):
    """Orthonormal basis of the neuron's `W_in` span (folded; gate and up for gated MLPs) in the
    trained model — or in the base model when training emptied it (a neuron that reads nothing). [d, k]"""

    def build(rng):
        trained = orthonormal(list(in_directions(ctx.trained, ctx.neuron).values()))
        base = orthonormal(list(in_directions(ctx.base, ctx.neuron).values()))
        return trained if trained.shape[1] == base.shape[1] else base

    return ctx.once("in_basis", build)


def _mlp_in_cov(ctx: Context) -> np.ndarray:
    return np.cov(ctx.eval.mlp_in_p.double().cpu().numpy(), rowvar=False)


def subspaces(ctx: Context):
    """`n_null` random subspaces of layer L's MLP input, variance-matched to the `W_in` span at p."""
    basis = in_basis(ctx).double().cpu().numpy()

    def build(rng):
        return matched_subspaces(_mlp_in_cov(ctx), basis, basis.shape[1], ctx.options.n_null, rng)

    return ctx.once("subspaces", build)


def label_basis(ctx: Context):
    """The most label-predictive directions of layer L's MLP input at p outside the `W_in` span,
    as many as the span has. [d, k]"""
    basis = in_basis(ctx)

    def build(rng):
        x = ctx.eval.mlp_in_p.double().cpu().numpy()
        found = label_subspace(x, ctx.labels, basis.double().cpu().numpy(), basis.shape[1])
        return torch.as_tensor(found, dtype=basis.dtype)

    return ctx.once("label_basis", build)


def as_basis(ctx: Context, b: np.ndarray):
    return torch.as_tensor(b, dtype=ctx.eval.mlp_in_p.dtype)
