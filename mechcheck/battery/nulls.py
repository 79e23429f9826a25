"""Matched comparison units: what a test's edit is compared with, on the same texts.

- `matched_subspaces`: random k-dimensional subspaces of layer L's MLP input, drawn from the
  residual's own covariance at the label position (Gaussian vectors shaped by Σ^α, orthogonal to
  the `W_in` span), kept only when their variance at p is within a factor MATCH of the tested
  span's. The exponent α is set by bisection so that the median candidate's variance equals the
  span's: α = 0 is isotropic, α = 1 the residual's own distribution (dominated by its outlier
  directions), so the draws resemble the residual yet are as large as the span they stand for.
- `matched_neurons`: other neurons whose write at p has the tested neuron's magnitude,
  std_p(a)·‖W_out‖ within a factor MATCH — from the neuron's own layer first, then from the next
  layers when the own layer has too few. Never from a layer before L: such a neuron would act on
  the report partly *through* the tested neuron (it changes its input), so its null would contain
  the effect under test. Later layers are also closer to the report, which makes the null harder,
  not easier, to beat.
- `label_subspace`: the k directions of layer L's MLP input most predictive of the label
  (greedy ridge fits) orthogonal to the `W_in` span — does *any* label-bearing direction matter as
  much as the neuron's own?
- `derangement`: who donates to whom in an interchange (no text is its own donor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mechcheck.battery.context import Context
from mechcheck.battery.vectors import all_out_directions

MATCH = 2.0  # a comparison unit is matched when its size is within this factor of the tested one's
MAX_TRIES = 50  # rounds of candidates before settling for the nearest ones


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random cyclic permutation (Sattolo): no element maps to itself for n ≥ 2."""
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(i))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def span_variance(cov: np.ndarray, basis: np.ndarray) -> float:
    """Total variance of the residual inside span(basis) (orthonormal columns)."""
    return float(np.trace(basis.T @ cov @ basis))


def _power(eig: tuple[np.ndarray, np.ndarray], alpha: float) -> np.ndarray:
    """Σ^(α/2) from Σ's eigendecomposition `eig` = (values, vectors), computed once per Σ."""
    values, vectors = eig
    return (vectors * np.maximum(values, 0) ** (alpha / 2)) @ vectors.T


@dataclass
class Subspaces:
    bases: list[np.ndarray]  # [d, k] each
    variances: np.ndarray
    target: float
    alpha: float
    matched: int  # how many are within the factor (the rest are the nearest candidates)


def matched_subspaces(
    cov: np.ndarray, exclude: np.ndarray, k: int, n: int, rng: np.random.Generator
) -> Subspaces:
    """`n` random k-dim subspaces orthogonal to span(exclude), variance-matched to it (see module)."""
    d = cov.shape[0]
    target = span_variance(cov, exclude)
    comp = np.eye(d) - exclude @ exclude.T  # onto the complement of the tested span
    eig = np.linalg.eigh(cov)  # once: every candidate round reshapes by a power of the same Σ

    def candidates(alpha: float, m: int) -> tuple[list[np.ndarray], np.ndarray]:
        shaped = comp @ _power(eig, alpha)
        out, var = [], []
        for _ in range(m):
            q = np.linalg.qr(shaped @ rng.standard_normal((d, k)))[0]
            out.append(q)
            var.append(span_variance(cov, q))
        return out, np.array(var)

    lo, hi = 0.0, 1.0
    for _ in range(12):  # median variance rises with α: bisect for the target
        mid = (lo + hi) / 2
        _, var = candidates(mid, 16)
        lo, hi = (mid, hi) if np.median(var) < target else (lo, mid)
    alpha = (lo + hi) / 2
    kept, spare = [], []
    for _ in range(MAX_TRIES):
        bases, var = candidates(alpha, 4 * n)
        for b, v in zip(bases, var, strict=True):
            ratio = v / target if target > 0 else np.inf
            (kept if 1 / MATCH <= ratio <= MATCH else spare).append(b)
        if len(kept) >= n:
            break
    matched = min(len(kept), n)
    if matched < n:  # settle for the nearest candidates, and say so
        spare.sort(key=lambda b: abs(np.log(span_variance(cov, b) / target)))
        kept += spare[: n - matched]
    bases = kept[:n]
    return Subspaces(bases, np.array([span_variance(cov, b) for b in bases]), target, alpha, matched)


