"""The 2×2 matrix from the saved test predictions alone: skills, paired differences, verdicts.

Cell (R → O): reporter R's test predictions of model O's neuron. For each condition and each
neuron owner O, **self** is O → O and **other** is the other model → O: the same test texts and the
same labels (O's neuron), so the difference self − other is paired text by text. Skill is
1 − MSE / Var(label) on the test split, averaged over seeds; every CI is a percentile bootstrap over
test texts (`mechcheck.stats.bootstrap_ci`, seeded), resampling the same texts for every seed
and both cells of a pair.

Verdict per neuron and condition: **self-report** when the CI of self − other lies above 0 and the
difference is at least `min_advantage` (default 0.02 of the label variance: the owner reports its
neuron better than a model that only sees the same texts, by a margin that matters); **other better**
in the mirror case; **no advantage** otherwise. The margin is there because a CI can exclude 0 for a
negligible gap: on the planted shared-feature pair (`tests/planted_cross.py`) the owner wins by
0.0007 with CI [0.0005, 0.0011], from the shape of its own norm, not from access to its neuron.
Set `cross.min_advantage = 0` for the bare "CI above 0" rule.

A reporter trained with a learning rate chosen under a drift cap (`train.lr_grid`, `train.drift_cap`)
whose chosen run never trained within the cap (`metrics.trained_within_drift_cap` false) is excluded:
both comparisons it takes part in in that condition get the verdict **excluded** (its cells are still
listed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mechcheck.errors import UserError
from mechcheck.records import read_json
from mechcheck.stats import bootstrap_ci, metric, skill

MATRIX_FORMAT = "mechcheck-cross/1"


def rule(min_advantage: float) -> str:
    return (
        "self-report when the paired bootstrap CI of skill(self) − skill(other) on the same test texts "
        f"lies above 0 and the difference is at least {min_advantage:g}; other better when the CI lies "
        f"below 0 and the difference is at most −{min_advantage:g}; no advantage otherwise"
    )


def _mean_skill(y: np.ndarray, *preds: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean([skill(p, y, axis=axis) for p in preds], axis=0)


def _skill_difference(y: np.ndarray, *preds: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean skill of the first half of `preds` (self seeds) minus that of the second half (other)."""
    half = len(preds) // 2
    return _mean_skill(y, *preds[:half], axis=axis) - _mean_skill(y, *preds[half:], axis=axis)


def verdict(difference: dict[str, Any], min_advantage: float) -> str:
    value, (lo, hi) = difference["value"], difference["ci"]
    if lo > 0 and value >= min_advantage:
        return "self-report"
    if hi < 0 and value <= -min_advantage:
        return "other better"
    return "no advantage"


