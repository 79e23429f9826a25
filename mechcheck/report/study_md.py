"""The study's summary: one row per variant × condition, from each variant's results.json alone.

An experiment with `[[variant]]` tables (experiments/study.toml) runs each variant as its own run in
`DIR/<variant>/`; this view puts their verdicts side by side with the numbers behind them: each
verdict with how many seeds, decided alone, agree with it (`seed_verdicts`), the shares of the
report's label r² with their CIs (pooled over seeds, then articles, then texts) and the per-seed
values, the neuron's std ratio, and whether the planted twins came out right.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechcheck.report.render import render_report
from mechcheck.report.tables import MISSING, fmt, fmt_ci, md_table
from mechcheck.report.training_md import training_section
from mechcheck.report.views import read_json

SHORT = {"supported": "yes", "not_supported": "no", "inconclusive": "?"}
HYPOTHESES = ("H1", "H2_in", "H2_out", "H3")
SHARES = (("neuron", "neuron"), ("W_in bypass", "W_in bypass"), ("neither (survives)", "survives"))
PLANTED = {"H1": "H1", "H2_in": "H2_in", "H2_out": "H2_out", "null": None}


def variant_runs(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """(variant, its results.json) for every finished variant, in the experiment's order."""
    record = read_json(folder / "experiment.json")
    names = [v["name"] for v in (record.get("config") or {}).get("variant") or []]
    return [
        (n, read_json(folder / n / "results.json")) for n in names if (folder / n / "results.json").is_file()
    ]


def _verdict(results: dict[str, Any], by_seed: dict[str, Any] | None, h: str) -> str:
    v = (results.get("verdicts") or {}).get(h) or {}
    text = SHORT.get(v.get("verdict"), MISSING) + ("*" if v.get("fragile") else "")
    if by_seed:
        text += f" ({by_seed['agreement'][h]})"
    return text


def _seeds(entry: dict[str, Any] | None) -> str:
    values = (entry or {}).get("seeds")
    return ", ".join(fmt(float(v)) for v in values) if isinstance(values, list) else MISSING


def _twin_right(name: str, verdicts: dict[str, Any]) -> bool:
    """A twin is right when exactly its planted hypothesis is supported (the null twin: none)."""
    supported = {
        h for h in ("H1", "H2_in", "H2_out") if (verdicts.get(h) or {}).get("verdict") == "supported"
    }
    planted = PLANTED.get(name)
    return supported == ({planted} if planted else set())


def _twins(results: dict[str, Any]) -> str:
    """How many twins came out as planted, and which did not."""
    twins = results.get("twins") or {}
    wrong = [name for name, verdicts in twins.items() if not _twin_right(name, verdicts)]
    return f"{len(twins) - len(wrong)}/{len(twins)}" + (f" (wrong: {', '.join(wrong)})" if wrong else "")


def _rows(runs: list[tuple[str, dict[str, Any]]]) -> tuple[list[list[str]], list[list[str]]]:
    verdicts, numbers = [], []
    for variant, run in runs:
        for c in run.get("conditions") or []:
            r, by_seed = c["results"], c.get("seed_verdicts")
            if "verdicts" not in r:
                continue
            n = r.get("neuron") or {}
            where = [variant, f"L{n.get('layer', '?')}/{n.get('index', '?')}", c["key"]]
            seeds = len((r.get("eval") or {}).get("seeds") or [])
            learned = ((r["verdicts"].get("H1") or {}).get("evidence") or {}).get("learned") or {}
            r2 = learned.get("r2") or {}
            verdicts.append(
                [*where, str(seeds), fmt_ci(r2.get("value"), r2.get("ci")),
                 *(_verdict(r, by_seed, h) for h in HYPOTHESES), _twins(r)]
            )  # fmt: skip
            shares = r.get("shares") or {}
            ratio = ((r["verdicts"].get("H3") or {}).get("evidence") or {}).get("std_ratio") or {}
            removed = (((r.get("probes") or {}).get("remainder") or {}).get("heads") or {}).get(
                "report"
            ) or {}
            survives = [1 - s for s in (removed.get("share") or {}).get("seeds") or []]
            numbers.append(
                [*where, *(fmt_ci((shares.get(k) or {}).get("value"), (shares.get(k) or {}).get("ci"))
                           for k, _ in SHARES),
                 _seeds(shares.get("neuron")), _seeds({"seeds": survives} if survives else None),
                 fmt_ci(ratio.get("value"), ratio.get("ci")), _seeds(ratio)]
            )  # fmt: skip
    return verdicts, numbers


