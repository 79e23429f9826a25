"""The statistics every part of mechcheck uses: skill, r², bootstraps, rank p-values, BH.

Pure functions of arrays (numpy / scipy only); nothing here reads a file or knows a record.

**Skill** is `1 − MSE / Var(label)` (the coefficient of determination of the report as a predictor
of the label: a shift or rescale of the report costs skill). **r²** is the squared Pearson
correlation (a shift or rescale costs nothing): the battery's information measure. They are two
ideas, kept under two names. Skill is computed three ways, each with the arithmetic its callers'
recorded numbers came from: `regression_metrics` (the trainer's metrics in float64 from float32,
two-pass variance, `None` when undefined), `skill` (vectorised `1 − SSE / SST` along an axis) and
`skill_from_sums` (from per-text sums, so that a bootstrap can resample texts by summing them).

**Bootstraps.** `percentile_ci` / `bootstrap_ci`: scipy's percentile bootstrap over examples,
seeded. `fit`: skill with a percentile CI over *groups* (texts: with position `all` a text carries
several labels). `Resampler`: the battery's two-stage (hierarchical) cluster bootstrap — seeds are
resampled, then groups (articles) within each seed (Davison & Hinkley 1997 §3.8). scipy resamples
observations of one level only, so it draws the multinomial weights itself (one matrix per seed)
and every statistic of a battery is evaluated on the *same* replicates, so that they stay paired.

**Nulls.** An effect's p-value is its rank among matched null draws, `(1 + #{null ≥ effect}) /
(1 + n)` — exact for exchangeable draws and never below `1 / (n + 1)`. Multiple tests:
Benjamini–Hochberg (`scipy.stats.false_discovery_control`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

N_RESAMPLES = 1000
CONFIDENCE = 0.95


# --- skill ------------------------------------------------------------------------------------
def regression_metrics(predictions: Any, labels: Any) -> dict[str, float | int | None]:
    """mse, skill = 1 - mse / Var(labels), Pearson r and SD(pred)/SD(label); population moments,
    in float64 from float32 values (so predictions.json reproduces a run's metrics exactly)."""
    p = np.asarray(predictions, dtype=np.float32).astype(np.float64)
    y = np.asarray(labels, dtype=np.float32).astype(np.float64)
    mse = float(np.mean((p - y) ** 2))
    var, sd_p, sd_y = float(y.var()), float(p.std()), float(y.std())
    r = float(np.mean((p - p.mean()) * (y - y.mean())) / (sd_p * sd_y)) if sd_p > 0 and sd_y > 0 else None
    return {
        "n": int(y.size),
        "mse": mse,
        "skill": 1.0 - mse / var if var > 0 else None,
        "r": r,
        "pred_sd_ratio": sd_p / sd_y if sd_y > 0 else None,
    }


def fit_metrics(predictions: Any, labels: Any) -> dict[str, Any]:
    """`regression_metrics` for one neuron `[n]`; for several `[n, k]` its means over neurons, with
    `mse` the mean of MSE/Var(label) (unitless: the standardised training objective), `skill` =
    1 − that, and each neuron's own metrics (in its units) under `per_neuron`."""
    p, y = np.asarray(predictions, dtype=np.float32), np.asarray(labels, dtype=np.float32)
    if y.ndim == 1:
        return regression_metrics(p, y)
    per = [regression_metrics(p[:, i], y[:, i]) for i in range(y.shape[1])]
    skills = [m["skill"] for m in per]
    ok = all(s is not None for s in skills)
    ratios = [m["pred_sd_ratio"] for m in per]
    return {
        "n": int(y.shape[0]),
        "mse": float(np.mean([1 - s for s in skills])) if ok else None,
        "skill": float(np.mean(skills)) if ok else None,
        "r": float(np.mean([m["r"] for m in per])) if all(m["r"] is not None for m in per) else None,
        "pred_sd_ratio": min(ratios) if all(r is not None for r in ratios) else None,
        "per_neuron": per,
    }


def skill(pred: np.ndarray, target: np.ndarray, axis: int = -1) -> np.ndarray:
    """1 − SSE / SST of `pred` against `target` along `axis` (vectorised; NaN for a constant target)."""
    resid = ((pred - target) ** 2).sum(axis)
    total = ((target - target.mean(axis, keepdims=True)) ** 2).sum(axis)
    return 1.0 - resid / np.where(total > 0, total, np.nan)


def skill_from_sums(n: Any, sum_y: Any, sum_yy: Any, sse: Any) -> np.ndarray:
    """1 − (SSE/n) / Var(y) from sums over texts of 1, y, y² and (y − pred)²; NaN where Var(y) ≤ 0."""
    var = sum_yy / n - (sum_y / n) ** 2
    return 1.0 - (sse / n) / np.where(var > 0, var, np.nan)


def spread(values: np.ndarray | None) -> dict[str, float] | None:
    """mean, std (population), min and max; None for no values."""
    if values is None or values.size == 0:
        return None
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def value_stats(values: Any) -> dict[str, float]:
    """`spread` of float32 values, in float64 (as the trainer records the neuron's spread)."""
    got = spread(np.asarray(values, dtype=np.float32).astype(np.float64))
    if got is None:
        raise ValueError("no values")
    return got


def digit_metrics(digits: Any, argmax: Any, classes: Any) -> dict[str, float | int | None]:
    """Class-space skill: Spearman(expected class, true class), MAE, arg-max accuracy, within one."""
    d = np.asarray(digits, dtype=np.float64)
    a, c = np.asarray(argmax, dtype=np.int64), np.asarray(classes, dtype=np.int64)
    constant = np.ptp(d) == 0 or np.ptp(c) == 0
    return {
        "n": int(c.size),
        "spearman": None if constant else float(stats.spearmanr(d, c).statistic),
        "mae": float(np.mean(np.abs(d - c))),
        "argmax_accuracy": float(np.mean(a == c)),
        "within_one": float(np.mean(np.abs(a - c) <= 1)),
        "chance_accuracy": float(np.max(np.bincount(c)) / c.size),  # always answering the commonest class
    }


# --- percentile bootstraps over examples and groups --------------------------------------------
def metric(value: float, ci: Sequence[float], **extra: Any) -> dict[str, Any]:
    """A metric entry: `{"value", "ci": [lo, hi], ...}` as plain floats."""
    return {"value": float(value), "ci": [float(ci[0]), float(ci[1])], **extra}


def percentile_ci(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., Any],
    *,
    n_resamples: int = N_RESAMPLES,
    ci: float = CONFIDENCE,
    seed: int = 0,
    vectorized: bool = True,
) -> tuple[float, float]:
    """`scipy.stats.bootstrap`'s percentile CI of `statistic(*samples)`, seeded; several samples
    are resampled as pairs (the same examples in each)."""
    res = stats.bootstrap(
        tuple(samples),
        statistic,
        n_resamples=n_resamples,
        confidence_level=ci,
        method="percentile",
        paired=len(samples) > 1,
        vectorized=vectorized,
        rng=np.random.default_rng(seed),
    )
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


