"""The `frozen` condition's fast path: cache the features once, fit the readout in seconds.

The model never changes, so its final normed residual at the report positions is computed
once and cached on disk (safetensors, keyed by sha256 of the model weights, the texts, the
position, the token limit and the batching). On the cache two readouts are fitted: closed-form
ridge (scikit-learn, standardised features and labels, alpha chosen on validation MSE) and SGD
through the one training loop; the checkpoint keeps the better on validation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mechcheck.offline import cache_root
from mechcheck.readout import LinearReadout
from mechcheck.stats import fit_metrics
from mechcheck.subject import Subject
from mechcheck.targets import SPLITS, TargetSet
from mechcheck.tensor_cache import content_key, load_or_compute, model_digest
from mechcheck.train.sources import Chunks, final_norm_features

CACHE_VERSION = "mechcheck-features/1"
ALPHA_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)  # multiplied by train.ridge_alpha


def default_cache_dir() -> Path:
    return cache_root() / "features"


def feature_key(subject: Subject, targets: TargetSet, batch_size: int) -> str:
    head = {"version": CACHE_VERSION, "position": targets.position, "max_tokens": targets.max_tokens}
    head |= {"batch_size": batch_size, "model": model_digest(subject.model), "site": "final_norm"}
    return content_key(head, *([split, list(targets.texts(split))] for split in SPLITS))


def cached_features(
    subject: Subject,
    targets: TargetSet,
    chunks: Chunks,
    cache_dir: Path | None,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Final-norm features per split `[n_rows, d_model]`, from the cache when it has them."""
    start = time.perf_counter()
    batch_size = len(chunks["train"][0].ids)
    key = feature_key(subject, targets, batch_size)
    file = Path(cache_dir) / f"{key}.safetensors" if cache_dir is not None else None

    def compute() -> dict[str, torch.Tensor]:
        return {
            s: final_norm_features(subject, chunks[s], targets.position, progress, desc=f"features {s}")
            for s in SPLITS
        }

    def valid(features: dict[str, torch.Tensor]) -> bool:
        return all(features[s].shape[0] == len(targets.labels(s)) for s in SPLITS)

    meta = {"format": CACHE_VERSION, "key": key}
    features, cached = load_or_compute(file, compute, valid, meta)
    info = {"key": key, "file": str(file) if file else None, "cached": cached}
    return features, {**info, "seconds": time.perf_counter() - start}


def fit_ridge(
    features: dict[str, torch.Tensor], targets: TargetSet, alpha_scale: float = 1.0
) -> tuple[LinearReadout, dict[str, Any]]:
    """Closed-form ridge on standardised features and labels, alpha chosen on validation MSE.

    Returns a readout in standardised-label units (the scaler is folded into its weights)."""
    start = time.perf_counter()
    with threadpool_limits(limits=1):  # one BLAS thread: the same numbers on every run
        readout, tried = _ridge_path(features, targets, alpha_scale)
    alpha = min(tried, key=lambda t: t["val_mse"])["alpha"]
    info = {
        "alpha": alpha,
        "alphas": tried,
        **{split: _metrics(readout, features, targets, split) for split in SPLITS},
        "seconds": time.perf_counter() - start,
    }
    return readout, info


def _ridge_path(
    features: dict[str, torch.Tensor], targets: TargetSet, alpha_scale: float
) -> tuple[LinearReadout, list[dict[str, float]]]:
    x_train = features["train"].double().numpy()
    y_train = targets.standardise(targets.labels("train").double()).numpy()
    scaler = StandardScaler().fit(x_train)
    x_scaled = scaler.transform(x_train)
    tried, best = [], None
    for alpha in (alpha_scale * a for a in ALPHA_GRID):
        model = Ridge(alpha=alpha).fit(x_scaled, y_train)
        readout = _fold(model, scaler)
        val_mse = _metrics(readout, features, targets, "val")["mse"]
        tried.append({"alpha": alpha, "val_mse": val_mse})
        if best is None or val_mse < best[0]:
            best = (val_mse, readout)
    return best[1], tried


def _fold(model: Ridge, scaler: StandardScaler) -> LinearReadout:
    """w·((x - mu)/s) + b  ==  (w/s)·x + (b - Σ w·mu/s), per output (one per neuron)."""
    coef, intercept = np.atleast_2d(model.coef_), np.atleast_1d(model.intercept_)
    weight = coef / scaler.scale_
    shift = scaler.mean_ / scaler.scale_
    bias = [float(b) - float(np.dot(c, shift)) for c, b in zip(coef, intercept, strict=True)]
    readout = LinearReadout(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        readout.weight.copy_(torch.from_numpy(weight).float())
        readout.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return readout


def _metrics(readout: LinearReadout, features: dict, targets: TargetSet, split: str) -> dict:
    with torch.no_grad():
        pred = targets.destandardise(readout(features[split]))
    return fit_metrics(pred, targets.labels(split))
