"""Render `report.md` and `figures/*.png` from a results directory; tabulate several runs.

`render_report(dir)` is a pure function of the directory's results.json and saved predictions:
it overwrites report.md and the figures it draws, and never touches the results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mechcheck.report.information_md as information_md
from mechcheck.outputs import write_text
from mechcheck.report.battery_md import battery_section
from mechcheck.report.cross_talk_md import cross_talk_sections
from mechcheck.report.markdown import Figures, condition_section, header_section, threats_section
from mechcheck.report.reference import reference_section
from mechcheck.report.tables import MISSING, fmt, md_table
from mechcheck.report.verdicts_md import verdict_section
from mechcheck.report.views import RunView, load_view

REPORT = "report.md"
FIGURES = "figures"


def stages_section(view: RunView) -> str:
    rows = []
    for name, stage in view.stages.items():
        if isinstance(stage, dict):
            rows.append([name, fmt(stage.get("seconds")), str(stage.get("hash") or MISSING)[:12]])
    if not rows:
        return ""
    return "## Pipeline stages\n\n" + md_table(["stage", "seconds (when it ran)", "input hash"], rows)


WITHDRAWN = (
    "> **Withdrawn verdicts.** The battery results below come from the first battery (results format 1), "
    "which judged how far an edit *pushed* the report instead of what information it removed, against "
    "unmatched nulls (see the project's BATTERY_AUDIT). Its verdicts are not evidence; re-run `mechcheck "
    "test` to get the rebuilt battery's."
)


NO_BATTERY = (
    "## No battery\n\nThis run trained without testing: the battery tests MLP neurons, and this run's "
    "target is not one (or the experiment ran no battery). The sections below are its training, computed "
    "from each checkpoint's run.json and predictions.json; there are no verdicts."
)


def render_markdown(view: RunView, figs: Figures) -> str:
    tested = [c for c in view.conditions if not c.trained_only]
    old = [c for c in tested if not information_md.is_v2(c)]
    parts = [header_section(view)]
    if not tested and view.conditions:
        parts.append(NO_BATTERY)
    elif old:
        parts += [WITHDRAWN, verdict_section(view)]
    else:
        parts.append(information_md.verdict_section(view))
    parts += [condition_section(c, figs) for c in view.conditions]
    parts += [
        information_md.battery_section(c, figs) if information_md.is_v2(c) else battery_section(c, figs)
        for c in tested
    ]
    parts.append(cross_talk_sections(view, figs))
    if view.reference == "study":
        parts.append(reference_section(view))
    parts.append(threats_section(view))
    parts.append(stages_section(view))
    parts.append(
        "---\n*Rendered by `mechcheck report` from results.json and the saved predictions; "
        "every number above is computed from those files.*"
    )
    return "\n\n".join(p for p in parts if p) + "\n"


def render_report(folder: str | Path) -> Path:
    """Write `folder/report.md` and `folder/figures/*.png`; returns the report's path."""
    folder = Path(folder)
    view = load_view(folder)
    figs = Figures(folder / FIGURES, FIGURES)
    text = render_markdown(view, figs)
    return write_text(folder / REPORT, text)


def report_command(args: argparse.Namespace) -> int:
    """`mechcheck report DIR`: re-render the report (it is a view, so it is always replaced)."""
    path = render_report(args.dir)
    print(f"report: {path}")
    return 0
