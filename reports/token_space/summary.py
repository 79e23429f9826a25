"""Digit readout vs linear regression head on the same neuron, from the trainers' run.json files.

    python reports/token_space/summary.py reports/token_space/digit/run.json \
        reports/token_space/linear/run.json runs/train-default/*/seed-0/run.json --out reports/token_space

Writes `summary.json` (the numbers, each with the run it came from) and `summary.md`. Skill is
1 - MSE / Var(labels) on each run's test split, in the neuron's units (the digit readout's report
is Σ p_d · mean train label of decile d); the digit columns score the expected digit against
the true decile.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mechcheck.run_record import RunRecord


def row(run: RunRecord, file: Path) -> dict[str, Any]:
    m = run.metrics or {}
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
            d = m[key]
            out[f"digit_{when}"] = {k: d[k] for k in ("spearman", "mae", "argmax_accuracy", "within_one")}
        out["chance_accuracy"] = m["digit"]["chance_accuracy"]
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    def f(x: Any) -> str:
        return "–" if x is None else f"{x:.3f}"

    lines = [
        "| readout | condition | texts (train/val/test) | steps (best) | test skill before → after | r | "
        "digit Spearman before → after | digit MAE before → after | arg-max acc. before → after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["texts"]
        digit = ["–", "–", "–"]
        if "digit_after" in r:
            b, a = r["digit_before"], r["digit_after"]
            digit = [f"{f(b[k])} → {f(a[k])}" for k in ("spearman", "mae", "argmax_accuracy")]
        lines.append(
            f"| {r['readout']} | {r['condition']} | {t['train']}/{t['val']}/{t['test']} | "
            f"{r['steps']} ({r['best_step']}) | {f(r['test_skill_before'])} → {f(r['test_skill'])} | "
            f"{f(r['test_r'])} | " + " | ".join(digit) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run.json files written by mechcheck train")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [row(RunRecord.read(file), file) for file in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "summary.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
