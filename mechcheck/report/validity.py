"""Threats to validity, found automatically in the results and the saved predictions.

Each check looks at one condition and returns sentences with the numbers that triggered it.
Thresholds are module constants, printed in the report so a reader can judge them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mechcheck.report.predictions import prediction_fits, stale_fraction
from mechcheck.report.tables import fmt, get, is_number
from mechcheck.report.views import ConditionView

COLLAPSE_SD_RATIO = 0.2  # SD(report) / SD(label) below this: the report is nearly constant
KL_MAX = 0.1  # nats per token, KL(original ‖ trained) on held-out text
LM_LOSS_RISE = 0.10  # relative increase of the held-out LM loss
MIN_TEST = 100  # labels in the test split
STALE_MAX = 0.10  # MSE(fixed, live labels) / Var(labels)

THRESHOLDS = {
    "collapse: SD(report)/SD(label) <": COLLAPSE_SD_RATIO,
    "drift: KL (nats/token) >": KL_MAX,
    "drift: LM loss rise >": LM_LOSS_RISE,
    "small test set: labels <": MIN_TEST,
    "stale labels: MSE(fixed, live)/Var >": STALE_MAX,
}


def _collapsed(view: ConditionView) -> list[str]:
    found = []
    for seed in view.seeds:
        m = view.metrics(seed)
        ratio = get(m, "test", "pred_sd_ratio")
        if m.get("collapsed") or (is_number(ratio) and ratio < COLLAPSE_SD_RATIO):
            found.append(f"seed {seed}: the report collapsed (SD(report)/SD(label) = {fmt(ratio)})")
    return found


def _drift(view: ConditionView) -> list[str]:
    found = []
    for seed in view.seeds:
        m = view.metrics(seed)
        kl, before, after = m.get("kl_after"), m.get("lm_loss_before"), m.get("lm_loss_after")
        if is_number(kl) and kl > KL_MAX:
            found.append(f"seed {seed}: the model drifted (KL to the original = {fmt(kl)} nats/token)")
        if is_number(before) and is_number(after) and before > 0 and after > before * (1 + LM_LOSS_RISE):
            rise = after / before - 1
            found.append(f"seed {seed}: held-out LM loss rose {fmt(before)} → {fmt(after)} (+{rise:.0%})")
    return found


def _failed_controls(view: ConditionView) -> list[str]:
    """Why inconclusive verdicts are inconclusive: their stated reason, effects that did not clear
    their controls, effects never measured (the battery's evidence with status failed/missing)."""
    why: dict[str, list[str]] = {}
    details: dict[str, None] = {}
    for name, verdict in (view.results.get("verdicts") or {}).items():
        if not isinstance(verdict, dict) or verdict.get("verdict") != "inconclusive":
            continue
        evidence = verdict.get("evidence") or {}
        why.setdefault(str(evidence.get("why") or "see its evidence"), []).append(name)
        for key, value in evidence.items():
            if isinstance(value, dict) and value.get("status") == "failed" and value.get("failed_controls"):
                controls = ", ".join(map(str, value["failed_controls"]))
                details[f"`{value.get('metric') or key}` did not clear its control(s) {controls}"] = None
            elif isinstance(value, dict) and value.get("status") == "missing":
                details[f"`{value.get('metric') or key}` was not measured"] = None
        listed = " ".join(details)
        unlisted = [str(c) for c in evidence.get("failed_controls") or [] if str(c) not in listed]
        if unlisted:
            details[f"{name}: did not clear {', '.join(unlisted)}"] = None
    return [f"{', '.join(names)} inconclusive: {reason}" for reason, names in why.items()] + list(details)


def _small_test(view: ConditionView) -> list[str]:
    sizes = {len(p.get("labels") or []) for p in view.predictions.values()}
    n_labels = get(view.results, "eval", "n_labels")
    if is_number(n_labels):
        sizes.add(int(n_labels))
    small = sorted(n for n in sizes if 0 < n < MIN_TEST)
    return [f"small test set: {small[0]} labels (CIs are wide)"] if small else []


def _stale(view: ConditionView) -> list[str]:
    if view.condition != "unfrozen" or view.target_mode != "fixed":
        return []
    found = []
    for seed, pred in sorted(view.predictions.items()):
        frac = stale_fraction(pred)
        if frac is not None and frac > STALE_MAX:
            found.append(
                f"seed {seed}: stale labels — the fixed labels differ from the trained model's own neuron "
                f"by MSE = {fmt(frac)} × Var(label); the report is scored against the *original* model"
            )
    return found


def _baselines(view: ConditionView) -> list[str]:
    best = _best_baseline(view.results)
    found = []
    for seed, pred in sorted(view.predictions.items()):
        after = prediction_fits(pred, seed).get("after_vs_target")
        if after is None:
            continue
        low = after.ci[0] if after.ci else after.skill
        if low <= 0:
            found.append(
                f"seed {seed}: the report does not beat a constant "
                f"(skill {fmt(after.skill)}, CI low {fmt(low)})"
            )
        elif best is not None and low <= best[1]:
            found.append(
                f"seed {seed}: the report (skill CI low {fmt(low)}) does not beat the baseline "
                f"`{best[0]}` (skill {fmt(best[1])})"
            )
    return found


def _best_baseline(results: dict[str, Any]) -> tuple[str, float] | None:
    """The strongest baseline skill the battery measured (probe `baselines`), if any."""
    probe = get(results, "probes", "baselines") or {}
    entries = {**(probe.get("controls") or {}), **(probe.get("metrics") or {})}
    scores = []
    for name, entry in entries.items():
        value = entry.get("value") if isinstance(entry, dict) else entry
        if "skill" in name and is_number(value) and not name.startswith(("trained", "report")):
            scores.append((name, float(value)))
    return max(scores, key=lambda s: s[1]) if scores else None


def _single_seed(view: ConditionView) -> list[str]:
    return ["one seed only: no spread over training seeds"] if len(view.seeds) == 1 else []


def _skipped(view: ConditionView) -> list[str]:
    skipped = view.results.get("skipped") or {}
    return [f"probe `{name}` skipped: {reason}" for name, reason in skipped.items()]


CHECKS: tuple[Callable[[ConditionView], list[str]], ...] = (
    _collapsed,
    _drift,
    _failed_controls,
    _small_test,
    _stale,
    _baselines,
    _single_seed,
    _skipped,
)


def threats(view: ConditionView) -> list[str]:
    """Every threat found for one condition, in a fixed order."""
    return [line for check in CHECKS for line in check(view)]
