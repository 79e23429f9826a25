"""Small edit functions for `Subject.run`: each takes the value at a site and returns a new one.

None of them modifies its input in place (the cached clean residual is passed to some of them).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mechcheck.battery.context import Context
from mechcheck.battery.vectors import project_out
from mechcheck.subject import Edit, Site

Fn = Callable[[torch.Tensor], torch.Tensor]


def set_neuron(index: int, values: float | torch.Tensor) -> Fn:
    """mlp_post edit: neuron `index` := `values` (a scalar, or [batch, pos]) at every position."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[..., index] = values.to(y.dtype) if isinstance(values, torch.Tensor) else values
        return y

    return fn


def project(basis: torch.Tensor, mean: torch.Tensor | None = None) -> Fn:
    """Residual edit: remove the component in span(basis) ([d_model, k], orthonormal). With `mean`
    ([d_model]) the component is replaced by the mean's (mean-ablation of the subspace)."""
    if mean is None:
        return lambda x: project_out(x, basis)
    return lambda x: project_out(x - mean.to(x.dtype), basis) + mean.to(x.dtype)


def add(vector: torch.Tensor) -> Fn:
    """Residual edit: add `vector` ([d_model]) at every position."""
    return lambda x: x + vector.to(dtype=x.dtype, device=x.device)


def neuron_edit(ctx: Context, fn: Fn) -> list[Edit]:
    return [(Site("mlp_post", ctx.layer), fn)]


def pinned(ctx: Context, b: int) -> Edit:
    """Hold the neuron at its clean activations (from the cached clean pass) on batch `b`."""
    return Site("mlp_post", ctx.layer), set_neuron(ctx.neuron.index, ctx.clean[b].neurons[..., 0])


def downstream(ctx: Context, basis: torch.Tensor) -> list[Edit]:
    """Mean-ablate span(basis) after layer L and after every later layer (nothing can re-write it)."""
    sites = [Site("resid_post", layer) for layer in range(ctx.layer, ctx.trained.n_layers)]
    return [(site, project(basis, ctx.site_mean(site))) for site in sites]


def at_mlp_in(ctx: Context, basis: torch.Tensor) -> Edit:
    """Mean-ablate span(basis) in the residual the neuron reads (mlp_in at L, edited in place)."""
    site = Site("mlp_in", ctx.layer)
    return site, project(basis, ctx.site_mean(site))


def sattolo(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random cyclic permutation: no element maps to itself (a derangement) for n ≥ 2."""
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm
