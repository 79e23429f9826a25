"""The in-context baseline's report: skill vs k, rendered from `incontext/results.json` alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechcheck.report.figures import probe_figure
from mechcheck.report.tables import fmt_ci, md_table
from mechcheck.report.views import read_json

METRICS = (  # results key, column, what it measures
    (
        "r2_units",
        "skill (neuron units)",
        "1 − MSE / Var of the label, the answer mapped to its decile's train mean",
    ),
    (
        "spearman_digit",
        "Spearman (expected digit, true decile)",
        "rank agreement of the answer and the decile",
    ),
    ("mae_digit", "MAE (digits)", "mean |expected digit − true decile|"),
    ("accuracy_argmax", "arg-max accuracy", "share of texts whose most likely digit is the true decile"),
)


def _entry(row: dict[str, Any], key: str) -> str:
    value = row.get(key) or {}
    return fmt_ci(value.get("value"), value.get("ci"))


def render_incontext(folder: str | Path) -> Path:
    """report.md (and figures/incontext.png) of an in-context run directory; returns the report's path."""
    folder = Path(folder)
    results = read_json(folder / "incontext" / "results.json")
    by_k = results["by_k"]
    neuron = results["neuron"]
    figure = probe_figure(
        {
            "kind": "line", "x": [row["k"] for row in by_k], "xlabel": "k labelled examples in the prompt",
            "ylabel": "skill / Spearman", "title": "the untouched model asked in context",
            "series": {
                label: {
                    "y": [(row.get(key) or {}).get("value") for row in by_k],
                    "ci": [(row.get(key) or {}).get("ci") for row in by_k],
                }
                for key, label, _ in METRICS[:2]
            },
        },
        folder / "figures" / "incontext.png",
    )  # fmt: skip
    corpus = results.get("corpus") or {}
    source = corpus.get("spec") or corpus.get("source") or "?"
    lines = [
        f"# mechcheck in-context baseline — {results.get('name', folder.name)}",
        "",
        f"Can the untouched model `{results['model']}` report neuron L{neuron['layer']}/{neuron['index']} "
        f"(position `{results.get('position', 'last')}`) from k labelled examples, with no training? Each "
        f"of {results['n_test']} test texts is asked after k examples drawn at random "
        f"(seed {results['seed']}) "
        f"from {results['n_train']} train texts of the experiment's own split (corpus "
        f"`{source}`); the answer is the next-token distribution over the ten digit "
        "tokens, scored as the fine-tuned `digit` readout is. 95 % bootstrap CIs over the test texts.",
        "",
        md_table(
            ["k", *(label for _, label, _ in METRICS)],
            [[row["k"], *(_entry(row, key) for key, _, _ in METRICS)] for row in by_k],
        ),  # fmt: skip
        "",
        *(f"- {label}: {what}." for _, label, what in METRICS),
        "",
    ]
    if figure is not None:
        lines += [f"![skill vs k]({figure.relative_to(folder).as_posix()})", ""]
    prompt = results.get("prompt") or {}
    if prompt:
        example, query = (repr(prompt.get(k, "")) for k in ("example", "query"))
        lines += [f"Prompt: k blocks {example}, then {query}.", ""]
    if "seconds" in results:
        lines += [f"Time: {results['seconds']:.0f} s.", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
