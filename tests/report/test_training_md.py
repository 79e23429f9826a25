"""The study summary's training table (issue 12): the target's std before → after per variant and
condition, its ratio's CI over seeds, the collapse call with its fragility, and the variants' changes
for an experiment with `reference = "study"` — on planted run.json files, so every number is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import mechcheck.report.training_md as training_md
from mechcheck import verdict
from mechcheck.report.study_md import render_summary
from mechcheck.report.training_md import collapse_call
from mechcheck.stats import percentile_ci


def _run(folder: Path, before: float, after: float, skill: float, kind: str = "neuron") -> None:
    folder.mkdir(parents=True)
    metrics = {"test": {"skill": skill}, "neuron_before": {"std": before}, "neuron_after": {"std": after}}
    record = {"neuron": {"layer": 3, "index": 7, "kind": kind}, "metrics": metrics | {"kl_after": 0.1}}
    (folder / "run.json").write_text(json.dumps(record))


def _study(root: Path, ratios: dict[str, list[float]]) -> Path:
    variants = [{"name": "as_it_ran"}, {"name": "true_neuron", "neuron": {"target": "neuron"}}]
    config = {"reference": "study", "variant": variants}
    root.mkdir()
    (root / "experiment.json").write_text(json.dumps({"identity": "planted", "config": config}))
    for name, values in ratios.items():
        (root / name).mkdir()
        (root / name / "results.json").write_text("{}")  # no battery: a coordinate target
        kind = "mlp_out_coordinate" if name == "as_it_ran" else "neuron"
        for seed, r in enumerate(values):
            _run(root / name / "train" / "unfrozen-fixed" / f"seed-{seed}", 4.0, 4.0 * r, 0.5, kind)
            _run(root / name / "train" / "frozen-fixed" / f"seed-{seed}", 4.0, 4.0, 0.8, kind)
    return root


def test_collapse_calls_and_their_fragility() -> None:
    assert training_md.H3_MAX_RATIO == verdict.H3_MAX_RATIO  # the same bar as H3's
    assert collapse_call([0.10, 0.11, 0.09, 0.12, 0.10]) == "yes (5/5)"
    assert collapse_call([1.0, 0.95, 1.1, 1.02, 0.98]) == "no (0/5)"
    assert collapse_call([0.2, 0.9, 0.3, 0.8, 0.5]).startswith("?")
    # CI entirely in [0.42, 0.48]: below 0.5, but not below 0.4 — the call flips when the bar moves 20 %
    assert collapse_call([0.45, 0.46, 0.44, 0.45, 0.47]) == "yes* (5/5)"
    assert collapse_call([0.55, 0.56, 0.54]) == "no* (0/3)"


def test_the_summary_tabulates_each_variants_target_over_seeds(tmp_path) -> None:
    collapsed = [0.10, 0.12, 0.09, 0.11, 0.10]
    kept = [0.97, 1.05, 1.0, 0.92, 1.01]
    text = render_summary(_study(tmp_path / "run", {"as_it_ran": collapsed, "true_neuron": kept})).read_text()
    assert "No finished variant has a battery" in text and "## Verdicts" not in text
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in text.splitlines()}
    row = rows[("as_it_ran", "L3 coordinate 7", "unfrozen-fixed")]
    mean = float(np.mean(collapsed))
    lo, hi = percentile_ci([np.asarray(collapsed)], np.mean, seed=0, vectorized=False)
    assert f"{mean:.3g} [{lo:.3g}, {hi:.3g}]" in row and "yes (5/5)" in row
    assert f"{4 * mean:.3g}" in row and "| 4 [4, 4] |" in row  # std after, std before
    assert "no (0/5)" in rows[("true_neuron", "L3 neuron 7", "unfrozen-fixed")]
    assert "| 1 [1, 1] |" in rows[("true_neuron", "L3 neuron 7", "frozen-fixed")]
    assert "| true_neuron | neuron.target = neuron |" in text and "| as_it_ran | none (the base) |" in text
    assert "3.7 → 0.4" in text  # the study's own figure, beside the attribution


@pytest.mark.parametrize("done", [["as_it_ran"], []])
def test_an_unfinished_study_names_what_is_left(tmp_path, done) -> None:
    root = _study(tmp_path / "run", {name: [0.5, 0.6] for name in done})
    text = render_summary(root).read_text()
    left = [n for n in ("as_it_ran", "true_neuron") if n not in done]
    assert f"Variants finished: {len(done)} of 2 (not yet: {', '.join(left)})" in text
