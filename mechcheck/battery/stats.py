"""Statistics for the battery: bootstrap CIs, null comparisons, permutation tests, BH, seed aggregation.

Every confidence interval is a percentile bootstrap (`scipy.stats.bootstrap`) over the
evaluation examples' precomputed per-example values, so it is cheap. A null comparison places
an effect in the distribution of the same effect for random neurons or directions: its
percentile, the null's upper quantile, and a predictive p-value (the chance that one more draw
from the null, modelled as Student-t with the null's mean and spread, is at least the effect).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

NULL_UPPER = 0.95  # the null quantile an effect must clear


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


def group_sums(groups: np.ndarray | None, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-group sums of each column plus the group sizes (the bootstrap resamples groups = texts)."""
    columns = tuple(np.asarray(c, dtype=np.float64) for c in columns)
    if groups is None:
        return (np.ones_like(columns[0]), *columns)
    _, inverse = np.unique(groups, return_inverse=True)
    size = int(inverse.max()) + 1
    return tuple(
        np.bincount(inverse, weights=c, minlength=size) for c in (np.ones_like(columns[0]), *columns)
    )


def _ratio_of_sums(count: np.ndarray, total: np.ndarray, axis: int = -1) -> np.ndarray:
    return total.sum(axis) / count.sum(axis)


def mean_metric(
    values: np.ndarray, n_resamples: int, ci: float, seed: int, groups: np.ndarray | None = None
) -> dict[str, Any]:
    """Mean of per-example values with its bootstrap CI (resampling texts when `groups` is given)."""
    values = np.asarray(values, dtype=np.float64)
    sums = group_sums(groups, values)
    return metric(
        values.mean(), bootstrap_ci(_ratio_of_sums, *sums, n_resamples=n_resamples, ci=ci, seed=seed)
    )


def r2(pred: np.ndarray, target: np.ndarray, axis: int = -1) -> np.ndarray:
    """Coefficient of determination 1 - MSE/Var(target) along `axis` (vectorised; Var 0 gives -inf/0)."""
    resid = ((pred - target) ** 2).sum(axis)
    total = ((target - target.mean(axis, keepdims=True)) ** 2).sum(axis)
    return 1.0 - resid / np.where(total > 0, total, np.inf)


def _r2_from_sums(count, sum_y, sum_y2, sse, axis: int = -1) -> np.ndarray:
    n = count.sum(axis)
    var = sum_y2.sum(axis) / n - (sum_y.sum(axis) / n) ** 2
    return 1.0 - (sse.sum(axis) / n) / np.where(var > 0, var, np.inf)