def _pending(planned: list[str], done: list[str]) -> str:
    left = [n for n in planned if n not in done]
    return f" (not yet: {', '.join(left)})" if left else ""


def render_study(folder: str | Path) -> Path:
    """Re-render each finished variant's own report, then the summary DIR/report.md (every report
    under DIR is a view of the saved results); returns the summary's path."""
    for name, _ in variant_runs(Path(folder)):
        render_report(Path(folder) / name)
    return render_summary(folder)


def render_summary(folder: str | Path) -> Path:
    """DIR/report.md of a run with variants, from the variants' results.json and run.json files."""
    folder = Path(folder)
    runs = variant_runs(folder)
    record = read_json(folder / "experiment.json")
    planned = [v["name"] for v in (record.get("config") or {}).get("variant") or []]
    verdicts, numbers = _rows(runs)
    done = [name for name, _ in runs]
    lines = [
        f"# mechcheck study — {record.get('identity', folder.name)}",
        "",
        f"Variants finished: {len(done)} of {len(planned)}{_pending(planned, done)}. "
        "Each variant's own report: `<variant>/report.md`.",
        "",
    ]
    if verdicts:
        lines += battery_tables(verdicts, numbers)
    else:
        lines += ["No finished variant has a battery (it tests MLP neurons only).", ""]
    lines += training_section(folder, record, done)
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path


def is_study_run(folder: str | Path) -> bool:
    """A run directory of an experiment with variants (its experiment.json lists them)."""
    file = Path(folder) / "experiment.json"
    if not file.is_file() or (Path(folder) / "results.json").exists():
        return False
    return bool((read_json(file).get("config") or {}).get("variant"))


def battery_tables(verdicts: list[list[str]], numbers: list[list[str]]) -> list[str]:
    """The verdicts table and the shares table, over the variants with a battery."""
    return [
        "## Verdicts",
        "",
        "yes / no / ? = supported / not supported / inconclusive; * = fragile (flips when a threshold "
        "moves by ±20 %); (k/n) = how many of the n training seeds, each decided alone by the same rules, "
        "give the pooled verdict. Report r²: the report's r² with the label, 95 % CI over seeds, then "
        "articles, then texts. Twins: the planted twins the battery got right on this model and neuron.",
        "",
        md_table(
            [
                "variant",
                "neuron",
                "condition",
                "seeds",
                "report r²",
                "H1",
                "H2-in",
                "H2-out",
                "H3",
                "twins right",
            ],
            verdicts,
        ),  # fmt: skip
        "",
        "## Shares of the report's label information, and the neuron's spread",
        "",
        "Share of the report's label r² removed by interchanging the neuron (H2-out) and its W_in span with "
        "the neuron pinned (H2-in bypass) at the label position, and the share that survives removing both "
        "at every non-sink position (H1); pooled 95 % CI over seeds → articles → texts, then each seed's "
        "value. Std ratio: the neuron's std after / before training on the test texts (H3 when < 0.5).",
        "",
        md_table(
            [
                "variant",
                "neuron",
                "condition",
                *(label for _, label in SHARES),
                "neuron share per seed",
                "survives per seed",
                "std ratio",
                "std ratio per seed",
            ],
            numbers,
        ),  # fmt: skip
        "",
    ]
