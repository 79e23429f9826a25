"""The original study's figures beside ours (experiments with `reference = "study"`).

The study's side comes from report/study.py (constants with their source); our side is computed
from the view: curves, saved predictions and the geometry probe's metrics.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import mechcheck.report.study as study
from mechcheck.report.predictions import array, prediction_fits
from mechcheck.report.tables import MISSING, fmt, fmt_entry, md_table
from mechcheck.report.views import ConditionView, RunView


def _first(view: RunView, condition: str) -> ConditionView | None:
    found = [c for c in view.conditions if c.condition == condition]
    found.sort(key=lambda c: c.target_mode != "fixed")
    return found[0] if found else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _std_change(c: ConditionView | None) -> str:
    if c is None:
        return MISSING
    before = [float(a.std()) for p in c.predictions.values() if (a := array(p, "labels")) is not None]
    after = [float(a.std()) for p in c.predictions.values() if (a := array(p, "live_labels")) is not None]
    if not before or not after:
        return MISSING
    return f"{fmt(_mean(before))} → {fmt(_mean(after))} (test split, {len(after)} seed(s))"


def _val_mse_change(c: ConditionView | None) -> str:
    if c is None or not c.curves:
        return MISSING
    seed, curves = sorted(c.curves.items())[0]
    vals = [r for r in curves if isinstance(r.get("val_mse"), int | float)]
    if len(vals) < 2:
        return MISSING
    first, last = vals[1], vals[-1]
    return (
        f"{fmt(first['val_mse'])} (first eval, step {first.get('step')}) → {fmt(last['val_mse'])} "
        f"(step {last.get('step')}); untrained: {fmt(vals[0]['val_mse'])} (seed {seed})"
    )


def _skill(c: ConditionView | None) -> str:
    if c is None:
        return MISSING
    skills = [f.skill for s, p in c.predictions.items() if (f := prediction_fits(p, s).get("after_vs_fixed"))]
    return fmt(_mean(skills))


def _cosines(c: ConditionView | None) -> str:
    if c is None:
        return MISSING
    metrics: dict[str, Any] = ((c.results.get("probes") or {}).get("geometry") or {}).get("metrics") or {}
    picked = [
        f"{name} = {fmt_entry(entry)}"
        for name, entry in metrics.items()
        if "cos" in name.lower() and ("w_in" in name.lower() or "w_out" in name.lower())
    ]
    return "; ".join(picked[:4]) or MISSING


def ours(view: RunView) -> dict[str, str]:
    frozen, unfrozen, after = (_first(view, n) for n in ("frozen", "unfrozen", "after_target"))
    return {
        "unfrozen_std": _std_change(unfrozen),
        "frozen_val_mse": _val_mse_change(frozen),
        "after_target_val_mse": _val_mse_change(after),
        "final_r2": " / ".join(_skill(c) for c in (frozen, unfrozen, after))
        + " (test skill vs fixed labels)",
        "head_cosines": _cosines(frozen),
    }


def reference_section(view: RunView) -> str:
    measured = ours(view)
    rows = [[f.what, f.study, f.how, f.where, measured.get(f.key, MISSING)] for f in study.FIGURES]
    return "\n".join(
        [
            "## Beside the original study",
            "",
            f"Study figures from {study.SOURCE}. Ours are computed from this run's files; "
            "they are not the same measurement unless the caveats below say so.",
            "",
            md_table(["figure", "study", "what the study measured", "audit", "this run"], rows),
            "",
            "Caveats:",
            "",
            *(f"- {c}" for c in study.CAVEATS),
        ]
    )