@dataclass
class Neurons:
    units: list[tuple[int, int]]  # (layer, index)
    magnitude: np.ndarray  # std_p · ‖W_out‖ of each
    target: float
    matched: int


def write_magnitudes(ctx: Context) -> np.ndarray:
    """std at p (trained model, eval texts) × ‖W_out‖ for every neuron of every layer. [layers, d_mlp]"""
    std = ctx.eval.units_p.double().std(0).cpu().numpy()  # [layers, d_mlp]
    norms = np.stack([all_out_directions(ctx.trained, layer).double().norm(dim=1).cpu().numpy()
                      for layer in range(ctx.trained.n_layers)])  # fmt: skip
    return std * norms


def matched_neurons(ctx: Context, n: int, rng: np.random.Generator, same_layer: bool = False) -> Neurons:
    """`n` neurons matched on write magnitude (see module); `same_layer` keeps to layer L."""
    mag = write_magnitudes(ctx)
    layer, index = ctx.layer, ctx.neuron.index
    target = float(mag[layer, index])
    if not target > 0:  # training silenced the neuron: match the size it had in the base model
        base_std = float(ctx.eval.base_units_p[:, index].double().std())
        target = base_std * float(all_out_directions(ctx.trained, layer)[index].double().norm())
    ratio = mag / target if target > 0 else np.full_like(mag, np.inf)
    ok = (ratio >= 1 / MATCH) & (ratio <= MATCH)
    for neuron in ctx.targets:
        ok[neuron.layer, neuron.index] = False
    order = [layer] if same_layer else list(range(layer, mag.shape[0]))  # never a layer before L
    units: list[tuple[int, int]] = []
    for ly in order:
        found = np.flatnonzero(ok[ly])
        take = rng.permutation(found)[: n - len(units)]
        units += [(ly, int(i)) for i in take]
        if len(units) >= n:
            break
    matched = len(units)
    if matched < n:  # the nearest magnitudes of the allowed layers, and say so
        allowed = np.zeros_like(ok)
        allowed[order] = True
        for neuron in ctx.targets:
            allowed[neuron.layer, neuron.index] = False
        gap = np.where(allowed & ~ok, np.abs(np.log(np.maximum(mag, 1e-30) / target)), np.inf)
        nearest = [f for f in np.argsort(gap, axis=None) if np.isfinite(gap.flat[f])]
        for flat in nearest[: n - matched]:  # a model too small for n draws gets fewer (and fails MIN_NULL)
            units.append(tuple(int(v) for v in np.unravel_index(flat, gap.shape)))
    return Neurons(units, np.array([mag[u] for u in units]), target, matched)


def label_subspace(x: np.ndarray, y: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """k orthonormal directions of `x` [n, d] most predictive of `y`, orthogonal to span(exclude):
    each a ridge fit on what the earlier ones and the excluded span leave. [d, k]"""
    from sklearn.linear_model import RidgeCV

    basis = exclude.copy()
    found = []
    for _ in range(k):
        proj = x - (x @ basis) @ basis.T
        w = RidgeCV(alphas=np.logspace(-3, 5, 17)).fit(proj, y).coef_
        w = w - basis @ (basis.T @ w)
        w /= np.linalg.norm(w)
        found.append(w)
        basis = np.concatenate([basis, w[:, None]], axis=1)
    return np.stack(found, axis=1)


def as_torch(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)
