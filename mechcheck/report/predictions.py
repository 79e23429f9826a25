"""Numbers the report computes itself from saved predictions (predictions.json): fits, stale labels.

Skill and its bootstrap CI come from `mechcheck.stats.fit`, which resamples *texts* (for position
`all` a text carries several labels), seeded so a re-render gives the same interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck.stats import Fit, fit


def array(pred: dict[str, Any], name: str) -> np.ndarray | None:
    values = pred.get(name)
    if not isinstance(values, list) or not values:
        return None
    out = np.asarray(values, dtype=np.float64)
    return out if out.ndim == 1 else None


def _groups(pred: dict[str, Any], n: int) -> np.ndarray:
    index = pred.get("text_index")
    if isinstance(index, list) and len(index) == n:
        return np.asarray(index)
    return np.arange(n)


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
