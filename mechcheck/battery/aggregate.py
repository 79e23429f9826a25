"""From the per-seed results of the probes to the numbers in results.json.

Every CI comes from one `Resampler` per battery (seeds, then articles within a seed), so all the
numbers of a battery are paired: a test's Δr², its share and its specificity are computed on the
same replicates. Per-seed point values are kept beside every pooled value.

Information tests, per head: `r2` (clean), `dr2` (information lost), `share` (dr2 / r2),
`motion` (mean |Δreport| / SD(label)) and `shift` (mean Δreport / SD(label)) — the last two are
description only —, the `null` (Δr² of the matched draws, averaged over seeds draw by draw) with the
rank p of the effect, `specificity` (share − each control head's share, paired), and the same for
every comparison edit. Descriptive probes: each sample's statistic with its CI, and their nulls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mechcheck.stats import (
    Resampler,
    bh,
    interval,
    metric,
    moments,
    null_summary,
    r2_from_moments,
    rank_p,
    skill_from_sums,
)


# --- statistics of summed per-text moments ------------------------------------------------------
def _r2_pair(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return r2_from_moments(s[..., :6]), r2_from_moments(s[..., 6:12])


def _dr2(s):
    clean, edited = _r2_pair(s)
    return clean - edited


def _share(s):
    clean, edited = _r2_pair(s)
    return np.where(clean > 0, (clean - edited) / np.where(clean > 0, clean, 1.0), np.nan)


def _r2_clean(s):
    return _r2_pair(s)[0]


def _mean(s):
    return s[..., 1] / s[..., 0]


def _skill(s):
    return skill_from_sums(*(s[..., i] for i in range(4)))


def _std_ratio(s):
    n, x, xx, y, yy = (s[..., i] for i in range(5))
    var_x = np.maximum(xx / n - (x / n) ** 2, 0)
    var_y = np.maximum(yy / n - (y / n) ** 2, 0)
    return np.sqrt(var_x / np.where(var_y > 0, var_y, np.nan))


def _specificity(s):
    return _share(s[..., :12]) - _share(s[..., 12:24])


def per_text(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-text moments of a descriptive sample."""
    one = np.ones_like(x)
    if kind == "r2":
        return moments(y, x)
    if kind == "skill":
        return np.stack([one, y, y * y, (y - x) ** 2], -1)
    if kind == "std_ratio":
        return np.stack([one, x, x * x, y, y * y], -1)
    if kind == "mean":
        return np.stack([one, x], -1)
    raise ValueError(f"unknown sample kind {kind!r}")


STATISTICS = {"r2": r2_from_moments, "skill": _skill, "std_ratio": _std_ratio, "mean": _mean}