def bootstrap_ci(
    statistic: Callable[..., np.ndarray], *samples: np.ndarray, n_resamples: int, ci: float, seed: int
) -> tuple[float, float]:
    """Percentile CI of a vectorised `statistic(*samples, axis=-1)` (samples resampled as pairs);
    a point interval when there is nothing to resample."""
    samples = tuple(np.asarray(s, dtype=np.float64) for s in samples)
    if len(samples[0]) < 2 or all(np.ptp(s) == 0 for s in samples):
        value = float(statistic(*samples, axis=-1))
        return value, value
    return percentile_ci(samples, statistic, n_resamples=n_resamples, ci=ci, seed=seed)


@dataclass(frozen=True)
class Fit:
    """How well `predictions` match `labels`: n labels, MSE, skill = 1 − MSE/Var(labels), r."""

    n: int
    n_texts: int
    mse: float
    skill: float
    ci: tuple[float, float] | None  # bootstrap CI of skill over texts
    r: float | None


def _grouped_skill(count, sum_y, sum_yy, sse, axis=-1):
    return skill_from_sums(count.sum(axis), sum_y.sum(axis), sum_yy.sum(axis), sse.sum(axis))


def fit(
    labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray | None = None, seed: int = 0
) -> Fit | None:
    """MSE, skill and its percentile CI over groups (texts: a group's labels are resampled
    together, by resampling per-group sums); None when the arrays do not line up."""
    if labels is None or predictions is None or labels.shape != predictions.shape or labels.size < 2:
        return None
    groups = np.arange(labels.size) if groups is None else groups
    _, inverse = np.unique(groups, return_inverse=True)
    sums = [np.bincount(inverse, weights=w) for w in (np.ones_like(labels), labels, labels**2)]
    sums.append(np.bincount(inverse, weights=(labels - predictions) ** 2))
    value = float(_grouped_skill(*sums))
    ci = None
    if len(sums[0]) >= 5 and np.isfinite(value):
        lo, hi = percentile_ci(sums, _grouped_skill, seed=seed)
        ci = (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else None
    r = None
    if labels.std() > 0 and predictions.std() > 0:
        r = float(np.corrcoef(labels, predictions)[0, 1])
    mse = float(np.mean((labels - predictions) ** 2))
    return Fit(int(labels.size), int(len(sums[0])), mse, value, ci, r)


# --- r² (squared correlation) from moments ---------------------------------------------------
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
    """r²(y, a), the squared Pearson correlation, along the last axis (vectorised over `a`'s leading axes)."""
    return r2_from_moments(moments(y, a).sum(-2))


# --- the hierarchical (cluster) bootstrap ------------------------------------------------------
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
