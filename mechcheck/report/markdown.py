"""Markdown sections of the report: header, verdicts, one section per condition, threats.

Every number comes from the view (results.json and saved predictions); nothing is typed in.
Figures are drawn through a `Figures` sink that returns the markdown that shows them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mechcheck.report.figures as fig
from mechcheck.neuron import MLP_OUT_COORDINATE
from mechcheck.report.predictions import array, prediction_fits, stale_fraction, std_ratio, target_key
from mechcheck.report.tables import MISSING, fmt, fmt_ci, get, md_table
from mechcheck.report.validity import THRESHOLDS, threats
from mechcheck.report.views import ConditionView, RunView
from mechcheck.stats import Fit, digit_metrics, spread

TRAINED = {
    "frozen": "the readout only (the model is frozen)",
    "unfrozen": "every weight of the model, and the readout",
    "after_target": "the layers after the neuron's layer, the final norm and the readout",
}
REGIMES = {
    "fixed": "fixed labels from the original model",
    "live": "the current model's own activation, gradient flowing into it",
    "live_detached": "the current model's own activation, no gradient through the label",
}


class Figures:
    """Draws figures into `folder` and returns the markdown that shows (or excuses) each one."""

    def __init__(self, folder: Path, link_prefix: str = "figures"):
        self.folder = folder
        self.link_prefix = link_prefix
        self.drawn: list[Path] = []

    def show(self, name: str, draw: Callable[..., Path | None], data: Any, title: str, caption: str) -> str:
        """Draw `draw(data, path, title)`; the markdown image link, or a note when there is no data."""
        file = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") + ".png"
        path = draw(data, self.folder / file, title)
        if path is None:
            return f"*({caption}: no data to draw)*"
        self.drawn.append(path)
        return f"![{caption}]({self.link_prefix}/{file})"


# --- header --------------------------------------------------------------------------------
def _corpus_text(card: Any) -> str:
    if not isinstance(card, dict):
        return MISSING
    parts = [f"`{card.get('spec', '?')}`"]
    if "final_texts" in card:
        parts.append(f"{fmt(card['final_texts'])} texts")
    counts = get(card, "split", "texts")
    if isinstance(counts, dict):
        parts.append("(" + " / ".join(f"{k} {fmt(v)}" for k, v in counts.items()) + ")")
    sources = [
        f"{s.get('name', '?')} — {s.get('licence', 'licence unknown')}"
        + (f", via {s['via']}" if s.get("via") else "")
        for s in card.get("sources") or []
        if isinstance(s, dict)
    ]
    if sources:
        parts[-1] += ";"
        parts.append("sources: " + "; ".join(sources))
    return " ".join(parts)


def _neuron_text(neuron: Any) -> str:
    if isinstance(neuron, list) and neuron:  # several neurons
        return "; ".join(_neuron_text(n) for n in neuron)
    if not isinstance(neuron, dict):
        return MISSING
    if neuron.get("kind") == MLP_OUT_COORDINATE:  # the original study's target: not an MLP neuron
        return f"coordinate {neuron.get('index')} of layer {neuron.get('layer')}'s MLP output (not a neuron)"
    return f"layer {neuron.get('layer')}, index {neuron.get('index')}"


def header_section(view: RunView) -> str:
    h = view.header
    regimes = {}
    for c in view.conditions:
        regimes.setdefault(c.condition, []).append(c.target_mode)
    seeds = sorted({s for c in view.conditions for s in c.seeds})
    versions = h.get("versions") if isinstance(h.get("versions"), dict) else {}
    rows = [
        ["model", f"`{h.get('model') or MISSING}`"],
        ["neuron", _neuron_text(h.get("neuron")) + _selection_text(view.selection)],
        ["position", str(h.get("position") or MISSING)],
        ["corpus", _corpus_text(h.get("corpus"))],
        ["label regime", "; ".join(f"{c}: {', '.join(m)}" for c, m in regimes.items()) or MISSING],
        ["seeds", ", ".join(map(str, seeds)) or MISSING],
        ["evaluation", _eval_text(view)],
        ["versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or MISSING],
    ]
    return f"# mechcheck report — {view.name}\n\n" + md_table(["run", f"`{view.name}`"], rows)


def _selection_text(selection: Any) -> str:
    if not isinstance(selection, dict):
        return ""
    if selection.get("fixed"):
        return " (fixed by the experiment)"
    chosen = get(selection, "neurons", 0) or {}
    text = f" (selected by `{selection.get('criterion', '?')}` over layers {selection.get('layers', '?')}"
    if "std" in chosen:
        text += f"; std {fmt(chosen['std'])}, range {fmt(chosen.get('min'))} … {fmt(chosen.get('max'))}"
    return text + ")"


def _eval_text(view: RunView) -> str:
    evals = [c.results.get("eval") for c in view.conditions if isinstance(c.results.get("eval"), dict)]
    if not evals:
        return MISSING
    e = evals[0]
    return f"{e.get('source', '?')}: {fmt(e.get('n_texts'))} texts, {fmt(e.get('n_labels'))} labels"


# --- one condition ----------------------------------------------------------------------------
def _fit_cell(f: Fit | None) -> str:
    return MISSING if f is None else fmt_ci(f.skill, f.ci)


def _metrics_fit_row(seed: int, test: dict[str, Any]) -> list[str]:
    """A row from run.json's own test metrics, for a seed whose predictions were not saved."""
    cells = [MISSING, MISSING, MISSING, fmt(test.get("skill")), MISSING]
    return [str(seed), *cells, *(fmt(test.get(k)) for k in ("mse", "r", "pred_sd_ratio"))]


