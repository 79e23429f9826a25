"""The cross-talk section of a several-neuron run: the k×k matrix from results.json `cross_talk`.

Rebuilt battery: entry (i, j) is the information report i loses about label i (Δr²) when neuron j
is interchanged at the label position, with its CI and rank p among neurons matched to i. First
battery (withdrawn): mean |Δreport_i| / SD(label_i) under mean ablation, against random neurons.
"""

from __future__ import annotations

from typing import Any

import mechcheck.report.figures as fig
from mechcheck.report.markdown import Figures
from mechcheck.report.tables import MISSING, fmt, fmt_ci, md_table
from mechcheck.report.views import ConditionView, RunView


def heatmap_spec(title: str, values, rows: list[str], columns: list[str], xlabel: str, ylabel: str) -> dict:
    return {"kind": "heatmap", "title": title, "x": columns, "y": rows, "series": {title: values},
            "xlabel": xlabel, "ylabel": ylabel}  # fmt: skip


def _cell(matrix: dict[str, Any], i: int, j: int) -> str:
    if "p" in matrix and "present" not in matrix:
        try:
            return f"{fmt_ci(matrix['value'][i][j], matrix['ci'][i][j])} (p {fmt(matrix['p'][i][j])})"
        except (KeyError, IndexError, TypeError):
            return MISSING
    try:
        text = fmt_ci(matrix["value"][i][j], matrix["ci"][i][j])
        marked = matrix["present"][i][j]
        upper = fmt(matrix["null_upper"][i][j])
    except (KeyError, IndexError, TypeError):
        return MISSING
    return f"{'**' if marked else ''}{text}{'**' if marked else ''} (null p95 {upper})"


LEGEND_V2 = (
    "Δr² of report i about label i when neuron j (column) is interchanged at the label position, with a "
    "95 % bootstrap CI over articles and its rank p among neurons matched to neuron i on write magnitude. "
    "The diagonal is each report's own neuron; off-diagonal entries are cross-talk."
)
LEGEND_V1 = (
    "First battery (withdrawn): mean |Δreport_i| / SD(label_i) when neuron j (column) is mean-ablated, "
    "with the 95th percentile of the same ablation of random neurons of neuron j's layer."
)


def matrix_section(c: ConditionView, matrix: dict[str, Any], figs: Figures) -> str:
    keys = [str(k) for k in matrix.get("keys") or []]
    rows = [
        [f"report of {key}", *(_cell(matrix, i, j) for j in range(len(keys)))] for i, key in enumerate(keys)
    ]
    title = f"{c.condition} ({c.target_mode}): cross-talk"
    spec = heatmap_spec(
        title, matrix.get("value") or [], [f"report {k}" for k in keys], [f"ablate {k}" for k in keys],
        "mean-ablated neuron", "report",
    )  # fmt: skip
    shown = figs.show(f"{c.run_key}-cross-talk", fig.probe_figure, spec, title, caption="cross-talk matrix")
    return "\n".join(
        [
            f"## Cross-talk: {c.condition} ({c.target_mode})",
            "",
            LEGEND_V2 if "present" not in matrix else LEGEND_V1,
            "",
            md_table(["", *(f"ablate {k}" for k in keys)], rows),
            "",
            shown,
        ]
    )


def cross_talk_sections(view: RunView, figs: Figures) -> str:
    parts = [
        matrix_section(c, c.results["cross_talk"], figs)
        for c in view.conditions
        if isinstance(c.results.get("cross_talk"), dict)
    ]
    return "\n\n".join(parts)
