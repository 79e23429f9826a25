"""The rebuilt battery in the report (results format 2): verdicts with shares, twins, and every
information test beside its matched null, its control heads and its twins.

Every number is read from results.json; the figures are drawn from the same entries.
"""

from __future__ import annotations

from typing import Any

import mechcheck.report.figures as fig
from mechcheck.report.markdown import Figures
from mechcheck.report.tables import MISSING, fmt, fmt_ci, get, is_number, md_table
from mechcheck.report.views import ConditionView, RunView

HYPOTHESES = {"H1": "H1 separate model", "H2_in": "H2-in reads W_in", "H2_out": "H2-out reads W_out",
              "H3": "H3 regularises"}  # fmt: skip
VERDICTS = {"supported": "**supported**", "not_supported": "not supported", "inconclusive": "inconclusive"}
TESTS = {
    "neuron": "neuron interchanged at p",
    "in_bypass": "W_in span interchanged at p, neuron pinned",
    "in_total": "W_in span interchanged at p, neuron free",
    "out_direct": "only the neuron's changed write, added to the final residual",
    "remainder": "W_in span and neuron set to class means at every non-sink position",
}


def is_v2(c: ConditionView) -> bool:
    """Results of the rebuilt battery (format 2); the first battery's verdicts are withdrawn."""
    return not c.record.withdrawn


def verdict_cell(entry: Any) -> str:
    if not isinstance(entry, dict):
        return MISSING
    text = VERDICTS.get(entry.get("verdict"), MISSING)
    return text + (" (fragile)" if entry.get("fragile") else "")


def _entry(e: Any) -> str:
    return fmt_ci(e.get("value"), e.get("ci")) if isinstance(e, dict) else MISSING


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


# --- verdicts ------------------------------------------------------------------------------------
def shares_table(c: ConditionView) -> str:
    """The share of the report's label r² each edit removes (neither: the share that survives)."""
    report = c.results.get("shares") or {}
    twins = c.results.get("twin_shares") or {}
    names = list(report)
    if not names:
        return "*(no shares)*"
    head = ["head", *names]
    rows = [["report", *(_entry(report.get(n)) for n in names)]]
    for twin, values in twins.items():
        rows.append([f"`{twin}`", *(_entry(values.get(n)) for n in names)])
    return md_table(head, rows)


def _why(entry: dict[str, Any]) -> str:
    ev = entry.get("evidence") or {}
    why = ev.get("why")
    effect = ev.get("effect") if isinstance(ev.get("effect"), dict) else None
    parts = [one_line(why)] if why else []
    if effect and "share" in effect:
        parts.append(
            f"`{effect.get('test')}` {effect.get('status')}: share {_entry(effect['share'])}, "
            f"q {fmt(effect.get('q'))}"
        )
        unspecific = [k for k, ok in (effect.get("specific") or {}).items() if not ok]
        if unspecific:
            parts.append("not specific against " + ", ".join(f"`{k}`" for k in unspecific))
        ignored = effect.get("controls_not_informative") or []
        if ignored:
            parts.append(
                "not compared with " + ", ".join(f"`{k}`" for k in ignored) + " (not informative itself)"
            )
    if "survival" in ev:
        parts.append(f"surviving share {_entry(ev['survival'])} (bar {fmt(ev.get('min_share'))})")
    if "std_ratio" in ev:
        parts.append(
            f"std ratio {_entry(ev['std_ratio'])}, rank p among layer neurons {fmt(ev.get('layer_p'))}"
        )
    if entry.get("fragile"):
        parts.append("fragile: " + "; ".join(entry["fragile"]))
    return "; ".join(parts) or MISSING


def condition_verdicts(c: ConditionView) -> str:
    verdicts = c.results.get("verdicts") or {}
    rows = [
        [title, verdict_cell(verdicts.get(h)), _why(verdicts.get(h) or {})] for h, title in HYPOTHESES.items()
    ]
    out = [md_table(["hypothesis", "verdict", "why / deciding numbers"], rows), "", shares_table(c)]
    twins = c.results.get("twins") or {}
    if twins:
        names = ("H1", "H2_in", "H2_out")
        rows = [[f"`twin.{t}`", *(VERDICTS.get(get(v, h, "verdict"), MISSING) for h in names)]
                for t, v in twins.items()]  # fmt: skip
        out += ["", "Planted twins on this model and neuron (each must show its own mechanism and no other):",
                "", md_table(["twin", "H1", "H2-in", "H2-out"], rows)]  # fmt: skip
    return "\n".join(out)