def _fit_row(seed: int, pred: dict[str, Any]) -> list[str]:
    fits = prediction_fits(pred, seed)
    key = target_key(pred)
    target = fits.get("after_vs_target")
    labels, after = array(pred, key), array(pred, "predictions")
    ok = labels is not None and after is not None and labels.std() > 0
    ratio = float(after.std() / labels.std()) if ok else None
    cells = [_fit_cell(fits.get(k)) for k in ("before_vs_fixed", "after_vs_fixed", "after_vs_live")]
    scored = [fmt(getattr(target, k) if target else None) for k in ("mse", "r")]
    return [str(seed), "live neuron" if key == "live_labels" else "fixed labels",
            fmt(target.n if target else None), *cells, *scored, fmt(ratio)]  # fmt: skip


def fit_table(c: ConditionView) -> str:
    rows = []
    for seed in c.seeds:
        pred = c.predictions.get(seed)
        rows.append(
            _fit_row(seed, pred) if pred else _metrics_fit_row(seed, get(c.metrics(seed), "test") or {})
        )
    head = ["seed", "trained on", "labels", "skill before", "skill after (fixed labels)",
            "skill after (live neuron)", "MSE after", "r", "SD(report)/SD(target)"]  # fmt: skip
    note = (
        "Skill = 1 − MSE/Var(label) on the test split, with a 95 % bootstrap CI over texts, computed "
        "from the saved predictions. *Fixed labels* come from the original model; *live neuron* is the "
        "trained model's own activation. MSE, r and the SD ratio are against what the run was trained on."
    )
    return note + "\n\n" + md_table(head, rows)


DIGIT_KEYS = ("labels_digit", "predictions_digit", "predictions_argmax")
DIGIT_MOVES = ("spearman", "argmax_accuracy", "within_one", "mae")  # shown before → after


def digit_table(c: ConditionView) -> str | None:
    """A token readout's answers in class space, per seed, from the saved predictions: Spearman of the
    expected class with the true one, arg-max accuracy (against always answering the commonest class),
    within one class and mean absolute error, before → after training. None for a linear readout."""
    rows = []
    for seed in c.seeds:
        pred = c.predictions.get(seed) or {}
        if not all(k in pred for k in DIGIT_KEYS):
            continue
        after = digit_metrics(pred["predictions_digit"], pred["predictions_argmax"], pred["labels_digit"])
        before = {}
        if "predictions_digit_before" in pred:
            before = digit_metrics(
                pred["predictions_digit_before"], pred["predictions_argmax_before"], pred["labels_digit"]
            )
        moved = {k: f"{fmt(before.get(k))} → {fmt(after[k])}" for k in DIGIT_MOVES}
        rows.append([str(seed), str(after["n"]), moved["spearman"], moved["argmax_accuracy"],
                     fmt(after["chance_accuracy"]), moved["within_one"], moved["mae"]])  # fmt: skip
    if not rows:
        return None
    head = ["seed", "labels", "Spearman(expected, true class)", "arg-max accuracy",
            "chance (commonest class)", "arg-max within one class", "MAE (classes)"]  # fmt: skip
    note = (
        "The answer in token space (before → after training), from the saved predictions: the "
        "label's class (the readout's bins, fitted on the train labels), the answer's expected class "
        "under the answer tokens' probabilities, and its most probable answer token."
    )
    return note + "\n\n" + md_table(head, rows)