def r2_metric(
    pred: np.ndarray,
    target: np.ndarray,
    n_resamples: int,
    ci: float,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """R² of `pred` against `target` with a bootstrap CI over examples (texts when `groups` is given)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    sums = group_sums(groups, target, target**2, (pred - target) ** 2)
    lo_hi = bootstrap_ci(_r2_from_sums, *sums, n_resamples=n_resamples, ci=ci, seed=seed)
    return metric(r2(pred, target), lo_hi)


def _skill_change_from_sums(count, sum_y, sum_y2, sse_new, sse_old, axis: int = -1) -> np.ndarray:
    n = count.sum(axis)
    var = sum_y2.sum(axis) / n - (sum_y.sum(axis) / n) ** 2
    return ((sse_old.sum(axis) - sse_new.sum(axis)) / n) / np.where(var > 0, var, np.inf)


def skill_change_metric(
    new: np.ndarray, old: np.ndarray, target: np.ndarray, n_resamples: int, ci: float, seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:  # fmt: skip
    """R²(new) − R²(old) against the same target, with a paired bootstrap CI."""
    new, old, target = (np.asarray(a, np.float64) for a in (new, old, target))
    sums = group_sums(groups, target, target**2, (new - target) ** 2, (old - target) ** 2)
    lo_hi = bootstrap_ci(_skill_change_from_sums, *sums, n_resamples=n_resamples, ci=ci, seed=seed)
    return metric(r2(new, target) - r2(old, target), lo_hi)


def _std_ratio_from_sums(count, sum_a, sum_a2, sum_b, sum_b2, axis: int = -1) -> np.ndarray:
    n = count.sum(axis)
    var_a = np.maximum(sum_a2.sum(axis) / n - (sum_a.sum(axis) / n) ** 2, 0)
    var_b = np.maximum(sum_b2.sum(axis) / n - (sum_b.sum(axis) / n) ** 2, 0)
    return np.sqrt(var_a / np.where(var_b > 0, var_b, np.nan))


def std_ratio_metric(
    after: np.ndarray, before: np.ndarray, n_resamples: int, ci: float, seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:  # fmt: skip
    """std(after) / std(before) on the same inputs, with a paired bootstrap CI."""
    after, before = np.asarray(after, np.float64), np.asarray(before, np.float64)
    ratio = after.std() / before.std() if before.std() > 0 else float("nan")
    sums = group_sums(groups, after, after**2, before, before**2)
    return metric(ratio, bootstrap_ci(_std_ratio_from_sums, *sums, n_resamples=n_resamples, ci=ci, seed=seed))


def _r2_gap_from_sums(count, y, y2, sse, c, c2, ssec, axis: int = -1) -> np.ndarray:
    return _r2_from_sums(count, y, y2, sse, axis) - _r2_from_sums(count, c, c2, ssec, axis)


def r2_gap_metric(
    pred: np.ndarray, target: np.ndarray, pred_c: np.ndarray, target_c: np.ndarray, n_resamples: int,
    ci: float, seed: int, groups: np.ndarray | None = None,
) -> dict[str, Any]:  # fmt: skip
    """R²(pred, target) − R²(pred_c, target_c) on the same examples (selectivity), paired CI."""
    a = [np.asarray(v, np.float64) for v in (pred, target, pred_c, target_c)]
    sums = group_sums(groups, a[1], a[1] ** 2, (a[0] - a[1]) ** 2, a[3], a[3] ** 2, (a[2] - a[3]) ** 2)
    lo_hi = bootstrap_ci(_r2_gap_from_sums, *sums, n_resamples=n_resamples, ci=ci, seed=seed)
    return metric(r2(a[0], a[1]) - r2(a[2], a[3]), lo_hi)


def null_pvalue(value: float, null: np.ndarray) -> float:
    """Predictive one-sided p-value of `value` under a null sample (Student-t, n-1 df)."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if len(null) < 2 or not np.isfinite(value):
        return 1.0
    spread = null.std(ddof=1) * np.sqrt(1 + 1 / len(null))
    if spread == 0:
        return 0.0 if value > null.mean() else 1.0
    return float(stats.t.sf((value - null.mean()) / spread, df=len(null) - 1))


def null_control(
    value: float, null: Sequence[float], compares: str, ci: float = 0.95, use_abs: bool = False
) -> dict[str, Any]:
    """A control entry: the null's mean, central interval and upper quantile, and where the observed
    `value` of metric `compares` falls in it (percentile, predictive p)."""
    null = np.asarray([v for v in null if np.isfinite(v)], dtype=np.float64)
    value = abs(value) if use_abs else value
    extra = {"abs": True} if use_abs else {}
    if len(null) == 0:
        nan = float("nan")
        return {"value": nan, "ci": [nan, nan], "null": [], "upper": nan, "observed": float(value),
                "percentile": nan, "p": 1.0, "compares": compares, **extra}  # fmt: skip
    tail = (1 - ci) / 2
    return {
        "value": float(null.mean()),
        "ci": [float(np.quantile(null, tail)), float(np.quantile(null, 1 - tail))],
        "null": [float(v) for v in null],
        "upper": float(np.quantile(null, NULL_UPPER)),
        "lower": float(np.quantile(null, 1 - NULL_UPPER)),
        "observed": float(value),
        "percentile": float((null < value).mean() + 0.5 * (null == value).mean()),
        "p": null_pvalue(value, null),
        "compares": compares,
        **extra,
    }


def correlation_pvalue(pred: np.ndarray, target: np.ndarray, seed: int, n_resamples: int = 999) -> float:
    """Permutation test (`scipy.stats.permutation_test`) that `pred` correlates positively with `target`."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if np.ptp(pred) == 0 or np.ptp(target) == 0:
        return 1.0

    def corr(x: np.ndarray, axis: int = -1) -> np.ndarray:
        xc = x - x.mean(axis, keepdims=True)
        yc = target - target.mean()
        return (xc * yc).sum(axis) / np.sqrt((xc**2).sum(axis) * (yc**2).sum())

    res = stats.permutation_test(
        (pred,), corr, permutation_type="pairings", n_resamples=n_resamples, alternative="greater",
        vectorized=True, rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(res.pvalue)


def bh_adjust(pvalues: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg q-values (`scipy.stats.false_discovery_control`)."""
    if len(pvalues) == 0:
        return []
    p = np.clip(np.asarray(pvalues, dtype=np.float64), 0.0, 1.0)
    return [float(q) for q in stats.false_discovery_control(p, method="bh")]


def slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of `y` [n, k] against `x` [k]."""
    xc = np.asarray(x, np.float64) - np.mean(x)
    denom = (xc**2).sum()
    return (np.asarray(y, np.float64) - np.mean(y, axis=-1, keepdims=True)) @ xc / denom


# --- aggregation over seeds ------------------------------------------------------------------
def aggregate_metrics(per_seed: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Mean value over seeds; CI = envelope [min lo, max hi] (a claim must hold for every seed)."""
    out: dict[str, dict[str, Any]] = {}
    for key in per_seed[0]:
        entries = [m[key] for m in per_seed if key in m]
        values = [e["value"] for e in entries]
        out[key] = {
            "value": float(np.mean(values)),
            "ci": [float(min(e["ci"][0] for e in entries)), float(max(e["ci"][1] for e in entries))],
        }
        if len(entries) > 1:
            out[key]["seeds"] = [float(v) for v in values]
    return out


def aggregate_controls(
    per_seed: Sequence[dict[str, dict[str, Any]]], metrics: dict[str, dict[str, Any]], ci: float
) -> dict[str, dict[str, Any]]:
    """Pool each control's null over seeds and place the aggregated metric in it."""
    out: dict[str, dict[str, Any]] = {}
    for key, first in per_seed[0].items():
        entries = [c[key] for c in per_seed if key in c]
        if "null" in first:
            pooled = [v for e in entries for v in e["null"]]
            target = metrics.get(first.get("compares", ""), {}).get("value", float("nan"))
            out[key] = null_control(target, pooled, first.get("compares", ""), ci, bool(first.get("abs")))
        else:
            out[key] = aggregate_metrics([{key: e} for e in entries])[key]
            out[key].update({k: v for k, v in first.items() if k not in ("value", "ci")})
    return out
