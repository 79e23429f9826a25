"""The cross-talk section of a several-neuron run: the k×k matrix from results.json `cross_talk`.

Entry (i, j) is mean |Δreport_i| / SD(label_i) when neuron j is mean-ablated (row i comes from the
`cross_talk` probe on neuron i's view); the diagonal is each report's own neuron, the rest is
cross-talk. A cell is marked when the effect is present by the verdicts' rule against random
neurons of neuron j's layer.
"""

from __future__ import annotations

from typing import Any

from mechcheck.battery.base import heatmap_figure
from mechcheck.report import figures as fig
from mechcheck.report.markdown import Figures
from mechcheck.report.tables import MISSING, fmt, fmt_ci, md_table
from mechcheck.report.views import ConditionView, RunView


def _cell(matrix: dict[str, Any], i: int, j: int) -> str:
    try:
        text = fmt_ci(matrix["value"][i][j], matrix["ci"][i][j])
        marked = matrix["present"][i][j]
        upper = fmt(matrix["null_upper"][i][j])
    except (KeyError, IndexError, TypeError):
        return MISSING
    return f"{'**' if marked else ''}{text}{'**' if marked else ''} (null p95 {upper})"


def matrix_section(c: ConditionView, matrix: dict[str, Any], figs: Figures) -> str:
    keys = [str(k) for k in matrix.get("keys") or []]
    rows = [
        [f"report of {key}", *(_cell(matrix, i, j) for j in range(len(keys)))] for i, key in enumerate(keys)
    ]
    title = f"{c.condition} ({c.target_mode}): cross-talk"
    spec = heatmap_figure(
        title, matrix.get("value") or [], [f"report {k}" for k in keys], [f"ablate {k}" for k in keys],
        "mean-ablated neuron", "report",
    )  # fmt: skip
    shown = figs.show(f"{c.run_key}-cross-talk", fig.probe_figure, spec, title, caption="cross-talk matrix")
    return "\n".join(
        [
            f"## Cross-talk: {c.condition} ({c.target_mode})",
            "",
            "Mean |Δreport_i| / SD(label_i) when neuron j (column) is mean-ablated, on every evaluation "
            "text, with a 95 % bootstrap CI over texts and the 95th percentile of the same ablation of "
            "random neurons of neuron j's layer. Bold: present by the verdicts' rule (≥ MIN_EFFECT, CI "
            "above the null's p95, BH q < ALPHA). The diagonal is each report's own neuron; off-diagonal "
            "entries are cross-talk.",
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
