"""Percentile bootstrap over examples (`scipy.stats.bootstrap`), for the cross-prediction matrix.

The battery's own statistics (Δr², cluster bootstrap over seeds and articles, rank p) live in
`mechcheck.battery.information`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats


def metric(value: float, ci: Sequence[float]) -> dict[str, Any]:
    """A metric entry: `{"value", "ci": [lo, hi]}` as plain floats."""
    return {"value": float(value), "ci": [float(ci[0]), float(ci[1])]}


def bootstrap_ci(
    statistic: Callable[..., np.ndarray],
    *samples: np.ndarray,
    n_resamples: int,
    ci: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile CI of a vectorised `statistic(*samples, axis=-1)` (samples resampled as pairs)."""
    samples = tuple(np.asarray(s, dtype=np.float64) for s in samples)
    if len(samples[0]) < 2 or all(np.ptp(s) == 0 for s in samples):
        value = float(statistic(*samples, axis=-1))
        return value, value
    res = stats.bootstrap(
        samples,
        statistic,
        n_resamples=n_resamples,
        confidence_level=ci,
        method="percentile",
        paired=len(samples) > 1,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


def r2(pred: np.ndarray, target: np.ndarray, axis: int = -1) -> np.ndarray:
    """Coefficient of determination 1 - MSE/Var(target) along `axis` (vectorised; Var 0 gives -inf/0)."""
    resid = ((pred - target) ** 2).sum(axis)
    total = ((target - target.mean(axis, keepdims=True)) ** 2).sum(axis)
    return 1.0 - resid / np.where(total > 0, total, np.inf)