def verdict_section(view: RunView) -> str:
    rows = [
        [c.title, *(verdict_cell(get(c.results, "verdicts", h)) for h in HYPOTHESES)] for c in view.conditions
    ]
    out = ["## Verdicts", "", md_table(["condition (labels)", *HYPOTHESES.values()], rows), "",
           "Shares are fractions of the report's r² with the label (squared Pearson correlation) that an "
           "edit removes; CIs are bootstrap intervals over articles" + _seed_note(view) + "."]  # fmt: skip
    for c in view.conditions:
        out += ["", f"**{c.title}**", "", condition_verdicts(c)]
    rules = _rules(view)
    if rules:
        out += [
            "",
            "Decision rules (pre-registered in `mechcheck/verdict.py`, from results.json):",
            "",
            *rules,
        ]
    return "\n".join(out)


def _seed_note(view: RunView) -> str:
    seeds = max((len(get(c.results, "eval", "seeds") or [1]) for c in view.conditions), default=1)
    return f" and {seeds} training seeds (seeds resampled first)" if seeds > 1 else " (one training seed)"


def _rules(view: RunView) -> list[str]:
    out = []
    for h, title in HYPOTHESES.items():
        rule = next(
            (
                get(c.results, "verdicts", h, "rule")
                for c in view.conditions
                if get(c.results, "verdicts", h, "rule")
            ),
            None,
        )
        if rule:
            out.append(f"- **{title}**: {one_line(rule)}")
    return out


# --- the tests ----------------------------------------------------------------------------------
def _null_cell(null: dict[str, Any]) -> str:
    if not isinstance(null, dict) or not null.get("n"):
        return MISSING
    return f"n {null['n']}, mean {fmt(null.get('mean'))}, p95 {fmt(null.get('p95'))}"


def test_table(probe: dict[str, Any]) -> str:
    heads = probe.get("heads") or {}
    rows = []
    for name, h in heads.items():
        null = h.get("null") or {}
        rows.append([f"`{name}`", fmt(get(h, "r2", "value")), _entry(h.get("dr2")), _entry(h.get("share")),
                     _null_cell(null), fmt(null.get("p")), fmt(null.get("q")), _entry(h.get("motion")),
                     _entry(h.get("shift"))])  # fmt: skip
    head = [
        "head",
        "r² clean",
        "Δr² [CI]",
        "share [CI]",
        "null Δr²",
        "rank p",
        "BH q",
        "motion (SD)",
        "shift (SD)",
    ]
    return md_table(head, rows)


def specificity_table(probe: dict[str, Any]) -> str:
    rows = []
    for name, h in (probe.get("heads") or {}).items():
        for control, s in (h.get("specificity") or {}).items():
            ok = isinstance(s, dict) and is_number((s.get("ci") or [None])[0]) and s["ci"][0] > 0
            rows.append([f"`{name}`", f"`{control}`", _entry(s), "yes" if ok else "no"])
    return md_table(["head", "control head", "share − control's share", "specific"], rows) if rows else ""


def comparisons_table(probe: dict[str, Any]) -> str:
    report = get(probe, "heads", "report") or {}
    rows = [[f"`{name}`", _entry(v.get("dr2")), _entry(v.get("share")), fmt(v.get("p"))]
            for name, v in (report.get("comparisons") or {}).items()]  # fmt: skip
    return md_table(["comparison edit (report)", "Δr²", "share", "rank p in the null"], rows) if rows else ""


def _share_figure(probe: dict[str, Any]) -> dict[str, Any]:
    series = {}
    for name, h in (probe.get("heads") or {}).items():
        if name == "report" or name.startswith("twin."):
            series[name] = {"value": get(h, "share", "value"), "ci": get(h, "share", "ci")}
    return {
        "kind": "bar",
        "series": series,
        "ylabel": "share of the label r² removed",
        "title": "Share removed",
    }


def _null_figure(probe: dict[str, Any]) -> dict[str, Any]:
    report = get(probe, "heads", "report") or {}
    null = get(report, "null", "null") or []
    return {"kind": "hist", "series": {"matched null draws": null}, "xlabel": "Δr² (report)",
            "marks": {"the edit": get(report, "dr2", "value")},
            "title": "The edit among its matched null"}  # fmt: skip


