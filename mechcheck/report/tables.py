"""Number formatting and markdown tables: one place decides how every number reads."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MISSING = "–"


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: Any) -> str:
    """Three significant figures, one decimal from 100 up, thousands separated; `–` when absent."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not isinstance(value, float):
        return MISSING if value is None else str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.1f}"
    elif value == 0:
        text = "0"
    else:
        text = f"{value:.3g}"
    return "0" if text in ("-0", "-0.0") else text.replace("-", "−")


def fmt_ci(value: Any, ci: Any = None) -> str:
    """`v [lo, hi]`, or just `v` when the interval is absent or malformed."""
    text = fmt(value)
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(is_number(c) for c in ci):
        text += f" [{fmt(float(ci[0]))}, {fmt(float(ci[1]))}]"
    return text


def fmt_entry(entry: Any) -> str:
    """A metric entry: a number, or a `{"value", "ci"}` dict, or anything else as text."""
    if isinstance(entry, dict) and "value" in entry:
        return fmt_ci(entry.get("value"), entry.get("ci"))
    if isinstance(entry, float | int) or entry is None:
        return fmt(entry)
    if isinstance(entry, list | tuple) and len(entry) <= 4 and all(is_number(v) for v in entry):
        return "[" + ", ".join(fmt(v) for v in entry) + "]"
    if isinstance(entry, list | tuple | dict):
        return f"({len(entry)} values)"
    return _cell(str(entry))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells that are not strings go through `fmt`."""

    def cell(value: Any) -> str:
        return _cell(value) if isinstance(value, str) else fmt(value)

    lines = ["| " + " | ".join(map(_cell, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def get(data: Any, *path: str | int, default: Any = None) -> Any:
    """`data[p0][p1]…`, or `default` where any step is missing or of the wrong type."""
    for key in path:
        in_dict = isinstance(data, dict) and key in data
        in_list = isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data)
        if in_dict or in_list:
            data = data[key]
        else:
            return default
    return data