def read_cells(cells: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """`cells[key] = predictions.json path` → the loaded predictions, checked to share test texts."""
    loaded = {key: read_json(Path(path)) for key, path in cells.items()}
    texts = None
    for key, pred in loaded.items():
        _check_predictions(cells[key], pred)
        if texts is None:
            texts = pred["texts"]
        elif pred["texts"] != texts:
            raise UserError(
                f"{cells[key]}: its test texts differ from the other cells'; rerun the experiment"
            )
    return loaded


def _check_predictions(path: Path, pred: Any) -> None:
    """A cell's predictions.json: texts, labels and predictions, lists of one length."""
    arrays = [pred.get(k) if isinstance(pred, dict) else None for k in ("texts", "labels", "predictions")]
    if not all(isinstance(a, list) for a in arrays) or len({len(a) for a in arrays}) != 1:
        raise UserError(f"{path}: needs texts, labels and predictions, lists of one length; rerun the cell")


def pair(
    labels: np.ndarray, self_preds: list[np.ndarray], other_preds: list[np.ndarray], n_bootstrap: int,
    ci: float, seed: int, min_advantage: float,
) -> dict[str, Any]:  # fmt: skip
    """Self and other skill with CIs and the paired difference with its CI (seeds averaged)."""
    if len(self_preds) != len(other_preds):
        raise UserError("self and other cells have different numbers of seeds; train the same seeds for both")
    kw = {"n_resamples": n_bootstrap, "ci": ci, "seed": seed}
    both = [*self_preds, *other_preds]
    self_skill = metric(
        _mean_skill(labels, *self_preds), bootstrap_ci(_mean_skill, labels, *self_preds, **kw)
    )
    other_skill = metric(
        _mean_skill(labels, *other_preds), bootstrap_ci(_mean_skill, labels, *other_preds, **kw)
    )
    diff = metric(_skill_difference(labels, *both), bootstrap_ci(_skill_difference, labels, *both, **kw))
    return {
        "self": self_skill,
        "other": other_skill,
        "difference": diff,
        "verdict": verdict(diff, min_advantage),
    }


def cross_matrix(
    runs: list[dict[str, Any]], names: tuple[str, str], n_bootstrap: int, ci: float, seed: int,
    min_advantage: float,
) -> dict[str, Any]:  # fmt: skip
    """`runs`: one dict per checkpoint {reporter, label, condition, seed, predictions (path)}."""
    conditions = list(dict.fromkeys(r["condition"] for r in runs))
    preds = read_cells({_key(r): r["predictions"] for r in runs})
    out: dict[str, Any] = {
        "format": MATRIX_FORMAT,
        "models": list(names),
        "rule": rule(min_advantage),
        "conditions": {},
    }
    excluded = {
        (r["condition"], r["reporter"]) for r in runs
        if ((r.get("run") or {}).get("metrics") or {}).get("trained_within_drift_cap") is False
    }  # fmt: skip
    for condition in conditions:
        mine = sorted((r for r in runs if r["condition"] == condition), key=lambda r: r["seed"])
        seeds = sorted({r["seed"] for r in mine})  # skill_per_seed lists follow this order
        table: dict[str, Any] = {"seeds": seeds, "cells": {}, "neurons": {}}
        for reporter in names:
            for label in names:
                cell = [preds[_key(r)] for r in mine if r["reporter"] == reporter and r["label"] == label]
                skills = [skill(np.asarray(p["predictions"]), np.asarray(p["labels"])) for p in cell]
                table["cells"][f"{reporter}->{label}"] = {
                    "reporter": reporter, "label": label, "skill_per_seed": [float(s) for s in skills],
                }  # fmt: skip
        for owner in names:
            other = names[1] if owner == names[0] else names[0]
            got = _cell_arrays(mine, preds, owner, owner), _cell_arrays(mine, preds, other, owner)
            labels = got[0][0]
            if not np.array_equal(labels, got[1][0]):
                raise UserError(f"{condition}: the {other} -> {owner} cell was scored on different labels")
            result = pair(labels, got[0][1], got[1][1], n_bootstrap, ci, seed, min_advantage)
            out_of_cap = [name for name in (owner, other) if (condition, name) in excluded]
            if out_of_cap:
                result |= {"verdict": "excluded", "excluded_reporters": out_of_cap,
                           "excluded_because": "no trained state within train.drift_cap"}  # fmt: skip
            cells = {"self_cell": f"{owner}->{owner}", "other_cell": f"{other}->{owner}"}
            table["neurons"][owner] = {**cells, "n_texts": int(labels.size), **result}
        out["conditions"][condition] = table
    return out


def _key(run: dict[str, Any]) -> str:
    return f"{run['condition']}/{run['reporter']}->{run['label']}/seed-{run['seed']}"


def _cell_arrays(
    runs: list[dict[str, Any]], preds: dict[str, dict[str, Any]], reporter: str, label: str
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The labels and the predictions per seed (seed order) of one cell."""
    cell = sorted(
        (r for r in runs if r["reporter"] == reporter and r["label"] == label), key=lambda r: r["seed"]
    )
    if not cell:
        raise UserError(f"no saved predictions for {reporter} -> {label}; rerun the experiment")
    labels = np.asarray(preds[_key(cell[0])]["labels"], dtype=np.float64)
    return labels, [np.asarray(preds[_key(r)]["predictions"], dtype=np.float64) for r in cell]
