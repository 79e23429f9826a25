"""A learning rate chosen on validation under a drift cap (`train.lr_grid`, `train.drift_cap`).

For a condition that trains model weights, each learning rate of the grid trains one full run
through the one loop (its own state under the run's `.state/lr-<i>/`, so a killed sweep resumes).
Within each, `drift_cap` keeps any evaluation whose KL(original ‖ current) on the held-out drift
texts exceeds the cap from being its best state (`mechcheck.train.loop`). The chosen rate is the
one whose best state has the lowest validation monitor (val MSE — the best validation skill — or
val cross-entropy for token readouts); ties go to the smaller rate. A run whose best state is its
untrained step 0 never trained within the cap: the record says so (`trained_within_cap: false`)
and reports exclude such a reporter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mechcheck.experiment import TrainConfig
from mechcheck.train.loop import LoopResult
from mechcheck.train.state import StateStore

RULE = (
    "each lr trains a full run; evaluations with KL(original || current) above drift_cap cannot be a "
    "run's best state; the lr whose best state has the lowest validation monitor wins (ties: smaller lr)"
)
TrainOne = Callable[[TrainConfig, StateStore, bool], tuple[Any, LoopResult, dict[str, nn.Parameter]]]


def summary(lr: float, result: LoopResult, monitor: str) -> dict[str, Any]:
    """What the choice needs from one candidate: its best row's validation monitor, skill and drift."""
    best = next(row for row in result.curves if row["step"] == result.best_step)
    return {
        "lr": lr, "best_step": result.best_step, "steps": result.steps, "monitor": monitor,
        "value": best[monitor], "val_skill": best.get("val_skill"), "kl": best.get("kl"),
        "max_kl": max((row.get("kl") or 0.0) for row in result.curves),
    }  # fmt: skip


def sweep_lr(
    cfg: TrainConfig, monitor: str, train_one: TrainOne, store: StateStore, resume: bool
) -> tuple[Any, LoopResult, dict[str, Any]]:
    """Train one run per `cfg.lr_grid` rate (`train_one(cfg with that lr, its state store, resume)` →
    (setup, loop result, its named trainable parameters)); leaves the winner's parameters in place and
    returns its setup, its result and the record of the choice.

    Only the best candidate so far keeps its loop state on disk; on resume, finished candidates are
    read from `lr_sweep.json` and the best of them is reloaded from its state (no retraining)."""
    folder = store.folder
    record_file = folder / "lr_sweep.json"
    done: dict[str, dict[str, Any]] = _read(record_file) if resume else {}
    best_key = min(done, key=lambda k: _order(done[k])) if done else None
    best: tuple[Any, LoopResult, dict[str, nn.Parameter], dict[str, torch.Tensor]] | None = None
    order = sorted(range(len(cfg.lr_grid)), key=lambda i: _key(cfg.lr_grid[i]) != best_key)  # it first
    for i in order:
        lr = cfg.lr_grid[i]
        key = _key(lr)
        if key in done and key != best_key:
            continue  # finished in an earlier sitting and beaten: nothing to keep
        one = StateStore(folder / f"lr-{i}")
        setup, result, params = train_one(replace(cfg, lr=lr, lr_grid=()), one, resume)
        done[key] = summary(lr, result, monitor)
        folder.mkdir(parents=True, exist_ok=True)
        record_file.write_text(json.dumps(done))
        if best is None or _order(done[key]) < _order(done[best_key]):
            if best_key is not None and best_key != key:
                StateStore(folder / f"lr-{_index(cfg, best_key)}").remove()
            best_key = key
            best = (setup, result, params, {n: p.detach().clone() for n, p in params.items()})
        else:
            one.remove()
    setup, result, params, snapshot = best
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(snapshot[name])
    winner = done[best_key]
    record = {
        "grid": list(cfg.lr_grid), "drift_cap": cfg.drift_cap, "rule": RULE, "chosen_lr": winner["lr"],
        "trained_within_cap": winner["best_step"] > 0,
        "candidates": [done[_key(lr)] for lr in cfg.lr_grid],
    }  # fmt: skip
    return setup, result, record


def _key(lr: float) -> str:
    return f"{lr:.6g}"


def _index(cfg: TrainConfig, key: str) -> int:
    return [_key(lr) for lr in cfg.lr_grid].index(key)


def _order(candidate: dict[str, Any]) -> tuple[float, float]:
    return candidate["value"], candidate["lr"]


def _read(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
