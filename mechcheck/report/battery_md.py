"""The battery part of the report: every probe's metrics beside its controls, its figures, notes.

Probes are rendered generically from results.json, so a new probe shows up with nothing added
here; figure data is drawn by its `kind` (see figures.probe_figure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import mechcheck.report.figures as fig
from mechcheck.report.markdown import Figures
from mechcheck.report.tables import MISSING, fmt, fmt_entry, is_number, md_table
from mechcheck.report.views import ConditionView


def null_summary(control: dict[str, Any]) -> str:
    """`n`, mean ± sd and 95th percentile of a control's null sample."""
    null = np.asarray([float(v) for v in control.get("null") or [] if is_number(v)])
    if not null.size:
        return MISSING
    mean, sd, p95 = (fmt(float(v)) for v in (null.mean(), null.std(), np.quantile(null, 0.95)))
    return f"n {null.size}, {mean} ± {sd}, p95 {p95}"


def _metric_rows(entries: Any) -> list[list[str]]:
    if not isinstance(entries, dict):
        return []
    return [[f"`{name}`", fmt_entry(entry)] for name, entry in entries.items()]


def _control_row(name: str, entry: Any) -> list[str]:
    """A control beside the metric it is the null for: the observed value, where it falls, p."""
    c = entry if isinstance(entry, dict) else {"value": entry}
    compares = f"`{c['compares']}`" if c.get("compares") else MISSING
    observed = fmt(c.get("observed")) + (" (abs)" if c.get("abs") else "")
    percentile = c.get("percentile")
    where = f"{100 * percentile:.0f}" if is_number(percentile) else MISSING
    return [f"`{name}`", compares, observed, fmt_entry(c), null_summary(c), where, fmt(c.get("p"))]


def _control_rows(entries: Any) -> list[list[str]]:
    if not isinstance(entries, dict):
        return []
    return [_control_row(name, entry) for name, entry in entries.items()]


CONTROL_HEAD = [
    "control",
    "for metric",
    "observed",
    "null mean [95 % interval]",
    "null sample",
    "percentile",
    "p",
]


def probe_section(c: ConditionView, name: str, probe: dict[str, Any], figs: Figures) -> str:
    bears = ", ".join(probe.get("hypotheses") or []) or MISSING
    out = [f"#### `{name}` — bears on {bears}", ""]
    metrics, controls = _metric_rows(probe.get("metrics")), _control_rows(probe.get("controls"))
    out += [md_table(["metric", "value [95 % CI]"], metrics) if metrics else "*(no metrics)*", ""]
    out += [md_table(CONTROL_HEAD, controls) if controls else "*(no controls)*"]
    shown = []
    for fig_name, spec in (probe.get("figures") or {}).items():
        if isinstance(spec, dict):
            shown.append(
                figs.show(
                    f"{c.key}-{name}-{fig_name}",
                    fig.probe_figure,
                    spec,
                    f"{name}: {fig_name}",
                    caption=f"{name} {fig_name}",
                )
            )
    nulls = probe.get("controls") or {}
    if isinstance(nulls, dict) and any(isinstance(v, dict) and v.get("null") for v in nulls.values()):
        shown.append(
            figs.show(
                f"{c.key}-{name}-nulls",
                fig.null_distributions,
                nulls,
                f"{name}: controls against their nulls",
                caption=f"{name} nulls",
            )
        )
    if shown:
        out += ["", *shown]
    notes = [str(n) for n in probe.get("notes") or []]
    if notes:
        out += ["", *(f"- {n}" for n in notes)]
    per_seed = probe.get("per_seed")
    if isinstance(per_seed, list) and len(per_seed) > 1:
        out += ["", f"*Aggregated over {len(per_seed)} seeds; per-seed results are in results.json.*"]
    return "\n".join(out)


def summary_table(c: ConditionView) -> str:
    probes = c.results.get("probes") or {}
    rows = []
    for name, probe in probes.items():
        if not isinstance(probe, dict):
            continue
        metrics = probe.get("metrics") or {}
        first = next(iter(metrics.items()), None)
        key = f"`{first[0]}` = {fmt_entry(first[1])}" if first else MISSING
        rows.append(
            [
                f"`{name}`",
                ", ".join(probe.get("hypotheses") or []) or MISSING,
                key,
                fmt(len(probe.get("controls") or {})),
            ]
        )
    for name, reason in (c.results.get("skipped") or {}).items():
        rows.append([f"`{name}`", "skipped", str(reason), MISSING])
    return md_table(["probe", "bears on", "first metric", "controls"], rows) if rows else "*(no probes ran)*"


def battery_section(c: ConditionView, figs: Figures) -> str:
    probes = c.results.get("probes")
    out = [f"## Battery: {c.title}", ""]
    if not isinstance(probes, dict) or not probes:
        return "\n".join([*out, "*(no probe results in results.json)*"])
    out += [summary_table(c)]
    for name, probe in probes.items():
        if isinstance(probe, dict):
            out += ["", probe_section(c, name, probe, figs)]
    timing = c.results.get("timing")
    if isinstance(timing, dict) and is_number(timing.get("total_s")):
        out += ["", f"Battery time: {fmt(float(timing['total_s']))} s."]
    return "\n".join(out)
