"""Summarise the default experiment's checkpoints from their saved files (run.json + predictions.json).

Every number is recomputed from the test-split predictions (skill with a bootstrap CI over texts),
except drift and the neuron's std, which come from run.json's metrics.
Usage: python reports/smollm2-default/summary.py reports/smollm2-default > reports/smollm2-default/summary.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats


def skill(pred: np.ndarray, label: np.ndarray) -> float:
    return float(1 - np.mean((pred - label) ** 2) / np.var(label))


def skill_ci(pred: np.ndarray, label: np.ndarray, seed: int = 0) -> tuple[float, float]:
    res = stats.bootstrap(
        (pred, label), lambda p, y, axis=-1: 1 - ((p - y) ** 2).mean(axis) / y.var(axis),
        paired=True, vectorized=True, n_resamples=2000, method="percentile", rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def row(folder: Path) -> str:
    run = json.loads((folder / "run.json").read_text())
    pred = json.loads((folder / "predictions.json").read_text())
    y, p, p0 = (np.asarray(pred[k], float) for k in ("labels", "predictions", "predictions_before"))
    m = run["metrics"]
    lo, hi = skill_ci(p, y)
    live = np.asarray(pred.get("live_labels", pred["labels"]), float)
    return (
        f"| {run['condition']} | {run['target_mode']} | {len(y)} | {np.mean((p0 - y) ** 2):.3f} → "
        f"{np.mean((p - y) ** 2):.3f} | {skill(p0, y):.3f} → {skill(p, y):.3f} [{lo:.3f}, {hi:.3f}] | "
        f"{y.std():.3f} → {live.std():.3f} | {m['lm_loss_before']:.3f} → {m['lm_loss_after']:.3f} | "
        f"{m['kl_after']:.3f} | {np.std(p) / np.std(y):.2f} |"
    )


def main(root: str) -> None:
    folders = sorted(p.parent for p in Path(root).glob("*/run.json"))
    print("| condition | labels | n test | MSE before → after | skill before → after [95% CI] |"
          " neuron std before → after | LM loss before → after | KL(orig‖trained) | SD(pred)/SD(label) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in folders:
        print(row(folder))


if __name__ == "__main__":
    main(sys.argv[1])
