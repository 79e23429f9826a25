"""What training did to each variant's target, over its seeds: the study summary's training table.

One row per variant × condition, read from the checkpoints' own `run.json` files (so it covers the
variants without a battery, e.g. the original study's coordinate target): the report's test skill,
the target's std on the test texts before → after training, their ratio, and whether the target
collapsed (std ratio below `H3_MAX_RATIO`, the bar H3 uses). Every interval is a percentile bootstrap
of the mean over the training seeds: a CI over training runs, not over texts. A call that changes
when the bar moves by ±20 % is marked fragile (*). For experiments with `reference = "study"` (the
original study as it ran, then each deviation switched back) the changes each variant makes are
listed, so the table reads as the attribution of the study's collapse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mechcheck.neuron import MLP_OUT_COORDINATE
from mechcheck.report.tables import MISSING, fmt, fmt_ci, md_table
from mechcheck.report.views import read_json
from mechcheck.run_record import run_files
from mechcheck.stats import percentile_ci

H3_MAX_RATIO = 0.5  # H3's bar, `mechcheck.verdict.H3_MAX_RATIO` (the report imports no verdict code;
# tests/report/test_training_md.py checks that the two agree)
MARGIN = 0.2  # the fragility check: the bar moved by ±20 %


def _runs(variant: Path) -> dict[str, list[dict[str, Any]]]:
    """Each condition-mode folder's run.json records, in seed order."""
    return {key: [read_json(f) for f in files] for key, files in run_files(variant / "train").items()}


def _mean_ci(values: list[float]) -> tuple[float | None, list[float] | None]:
    """The mean over seeds and its 95 % percentile bootstrap CI (None with fewer than two seeds)."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return None, None
    mean = float(np.mean(finite))
    if len(finite) < 2:
        return mean, None
    if len(set(finite)) == 1:  # every seed the same (a frozen model's ratio of 1): nothing to resample
        return mean, [mean, mean]
    return mean, list(percentile_ci([np.asarray(finite)], np.mean, seed=0, vectorized=False))


def _call(ci: list[float] | None, bar: float) -> str:
    if ci is None:
        return MISSING
    return "yes" if ci[1] < bar else ("no" if ci[0] >= bar else "?")


def collapse_call(ratios: list[float]) -> str:
    """yes / no / ? for "the target collapsed" (the ratio's CI over seeds below / above the bar /
    straddling it), * when moving the bar by ±20 % changes the call, and (k/n) seeds below the bar."""
    _, ci = _mean_ci(ratios)
    call = _call(ci, H3_MAX_RATIO)
    if call == MISSING:
        return call
    fragile = any(_call(ci, H3_MAX_RATIO * (1 + s)) != call for s in (-MARGIN, MARGIN))
    below = sum(r < H3_MAX_RATIO for r in ratios)
    return f"{call}{'*' if fragile else ''} ({below}/{len(ratios)})"


def _changes(variant: dict[str, Any]) -> str:
    """A variant table's settings, `table.key = value`, as the experiment file gives them."""
    items = []
    for table, value in variant.items():
        if table == "name":
            continue
        if isinstance(value, dict):
            items += [f"{table}.{k} = {_value(v)}" for k, v in value.items()]
        else:
            items.append(f"{table} = {_value(value)}")
    return "; ".join(items) or "none (the base)"


def _value(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return ", ".join("{" + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + "}" for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _target(run: dict[str, Any]) -> str:
    n = run.get("neuron") or {}
    kind = "coordinate" if n.get("kind") == MLP_OUT_COORDINATE else "neuron"
    return f"L{n.get('layer', '?')} {kind} {n.get('index', '?')}"


def _row(variant: str, condition: str, runs: list[dict[str, Any]]) -> list[str]:
    metrics = [r.get("metrics") or {} for r in runs]
    before = [(m.get("neuron_before") or {}).get("std") for m in metrics]
    after = [(m.get("neuron_after") or {}).get("std") for m in metrics]
    ratios = [a / b for a, b in zip(after, before, strict=True) if a is not None and b]
    skills = [(m.get("test") or {}).get("skill") for m in metrics]
    kls = [m.get("kl_after") for m in metrics]
    return [
        variant, _target(runs[0]), condition, str(len(runs)),
        fmt_ci(*_mean_ci(skills)), fmt_ci(*_mean_ci(before)), fmt_ci(*_mean_ci(after)),
        fmt_ci(*_mean_ci(ratios)), ", ".join(fmt(r) for r in ratios) or MISSING,
        collapse_call(ratios), fmt(_mean_ci(kls)[0]),
    ]  # fmt: skip


HEADERS = (
    "variant", "target", "condition", "seeds", "test skill", "target std before", "target std after",
    "std ratio", "std ratio per seed", "collapsed", "KL after",
)  # fmt: skip


def training_section(folder: Path, record: dict[str, Any], done: list[str]) -> list[str]:
    """The training table's markdown lines (with the variants' changes for a `reference` study)."""
    config = record.get("config") or {}
    tables = {v["name"]: v for v in config.get("variant") or []}
    rows = [
        _row(name, condition, runs)
        for name in done
        for condition, runs in sorted(_runs(folder / name).items())
        if runs
    ]
    if not rows:
        return []
    lines = [
        "## What training did to the target",
        "",
        "From each checkpoint's run.json. Test skill: 1 − MSE / var(label) of the report on the test texts. "
        "Target std: its std on the test texts at the label position, in the original model (before) and the "
        f"trained one (after). Collapsed: the std ratio's CI below {fmt(H3_MAX_RATIO)} (yes), at or above "
        "it (no), or straddling it (?); * = the call changes when the bar moves by ±20 %; (k/n) = seeds "
        "below the bar. Every interval: the mean over training seeds with its 95 % percentile bootstrap CI "
        "— a CI over training runs, not over texts. The collapse here is not tested against the layer's "
        "other units (the battery's H3 is, where a variant has a battery).",
        "",
        md_table(HEADERS, rows),
        "",
    ]
    if config.get("reference") == "study":
        from mechcheck.report.study import FIGURES

        figure = next(f for f in FIGURES if f.key == "unfrozen_std")
        lines += [
            "### What each variant switches back",
            "",
            f"The original study reported its {figure.what} as {figure.study} ({figure.how}; STUDY_AUDIT "
            f"{figure.where}). Each variant below is the base (the study as its code ran) with these "
            "settings changed; a collapse that disappears when one deviation is switched back is "
            "attributed to that deviation.",
            "",
            md_table(["variant", "changes from the base"], [[n, _changes(tables.get(n, {}))] for n in done]),
            "",
        ]
    return lines