def test_section(c: ConditionView, name: str, probe: dict[str, Any], figs: Figures) -> str:
    bears = ", ".join(probe.get("hypotheses") or []) or MISSING
    kind = "primary" if probe.get("primary") else "secondary"
    out = [f"#### `{name}` ({kind}; bears on {bears})", "", f"Edit: {TESTS.get(name, name)}. "
           f"Null: {probe.get('null_about', MISSING)}.", "", test_table(probe)]  # fmt: skip
    for extra in (comparisons_table(probe), specificity_table(probe)):
        if extra:
            out += ["", extra]
    shares = figs.show(
        f"{c.key}-{name}-shares", fig.probe_figure, _share_figure(probe), f"{name}: shares", f"{name} shares"
    )
    nulls = figs.show(
        f"{c.key}-{name}-null", fig.probe_figure, _null_figure(probe), f"{name}: null", f"{name} null"
    )
    out += ["", shares, nulls]
    info = probe.get("info") or []
    if info and isinstance(info[0], dict):
        out += ["", "Draws: " + ", ".join(f"{k} {fmt(v) if not isinstance(v, list) else f'({len(v)} values)'}"
                                          for k, v in info[0].items())]  # fmt: skip
    notes = [str(n) for n in probe.get("notes") or []]
    return "\n".join(out + ([""] + [f"- {n}" for n in notes] if notes else []))


def descriptive_section(c: ConditionView, name: str, probe: dict[str, Any], figs: Figures) -> str:
    bears = ", ".join(probe.get("hypotheses") or []) or MISSING
    out = [f"#### `{name}` (descriptive; bears on {bears})", ""]
    metrics = [[f"`{k}`", _entry(v), ", ".join(fmt(s) for s in v.get("seeds", [])) or MISSING]
               for k, v in (probe.get("metrics") or {}).items()]  # fmt: skip
    out.append(md_table(["metric", "value [CI]", "per seed"], metrics) if metrics else "*(no metrics)*")
    controls = [[f"`{k}`", f"`{v.get('compares')}`", _entry(v), fmt(v.get("p")), str(v.get("direction", ""))]
                for k, v in (probe.get("controls") or {}).items()]  # fmt: skip
    if controls:
        out += ["", md_table(["control", "for metric", "null mean [95 % range]", "rank p", "tail"], controls)]
    for fig_name, spec in (probe.get("figures") or {}).items():
        if isinstance(spec, dict):
            out += ["", figs.show(f"{c.key}-{name}-{fig_name}", fig.probe_figure, spec, f"{name}: {fig_name}",
                                  f"{name} {fig_name}")]  # fmt: skip
    out += [f"- {n}" for n in probe.get("notes") or []]
    return "\n".join(out)


def heads_table(c: ConditionView) -> str:
    rows = [[f"`{name}`", str(h.get("kind")), fmt(h.get("r2")), one_line(h.get("about", ""))]
            for name, h in (c.results.get("heads") or {}).items()]  # fmt: skip
    return md_table(["head", "kind", "clean r² with its label", "what it reads"], rows) if rows else ""


def battery_section(c: ConditionView, figs: Figures) -> str:
    probes = c.results.get("probes")
    out = [f"## Battery: {c.title}", ""]
    if not isinstance(probes, dict) or not probes:
        return "\n".join([*out, "*(no probe results in results.json)*"])
    out += ["Every edit is scored on these heads:", "", heads_table(c)]
    for name, probe in probes.items():
        if not isinstance(probe, dict):
            continue
        section = test_section if probe.get("kind") == "information" else descriptive_section
        out += ["", section(c, name, probe, figs)]
    for name, reason in (c.results.get("skipped") or {}).items():
        out += ["", f"- `{name}` skipped: {reason}"]
    timing = c.results.get("timing")
    if isinstance(timing, dict) and is_number(timing.get("total_s")):
        ratio = timing.get("ratio_to_bare_forward")
        load = timing.get("load_s")
        loading = f", besides {fmt(float(load))} s loading the model." if is_number(load) else "."
        out += ["", f"Battery time: {fmt(float(timing['total_s']))} s"
                + (f" ({fmt(float(ratio))}× one bare forward over the same texts)"
                   if is_number(ratio) else "") + loading]  # fmt: skip
    return "\n".join(out)
