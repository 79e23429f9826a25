"""The verdict part of the report: an overview table, the decision rules once, and per condition
the verdict, why, and the evidence that decided it (numbers with their CIs, from results.json)."""

from __future__ import annotations

from typing import Any

from mechcheck.report.tables import MISSING, fmt, fmt_ci, get, is_number, md_table
from mechcheck.report.views import ConditionView, RunView

HYPOTHESES = {
    "H1": "H1 separate model",
    "H2_in": "H2-in reads W_in",
    "H2_out": "H2-out reads W_out",
    "H3": "H3 regularises",
}
VERDICTS = {"supported": "**supported**", "not_supported": "not supported", "inconclusive": "inconclusive"}


def verdict_cell(entry: Any) -> str:
    return VERDICTS.get(entry.get("verdict") if isinstance(entry, dict) else None, MISSING)


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _value_text(entry: dict[str, Any]) -> str:
    return fmt_ci(entry["value"], entry.get("ci")) if is_number(entry.get("value")) else ""


def _evidence_item(key: str, value: Any) -> str:
    """One piece of evidence, as short as it can be read."""
    if isinstance(value, dict) and "status" in value:  # a decided metric: status, value, controls
        name = value.get("metric") or key
        text = f"`{name}` {value['status']}"
        number = _value_text(value)
        text += f" ({number})" if number else ""
        if value.get("failed_controls"):
            text += " vs " + ", ".join(map(str, value["failed_controls"]))
        return text
    if isinstance(value, dict) and "value" in value:
        return f"{key} = {_value_text(value) or fmt(value['value'])}"
    if isinstance(value, dict):
        return f"{key}: " + ", ".join(f"{k} {_short(v)}" for k, v in value.items())
    if isinstance(value, list):
        return f"{key}: " + ", ".join(map(str, value))
    return f"{key} = {_short(value)}"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return _value_text(value) or f"({len(value)} values)"
    return fmt(value) if isinstance(value, int | float | bool) or value is None else str(value)


def evidence_text(evidence: Any, limit: int = 6) -> str:
    """`why` first, then each piece of evidence; `learned` shortened to its status and skill."""
    if not isinstance(evidence, dict) or not evidence:
        return MISSING
    items = []
    for key, value in evidence.items():
        if key == "why":
            continue
        if key == "learned" and isinstance(value, dict):
            skill = value.get("skill")
            number = _value_text(skill) if isinstance(skill, dict) else fmt(skill)
            items.append(f"learned {value.get('status', '?')} (skill {number})")
        else:
            items.append(_evidence_item(key, value))
    text = "; ".join(items[:limit]) + (f"; … ({len(items) - limit} more)" if len(items) > limit else "")
    return text or MISSING


def rules(view: RunView) -> list[str]:
    """Each hypothesis's decision rule, once (the first condition that states it)."""
    out = []
    for h, title in HYPOTHESES.items():
        stated = [get(c.results, "verdicts", h, "rule") for c in view.conditions]
        rule = next((r for r in stated if r), None)
        if rule:
            out.append(f"- **{title}**: {one_line(rule)}")
    return out


def condition_verdicts(c: ConditionView) -> str:
    verdicts = c.results.get("verdicts") or {}
    rows = []
    for h, title in HYPOTHESES.items():
        entry = verdicts.get(h) if isinstance(verdicts.get(h), dict) else {}
        why = one_line(get(entry, "evidence", "why") or MISSING)
        rows.append([title, verdict_cell(entry), why, evidence_text(entry.get("evidence"))])
    return md_table(["hypothesis", "verdict", "why", "evidence"], rows)


def verdict_section(view: RunView) -> str:
    rows = [
        [
            c.title,
            *(verdict_cell(get(c.results, "verdicts", h)) for h in HYPOTHESES),
        ]
        for c in view.conditions
    ]
    out = ["## Verdicts", "", md_table(["condition (labels)", *HYPOTHESES.values()], rows)]
    for c in view.conditions:
        out += ["", f"**{c.title}**", "", condition_verdicts(c)]
    found = rules(view)
    if found:
        out += ["", "Decision rules (pre-registered, from results.json):", "", *found]
    return "\n".join(out)
