"""`mechcheck compare`: one table of several runs, from their files alone.

Two kinds of run are tabulated:

- battery runs (a folder with results.json: `mechcheck test` or `mechcheck run`): test skill with
  its CI, the neuron's std ratio and the verdicts, one row per condition;
- trained checkpoints (a `run.json`, or a folder holding one and no results.json): what training
  did — test skill before → after, r, MSE, LM loss and KL, and for a digit readout the expected
  digit against the true decile (Spearman, MAE, arg-max accuracy, within one decile).

`--json` writes the same rows with every number unrounded, each naming the run it came from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mechcheck.errors import UserError
from mechcheck.outputs import claim_file, write_json, write_text
from mechcheck.report.predictions import pooled_fit, std_ratio
from mechcheck.report.tables import MISSING, fmt, fmt_ci, get, md_table
from mechcheck.report.verdicts_md import HYPOTHESES
from mechcheck.report.views import RunView, load_view
from mechcheck.run_record import RunRecord

VERDICT_SHORT = {"supported": "yes", "not_supported": "no", "inconclusive": "?"}
DIGIT_METRICS = ("spearman", "mae", "argmax_accuracy", "within_one")
RUN_FILE = "run.json"


# --- battery runs -----------------------------------------------------------------------------
def battery_rows(view: RunView) -> list[dict[str, Any]]:
    """One row per condition of a battery or pipeline run, its numbers unrounded."""
    rows = []
    for c in view.conditions:
        pooled = pooled_fit(c.predictions)
        ratios = [r for p in c.predictions.values() if (r := std_ratio(p)) is not None]
        neuron = c.results.get("neuron") or view.header.get("neuron") or {}
        rows.append(
            {
                "run": view.name,
                "folder": str(view.folder),
                "model": view.header.get("model"),
                "neuron": neuron if isinstance(neuron, dict) else None,
                "condition": c.condition,
                "target_mode": c.target_mode,
                "seeds": c.seeds,
                "test_skill": pooled.skill if pooled else None,
                "test_skill_ci": list(pooled.ci) if pooled and pooled.ci is not None else None,
                "neuron_std_ratio": sum(ratios) / len(ratios) if ratios else None,
                "verdicts": {h: get(c.results, "verdicts", h, "verdict") for h in HYPOTHESES},
            }
        )
    return rows


def battery_cells(row: dict[str, Any]) -> list[str]:
    neuron = row["neuron"]
    return [
        row["run"],
        f"`{row['model'] or MISSING}`",
        f"{neuron.get('layer', '?')}/{neuron.get('index', '?')}" if neuron is not None else MISSING,
        row["condition"],
        row["target_mode"],
        ", ".join(map(str, row["seeds"])) or MISSING,
        fmt_ci(row["test_skill"], row["test_skill_ci"]) if row["test_skill"] is not None else MISSING,
        fmt(row["neuron_std_ratio"]) if row["neuron_std_ratio"] is not None else MISSING,
        *(VERDICT_SHORT.get(row["verdicts"][h], MISSING) for h in HYPOTHESES),
    ]


BATTERY_HEAD = ("run", "model", "neuron", "condition", "labels", "seeds", "test skill [95 % CI]",
                "neuron std ratio", *(h.replace("_", "-") for h in HYPOTHESES))  # fmt: skip
BATTERY_LEGEND = (
    "Test skill against what each run was trained on (fixed labels or its live neuron), seeds pooled, "
    "95 % CI by bootstrap over texts; neuron std ratio = trained/original model on the test texts; "
    "verdicts: yes = supported, no = not supported, ? = inconclusive."
)


# --- trained checkpoints ----------------------------------------------------------------------
def training_row(run: RunRecord, file: Path) -> dict[str, Any]:
    """What one training run did, from its run.json (skill in the neuron's units, on its test split;
    a digit readout's report in those units is Σ p_d · mean train label of decile d)."""
    m = run.metrics or {}
    where = f"{file}: metrics"
    try:
        splits = (run.target or {})["card"]["splits"]
        out = {
            "run": str(file),
            "readout": run.readout_kind,
            "condition": run.condition,
            "texts": {s: splits[s]["texts"] for s in ("train", "val", "test")},
            "steps": m["steps"],
            "best_step": m["best_step"],
            "test_skill_before": m["test_before"]["skill"],
            "test_skill": m["test"]["skill"],
            "test_r": m["test"]["r"],
            "test_mse": m["test"]["mse"],
            "lm_loss": [m["lm_loss_before"], m["lm_loss_after"]],
            "kl_after": m["kl_after"],
            "seconds": (run.timing or {})["run"],
        }
        if "digit" in m:
            for when, key in (("before", "digit_before"), ("after", "digit")):
                out[f"digit_{when}"] = {k: m[key][k] for k in DIGIT_METRICS}
            out["chance_accuracy"] = m["digit"]["chance_accuracy"]
    except (KeyError, TypeError) as err:
        raise UserError(f"{where} lack {err} (a run.json written by mechcheck train has it)") from err
    return out


def _f3(value: Any) -> str:
    return MISSING if value is None else f"{value:.3f}"


def training_cells(row: dict[str, Any]) -> list[str]:
    t = row["texts"]
    digit = [MISSING] * 3
    if "digit_after" in row:
        before, after = row["digit_before"], row["digit_after"]
        digit = [f"{_f3(before[k])} → {_f3(after[k])}" for k in DIGIT_METRICS[:3]]
    return [
        row["readout"],
        row["condition"],
        f"{t['train']}/{t['val']}/{t['test']}",
        f"{row['steps']} ({row['best_step']})",
        f"{_f3(row['test_skill_before'])} → {_f3(row['test_skill'])}",
        _f3(row["test_r"]),
        *digit,
    ]


TRAINING_HEAD = ("readout", "condition", "texts (train/val/test)", "steps (best)",
                 "test skill before → after", "r", "digit Spearman before → after",
                 "digit MAE before → after", "arg-max acc. before → after")  # fmt: skip
TRAINING_LEGEND = (
    "Test skill = 1 − MSE / Var(labels) on each run's test split, in the neuron's units (a digit "
    "readout's report is Σ p_d · mean train label of decile d); the digit columns score the expected "
    "digit against the true decile. LM loss, KL, within-one accuracy and chance accuracy: `--json`."
)


# --- the command ------------------------------------------------------------------------------
def run_file(path: Path) -> Path | None:
    """The run.json a compare argument names, or None when it names a battery run."""
    if path.is_file() and path.suffix == ".json" and path.name != "results.json":
        return path
    if path.is_dir() and not (path / "results.json").is_file() and (path / RUN_FILE).is_file():
        return path / RUN_FILE
    return None


def compare(paths: list[str | Path]) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table and its rows: of battery runs, or of trained checkpoints (not both at once)."""
    files = [run_file(Path(p)) for p in paths]
    if all(f is not None for f in files):
        rows = [training_row(RunRecord.read(f), f) for f in files if f is not None]
        head, cells, legend = TRAINING_HEAD, [training_cells(r) for r in rows], TRAINING_LEGEND
    elif any(f is not None for f in files):
        raise UserError(
            "compare tabulates battery runs (folders with results.json) or trained checkpoints "
            "(run.json), not both in one table"
        )
    else:
        rows = [row for p in paths for row in battery_rows(load_view(p))]
        head, cells, legend = BATTERY_HEAD, [battery_cells(r) for r in rows], BATTERY_LEGEND
    return md_table(head, cells) + "\n\n" + legend + "\n", rows


def compare_command(args: argparse.Namespace) -> int:
    """`mechcheck compare PATH…`: a markdown table of the runs on stdout (and in `--out`; the rows
    as JSON in `--json`)."""
    for out in (args.out, getattr(args, "json", None)):
        if out and Path(out).name in ("results.json", "report.md", RUN_FILE):
            raise UserError(
                f"{out}: choose another name; results.json, run.json and report.md belong to runs"
            )
    table, rows = compare(list(args.dirs))
    if args.out:
        write_text(claim_file(args.out, args.overwrite), table)
    if getattr(args, "json", None):
        write_json(claim_file(args.json, args.overwrite), rows)
    sys.stdout.write(table)
    return 0
