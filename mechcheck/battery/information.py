"""Information about the label, and its uncertainty: r², Δr², shares, cluster bootstrap, rank p, BH.

The battery's deciding quantity is the information an edit removes from the report about the
label, `Δr² = r²(label, report_clean) − r²(label, report_edited)`, with r² the squared Pearson
correlation: a shift or rescale of the report costs nothing, so an edit that only pushes the
report (the first battery's mistake) scores zero. `share = Δr² / r²(label, report_clean)` is the
fraction of the report's label information the edit removed.

Uncertainty. Texts from one article are not independent, and with several training seeds the
seeds are the top level, so the bootstrap is a *cluster* bootstrap: seeds are resampled, then
articles within each seed (a two-stage bootstrap, Davison & Hinkley 1997 §3.8). `scipy.stats.
bootstrap` resamples observations of one level only, so `Resampler` draws the multinomial weights
itself (one matrix per seed, no Python loop over replicates) and every statistic of a battery is
evaluated on the *same* replicates — the share, its specificity against a control head and the
effect itself stay paired. Percentile intervals.

Nulls. An effect is compared with the same edit applied to matched comparison units (draws) on the
same texts; its p-value is its rank among them, `(1 + #{null ≥ effect}) / (1 + n)` — exact for
exchangeable draws and never below `1 / (n + 1)`. Multiple tests: Benjamini–Hochberg
(`scipy.stats.false_discovery_control`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

# --- r² from moments ------------------------------------------------------------------------
MOMENTS = ("n", "y", "yy", "a", "aa", "ya")  # sums over texts: 1, y, y², a, a², y·a


def moments(y: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Per-text moments of (label y, report a) for r²: `[..., n_texts, 6]` (a may carry leading axes)."""
    y = np.broadcast_to(np.asarray(y, np.float64), np.shape(a))
    a = np.asarray(a, np.float64)
    return np.stack([np.ones_like(a), y, y * y, a, a * a, y * a], axis=-1)


def r2_from_moments(m: np.ndarray) -> np.ndarray:
    """Squared Pearson correlation from summed moments `[..., 6]` (0 when either side is constant)."""
    n, y, yy, a, aa, ya = (m[..., i] for i in range(6))
    cov = ya / n - (y / n) * (a / n)
    var_y = yy / n - (y / n) ** 2
    var_a = aa / n - (a / n) ** 2
    denom = var_y * var_a
    ok = denom > 1e-300 * np.maximum(1.0, np.abs(cov))
    return np.where(ok, cov**2 / np.where(ok, denom, 1.0), 0.0)


def r2(y: np.ndarray, a: np.ndarray) -> np.ndarray:
    """r²(y, a) along the last axis (vectorised over leading axes of `a`)."""
    return r2_from_moments(moments(y, a).sum(-2))


# --- the cluster bootstrap ------------------------------------------------------------------
@dataclass
class Resampler:
    """Two-stage bootstrap weights: seeds, then groups (articles) within each seed.

    `groups[s]` labels the texts of seed s (texts of one group are resampled together). For one
    seed the first stage is the identity. `weights[s]` is `[n_boot, n_texts_s]`: how often each text
    of seed s appears in each replicate; `seed_counts` is `[n_boot, n_seeds]`.
    """

    groups: list[np.ndarray]
    n_boot: int
    seed: int

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        n_seeds = len(self.groups)
        if n_seeds > 1:
            picks = rng.integers(n_seeds, size=(self.n_boot, n_seeds))
            self.seed_counts = np.stack([np.bincount(p, minlength=n_seeds) for p in picks]).astype(float)
        else:
            self.seed_counts = np.ones((self.n_boot, 1))
        self.weights = []
        for g in self.groups:
            _, inverse = np.unique(np.asarray(g), return_inverse=True)
            n_groups = int(inverse.max()) + 1
            draws = rng.integers(n_groups, size=(self.n_boot, n_groups))
            per_group = np.stack([np.bincount(d, minlength=n_groups) for d in draws]).astype(float)
            self.weights.append(per_group[:, inverse])  # [n_boot, n_texts]

    @property
    def n_seeds(self) -> int:
        return len(self.groups)

    def replicates(self, statistic: Callable[[list[np.ndarray]], np.ndarray], per_text: list[np.ndarray]):
        """Bootstrap replicates of a seed-averaged statistic. `per_text[s]` is `[n_texts_s, ...]`
        (per-text moments of seed s); `statistic(sums)` maps summed moments `[..., k]` to values.
        Returns (point estimate, replicates `[n_boot, ...]`)."""
        point = np.mean([statistic(x.sum(0)) for x in per_text], axis=0)
        per_seed = [
            statistic(np.tensordot(w, x, axes=(1, 0))) for w, x in zip(self.weights, per_text, strict=True)
        ]
        stacked = np.stack(per_seed, axis=1)  # [n_boot, n_seeds, ...]
        counts = self.seed_counts.reshape(self.seed_counts.shape + (1,) * (stacked.ndim - 2))
        return point, (stacked * counts).sum(1) / counts.sum(1)


def interval(replicates: np.ndarray, ci: float) -> list[float]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored)."""
    tail = (1 - ci) / 2
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    return [float(np.quantile(finite, tail)), float(np.quantile(finite, 1 - tail))]


def metric(value: float, ci: Sequence[float], **extra: Any) -> dict[str, Any]:
    """A metric entry: `{"value", "ci": [lo, hi], ...}` as plain floats."""
    return {"value": float(value), "ci": [float(ci[0]), float(ci[1])], **extra}


# --- nulls and multiple tests -----------------------------------------------------------------
def rank_p(effect: float, null: Sequence[float]) -> float:
    """One-sided rank p-value of `effect` among exchangeable null draws: (1 + #{null ≥ effect}) / (1 + n)."""
    null = np.asarray([v for v in null if np.isfinite(v)], np.float64)
    if not np.isfinite(effect) or null.size == 0:
        return 1.0
    return float((1 + np.sum(null >= effect)) / (1 + null.size))


def bh(pvalues: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg q-values."""
    if len(pvalues) == 0:
        return []
    p = np.clip(np.asarray(pvalues, np.float64), 0.0, 1.0)
    return [float(q) for q in stats.false_discovery_control(p, method="bh")]


def null_summary(null: Sequence[float], effect: float) -> dict[str, Any]:
    """A null's sample with its mean, 95th percentile, and the effect's rank p among it."""
    values = np.asarray([v for v in null if np.isfinite(v)], np.float64)
    if values.size == 0:
        nan = float("nan")
        return {"n": 0, "mean": nan, "p95": nan, "max": nan, "p": 1.0, "null": []}
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "p95": float(np.quantile(values, 0.95)),
        "max": float(values.max()),
        "p": rank_p(effect, values),
        "null": [float(v) for v in values],
    }
