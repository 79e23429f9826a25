"""Numbers the report computes itself from saved predictions: skill with a bootstrap CI, spreads.

The bootstrap resamples *texts* (for position `all` a text carries several labels), via
`scipy.stats.bootstrap` over per-text sums, seeded so a re-render gives the same interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

N_RESAMPLES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Fit:
    """How well `predictions` match `labels`: n labels, MSE, skill = 1 − MSE/Var(labels), r."""

    n: int
    n_texts: int
    mse: float
    skill: float
    ci: tuple[float, float] | None  # bootstrap CI of skill over texts
    r: float | None


def array(pred: dict[str, Any], name: str) -> np.ndarray | None:
    values = pred.get(name)
    if not isinstance(values, list) or not values:
        return None
    out = np.asarray(values, dtype=np.float64)
    return out if out.ndim == 1 else None


COLUMNS = ("labels", "live_labels", "predictions", "predictions_before")


def column(predictions: dict[str, Any], i: int) -> dict[str, Any]:
    """Neuron i's own predictions.json (as a one-neuron run writes it) from a several-neuron one,
    whose arrays are rows of k values in the order of its `neurons`."""
    p = predictions
    out = {k: v for k, v in p.items() if k not in (*COLUMNS, "neurons")}
    out |= {k: [row[i] for row in p[k]] for k in COLUMNS if isinstance(p.get(k), list)}
    return out | {"neuron": p["neurons"][i]}


def _groups(pred: dict[str, Any], n: int) -> np.ndarray:
    index = pred.get("text_index")
    if isinstance(index, list) and len(index) == n:
        return np.asarray(index)
    return np.arange(n)


def _skill_from_sums(count, sum_y, sum_y2, sse, axis=-1):
    n = count.sum(axis)
    var = sum_y2.sum(axis) / n - (sum_y.sum(axis) / n) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - (sse.sum(axis) / n) / var


def fit(
    labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray | None = None, seed: int = 0
) -> Fit | None:
    """MSE, skill and its bootstrap CI over texts; None when the arrays do not line up."""
    if labels is None or predictions is None or labels.shape != predictions.shape or labels.size < 2:
        return None
    groups = np.arange(labels.size) if groups is None else groups
    _, inverse = np.unique(groups, return_inverse=True)
    sums = [np.bincount(inverse, weights=w) for w in (np.ones_like(labels), labels, labels**2)]
    sums.append(np.bincount(inverse, weights=(labels - predictions) ** 2))
    skill = float(_skill_from_sums(*sums))
    ci = None
    if len(sums[0]) >= 5 and np.isfinite(skill):
        res = stats.bootstrap(
            tuple(sums),
            _skill_from_sums,
            paired=True,
            vectorized=True,
            n_resamples=N_RESAMPLES,
            confidence_level=CONFIDENCE,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        lo, hi = res.confidence_interval
        ci = (float(lo), float(hi)) if np.isfinite(lo) and np.isfinite(hi) else None
    r = None
    if labels.std() > 0 and predictions.std() > 0:
        r = float(np.corrcoef(labels, predictions)[0, 1])
    mse = float(np.mean((labels - predictions) ** 2))
    return Fit(int(labels.size), int(len(sums[0])), mse, skill, ci, r)


def prediction_fits(pred: dict[str, Any], seed: int = 0) -> dict[str, Fit]:
    """Fits of the saved predictions: after and before training, against fixed and live labels."""
    labels, live = array(pred, "labels"), array(pred, "live_labels")
    after, before = array(pred, "predictions"), array(pred, "predictions_before")
    n = labels.size if labels is not None else 0
    groups = _groups(pred, n)
    target = live if pred.get("target") == "live_labels" else labels
    pairs = {
        "after_vs_fixed": (labels, after),
        "before_vs_fixed": (labels, before),
        "after_vs_live": (live, after),
        "after_vs_target": (target, after),
    }
    found = {}
    for name, (y, p) in pairs.items():
        got = fit(y, p, groups if y is not None and y.size == n else None, seed)
        if got is not None:
            found[name] = got
    return found


def target_key(pred: dict[str, Any]) -> str:
    """Which saved labels the run was trained and scored against: `labels` (fixed) or `live_labels`."""
    return "live_labels" if pred.get("target") == "live_labels" else "labels"


def spread(values: np.ndarray | None) -> dict[str, float] | None:
    if values is None or values.size == 0:
        return None
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def stale_fraction(pred: dict[str, Any]) -> float | None:
    """MSE between the fixed labels and the trained model's own neuron, over the label variance."""
    labels, live = array(pred, "labels"), array(pred, "live_labels")
    if labels is None or live is None or labels.shape != live.shape or labels.var() == 0:
        return None
    return float(np.mean((labels - live) ** 2) / labels.var())


def std_ratio(pred: dict[str, Any]) -> float | None:
    """The neuron's std on the test texts, trained model over original model."""
    labels, live = array(pred, "labels"), array(pred, "live_labels")
    if labels is None or live is None or labels.std() == 0:
        return None
    return float(live.std() / labels.std())


def pooled_fit(preds_by_seed: dict[int, dict[str, Any]], seed: int = 0) -> Fit | None:
    """Report vs its training target, all seeds pooled; the bootstrap resamples texts (all their seeds)."""
    labels, after, groups = [], [], []
    for pred in preds_by_seed.values():
        y, p = array(pred, target_key(pred)), array(pred, "predictions")
        if y is None or p is None or y.shape != p.shape:
            continue
        texts = pred.get("texts")
        index = _groups(pred, y.size)
        names = [texts[i] for i in index] if isinstance(texts, list) and len(texts) > index.max() else index
        labels.append(y)
        after.append(p)
        groups += list(map(str, names))
    if not labels:
        return None
    return fit(np.concatenate(labels), np.concatenate(after), np.asarray(groups), seed)