def neuron_table(c: ConditionView) -> str:
    rows = []
    for seed in c.seeds:
        pred = c.predictions.get(seed) or {}
        before, after = spread(array(pred, "labels")), spread(array(pred, "live_labels"))
        m = c.metrics(seed)
        before = before or m.get("neuron_before") or {}
        after = after or m.get("neuron_after") or {}
        ratio = std_ratio(pred)
        stale = stale_fraction(pred)
        rows.append(
            [
                str(seed),
                fmt(before.get("mean")),
                fmt(before.get("std")),
                fmt(after.get("mean")),
                fmt(after.get("std")),
                fmt(ratio),
                fmt(stale),
            ]
        )
    head = [
        "seed",
        "mean before",
        "std before",
        "mean after",
        "std after",
        "std after/before",
        "MSE(fixed, live)/Var",
    ]
    return md_table(head, rows)


def drift_table(c: ConditionView) -> str:
    rows = []
    for seed in c.seeds:
        m = c.metrics(seed)
        rows.append(
            [
                str(seed),
                fmt(m.get("lm_loss_before")),
                fmt(m.get("lm_loss_after")),
                fmt(m.get("kl_after")),
                fmt(m.get("neuron_unchanged_maxdiff")),
            ]
        )
    return md_table(
        ["seed", "LM loss before", "LM loss after", "KL(original ‖ trained)", "neuron max |Δ|"], rows
    )


def curve_table(c: ConditionView) -> str:
    rows = []
    for seed, curves in sorted(c.curves.items()):
        vals = [r for r in curves if isinstance(r.get("val_mse"), int | float)]
        if not vals:
            continue
        best = min(vals, key=lambda r: r["val_mse"])
        first = vals[1] if len(vals) > 1 else vals[0]
        rows.append(
            [
                str(seed),
                fmt(vals[0]["val_mse"]),
                f"{fmt(first['val_mse'])} (step {first.get('step')})",
                f"{fmt(best['val_mse'])} (step {best.get('step')})",
                fmt(vals[-1].get("step")),
            ]
        )
    if not rows:
        return "*(no training curves saved)*"
    return md_table(["seed", "val MSE step 0", "val MSE first eval", "best val MSE", "last step"], rows)


def condition_section(c: ConditionView, figs: Figures) -> str:
    readout = "frozen at its seeded random initialisation" if c.readout_frozen else "trained"
    title = c.title
    out = [
        f"## Condition: {title}",
        "",
        f"Trains {TRAINED.get(c.condition, c.condition)}; readout {readout}. "
        f"Labels: {REGIMES.get(c.target_mode, c.target_mode)}. "
        f"Seeds: {', '.join(map(str, c.seeds)) or MISSING}.",
        "",
        "### Fit on the test split",
        "",
        fit_table(c),
        "",
        *([digit, ""] if (digit := digit_table(c)) else []),
        figs.show(
            f"{c.key}-predicted-vs-actual",
            fig.predicted_vs_actual,
            c.predictions,
            f"{title}: report vs neuron",
            caption="predicted vs actual",
        ),
        "",
        "### Training curves",
        "",
        curve_table(c),
        "",
        figs.show(
            f"{c.key}-curves", fig.training_curves, c.curves, f"{title}: training", caption="training curves"
        ),
        "",
        "### The neuron before and after training (test split)",
        "",
        neuron_table(c),
        "",
        figs.show(
            f"{c.key}-neuron",
            fig.neuron_distribution,
            c.predictions,
            f"{title}: neuron distribution",
            caption="neuron distribution",
        ),
        "",
        "### Drift",
        "",
        drift_table(c),
    ]
    return "\n".join(out)


def threats_section(view: RunView) -> str:
    out = ["## Threats to validity", ""]
    for c in view.conditions:
        found = threats(c)
        out.append(f"**{c.title}**" + ("" if found else ": none found."))
        out += [f"- {line}" for line in found]
        out.append("")
    out.append("Thresholds: " + "; ".join(f"{k} {fmt(v)}" for k, v in THRESHOLDS.items()) + ".")
    return "\n".join(out)