class Pooled:
    """A battery's resampler and its seeds: turns per-text arrays into pooled metrics."""

    def __init__(self, groups: Sequence[np.ndarray], n_boot: int, ci: float, seed: int):
        self.resampler = Resampler([np.asarray(g) for g in groups], n_boot, seed)
        self.ci = ci

    def metric(self, statistic, per_seed: list[np.ndarray]) -> dict[str, Any]:
        point, reps = self.resampler.replicates(statistic, per_seed)
        out = metric(point, interval(reps, self.ci))
        if len(per_seed) > 1:
            out["seeds"] = [float(statistic(x.sum(0))) for x in per_seed]
        return out

    # --- descriptive probes -----------------------------------------------------------------
    def sample(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        kind = runs[0]["kind"]
        arrays = [
            per_text(kind, np.asarray(r["x"], np.float64), np.asarray(r["y"], np.float64)) for r in runs
        ]
        return self.metric(STATISTICS[kind], arrays) | {"kind": kind}

    # --- information tests ------------------------------------------------------------------
    def information(self, label, clean, edited) -> dict[str, Any]:
        """dr2, share, r2 and the descriptive motion and shift of one edit on one head (lists over seeds)."""
        pairs = [
            np.concatenate([moments(y, c), moments(y, e)], -1)
            for y, c, e in zip(label, clean, edited, strict=True)
        ]
        motion = [np.stack([np.ones_like(y), np.abs(e - c) / (y.std() or 1.0)], -1)
                  for y, c, e in zip(label, clean, edited, strict=True)]  # fmt: skip
        shift = [np.stack([np.ones_like(y), (e - c) / (y.std() or 1.0)], -1)
                 for y, c, e in zip(label, clean, edited, strict=True)]  # fmt: skip
        return {
            "dr2": self.metric(_dr2, pairs),
            "share": self.metric(_share, pairs),
            "motion": self.metric(_mean, motion),
            "shift": self.metric(_mean, shift),
        }

    def specificity(self, head: tuple, control: tuple) -> dict[str, Any]:
        """share(head) − share(control) under the same edit, paired on the same replicates."""
        arrays = []
        for (y, c, e), (yc, cc, ec) in zip(zip(*head, strict=True), zip(*control, strict=True), strict=True):
            arrays.append(
                np.concatenate([moments(y, c), moments(y, e), moments(yc, cc), moments(yc, ec)], -1)
            )
        return self.metric(_specificity, arrays)


def pooled_null(per_seed: Sequence[Sequence[float]]) -> np.ndarray:
    """Draw k of the pooled null: the mean over seeds of each seed's draw k."""
    n = min(len(v) for v in per_seed)
    return np.mean([np.asarray(v[:n], np.float64) for v in per_seed], axis=0) if n else np.zeros(0)


def aggregate_test(pool: Pooled, runs: list[dict[str, Any]], heads: list[dict[str, Any]]) -> dict[str, Any]:
    """One information test over seeds. `runs[s]` is the probe's `test` of seed s, `heads[s]` maps
    each head to its `label` and `clean` arrays in that seed."""
    first, names = runs[0], list(heads[0])
    controls = [h for h in names if h.startswith("control.")]
    out: dict[str, Any] = {}
    for h in names:
        label = [np.asarray(hs[h]["label"], np.float64) for hs in heads]
        clean = [np.asarray(hs[h]["clean"], np.float64) for hs in heads]
        entry = {
            "r2": pool.metric(
                _r2_clean,
                [np.concatenate([moments(y, c)] * 2, -1) for y, c in zip(label, clean, strict=True)],
            )
        }
        edits = {}
        for edit in first["edited"]:
            edited = [np.asarray(r["edited"][edit][h], np.float64) for r in runs]
            edits[edit] = pool.information(label, clean, edited)
        entry |= edits.pop("effect")
        null = pooled_null([r["null"][h] for r in runs])
        entry["null"] = null_summary(null, entry["dr2"]["value"])
        if len(runs) > 1:
            entry["null"]["p_seeds"] = [
                rank_p(v, r["null"][h]) for v, r in zip(entry["dr2"]["seeds"], runs, strict=True)
            ]
        for values in edits.values():
            values["p"] = rank_p(values["dr2"]["value"], null)
        entry["comparisons"] = edits
        if not h.startswith("control."):
            entry["specificity"] = {}
            for c in controls:
                mine = (label, clean, [np.asarray(r["edited"]["effect"][h], np.float64) for r in runs])
                theirs = ([np.asarray(hs[c]["label"], np.float64) for hs in heads],
                          [np.asarray(hs[c]["clean"], np.float64) for hs in heads],
                          [np.asarray(r["edited"]["effect"][c], np.float64) for r in runs])  # fmt: skip
                entry["specificity"][c] = pool.specificity(mine, theirs)
        out[h] = entry
    return out


def aggregate_control(pool_null: list[dict[str, Any]], value: float) -> dict[str, Any]:
    """A descriptive probe's control over seeds: the pooled null and the metric's rank p in it."""
    null = pooled_null([c["null"] for c in pool_null])
    direction = pool_null[0].get("direction", "greater")
    p = rank_p(value, null) if direction == "greater" else rank_p(-value, -null)
    tail = 0.025
    values = null[np.isfinite(null)]
    ci = (
        [float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))]
        if values.size
        else [np.nan] * 2
    )
    return {"value": float(values.mean()) if values.size else float("nan"), "ci": ci, "null": values.tolist(),
            "compares": pool_null[0].get("compares"), "direction": direction, "p": p,
            "p95": float(np.quantile(values, 0.95)) if values.size else float("nan"),
            "p05": float(np.quantile(values, 0.05)) if values.size else float("nan")}  # fmt: skip


def add_qvalues(probes: dict[str, dict[str, Any]], primary: Sequence[str]) -> None:
    """BH over the battery's primary tests, separately for each head (the report, each twin)."""
    tests = [name for name in primary if name in probes and "heads" in probes[name]]
    if not tests:
        return
    for h in probes[tests[0]]["heads"]:
        ps = [probes[t]["heads"][h]["null"]["p"] for t in tests]
        for t, q in zip(tests, bh(ps), strict=True):
            probes[t]["heads"][h]["null"]["q"] = q
