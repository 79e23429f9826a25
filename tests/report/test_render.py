"""The report: a snapshot of the markdown rendered from a fixed results.json, figures, robustness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from report_kit import PNG_MAGIC, check_snapshot, copy_fixture, figure_links

from mechcheck.cli import main
from mechcheck.report import render_report
from mechcheck.report.predictions import prediction_fits
from mechcheck.report.tables import fmt, fmt_ci
from mechcheck.report.views import load_view
from mechcheck.stats import fit


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return copy_fixture("report_fixture", tmp_path)


@pytest.mark.parametrize("name", ["report_fixture", "report_fixture_v2"])
def test_snapshot(name: str, tmp_path: Path) -> None:
    """The rendered markdown equals the committed snapshot (the first battery's results and the
    rebuilt battery's)."""
    check_snapshot(render_report(copy_fixture(name, tmp_path)).read_text(), name)


def test_every_linked_figure_is_a_png(run_dir: Path) -> None:
    text = render_report(run_dir).read_text()
    links = figure_links(text)
    assert len(links) == 7
    for link in links:
        assert (run_dir / link).read_bytes()[:8] == PNG_MAGIC


def test_rerender_is_identical_and_leaves_results_alone(run_dir: Path) -> None:
    results = (run_dir / "results.json").read_bytes()
    first = render_report(run_dir).read_text()
    second = render_report(run_dir).read_text()
    assert first == second
    assert (run_dir / "results.json").read_bytes() == results


def test_skill_and_ci_are_computed_from_the_predictions(run_dir: Path) -> None:
    pred = json.loads((run_dir / "predictions" / "seed-0.json").read_text())
    y, p = np.array(pred["labels"]), np.array(pred["predictions"])
    expected = 1 - np.mean((y - p) ** 2) / np.var(y)
    got = prediction_fits(pred)["after_vs_fixed"]
    assert got.skill == pytest.approx(expected, abs=1e-12)
    assert got.ci[0] < got.skill < got.ci[1]
    assert got.n == 60
    text = render_report(run_dir).read_text()
    assert "| 0 | fixed labels | 60 | " in text and fmt_ci(got.skill, got.ci) in text


def test_bootstrap_resamples_texts_not_tokens() -> None:
    """Position `all`: several labels per text; the CI must come from resampling whole texts."""
    rng = np.random.default_rng(0)
    y = np.repeat(rng.normal(size=20), 10)  # 20 texts × 10 identical tokens
    p = y + np.repeat(rng.normal(scale=0.5, size=20), 10)
    by_text, by_token = fit(y, p, np.repeat(np.arange(20), 10)), fit(y, p)
    assert by_text.n_texts == 20 and by_token.n_texts == 200
    assert by_text.skill == pytest.approx(by_token.skill)
    assert (by_text.ci[1] - by_text.ci[0]) > 2 * (by_token.ci[1] - by_token.ci[0])


def test_threats_are_found(run_dir: Path) -> None:
    text = render_report(run_dir).read_text()
    threats = text[text.index("## Threats to validity") :]
    assert "KL to the original = 0.12" in threats
    assert "held-out LM loss rose 3.1 → 3.5 (+13%)" in threats
    assert "small test set: 60 labels" in threats
    assert "stale labels" in threats and "0.41 × Var(label)" in threats
    assert "H3 inconclusive: the std ratio's CI straddles 0.5" in threats
    assert "`variance.std_ratio` did not clear its control(s) std_ratio.random_neurons" in threats
    assert "collapsed" not in threats


def test_collapse_and_baseline_threats(run_dir: Path) -> None:
    pred_file = run_dir / "predictions" / "seed-0.json"
    pred = json.loads(pred_file.read_text())
    pred["predictions"] = [round(float(np.mean(pred["labels"])) + 0.01 * (i % 3), 4) for i in range(60)]
    pred_file.write_text(json.dumps(pred))
    results = json.loads((run_dir / "results.json").read_text())
    results["runs"][0]["metrics"]["test"]["pred_sd_ratio"] = 0.01
    (run_dir / "results.json").write_text(json.dumps(results))
    text = render_report(run_dir).read_text()
    assert "seed 0: the report collapsed (SD(report)/SD(label) = 0.01)" in text
    assert "seed 0: the report does not beat a constant" in text


def test_study_reference_only_when_asked(run_dir: Path) -> None:
    assert "## Beside the original study" in render_report(run_dir).read_text()
    results = json.loads((run_dir / "results.json").read_text())
    results["run"]["experiment"]["reference"] = None
    (run_dir / "results.json").write_text(json.dumps(results))
    assert "## Beside the original study" not in render_report(run_dir).read_text()


def test_missing_pieces_are_said_not_crashed(run_dir: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("probes", "verdicts", "run", "runs", "eval", "skipped", "versions"):
        results.pop(key)
    (run_dir / "results.json").write_text(json.dumps(results))
    shutil.rmtree(run_dir / "predictions")
    text = render_report(run_dir).read_text()
    assert "*(no probe results in results.json)*" in text
    assert "*(predicted vs actual: no data to draw)*" in text
    assert "*(no training curves saved)*" in text
    assert "| H1 separate model | – | – | – |" in text


def test_unknown_figure_kind_and_odd_series_do_not_crash(run_dir: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    figures = results["probes"]["patching"]["figures"]
    figures["odd"] = {"kind": "violin", "series": {"a": [1, 2]}}
    figures["scatter"] = {"kind": "scatter", "title": "s", "series": {"a": {"x": [1, 2, 3], "y": [2, 4, 6]}}}
    figures["hist"] = {"kind": "hist", "series": {"null": [0.1, 0.2, 0.3], "observed": 0.9}}
    figures["line_ci"] = {"kind": "line", "x": [0, 1], "series": {"a": {"y": [1, 2], "ci": [[0, 2], [1, 3]]}}}
    (run_dir / "results.json").write_text(json.dumps(results))
    text = render_report(run_dir).read_text()
    assert "*(patching odd: no data to draw)*" in text
    for name in ("scatter", "hist", "line_ci"):
        assert (run_dir / "figures" / f"unfrozen-fixed-patching-{name}.png").read_bytes()[:8] == PNG_MAGIC


def test_report_command(run_dir: Path, capsys) -> None:
    assert main(["report", str(run_dir), "-q"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run_dir / 'report.md'}"


def test_report_command_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no results.json" in capsys.readouterr().err
    (tmp_path / "results.json").write_text(json.dumps({"format": "something-else/1"}))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown format 'something-else/1'" in err and len(err.strip().splitlines()) == 1


def test_compare(run_dir: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    out = tmp_path / "table.md"
    assert main(["compare", str(run_dir), str(other), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    rows = [line for line in printed.splitlines() if line.startswith("| unfrozen-fixed")]
    assert len(rows) == 2  # a copy is the same run: named by its results, not by its folder
    view = load_view(run_dir)
    ratio = np.mean(
        [np.std(p["live_labels"]) / np.std(p["labels"]) for p in view.conditions[0].predictions.values()]
    )
    assert f"| {fmt(float(ratio))} | no | no | yes | ? |" in rows[0]
    assert main(["compare", str(run_dir), "--out", str(out)]) == 2  # exists: refused
    assert "already exists" in capsys.readouterr().err
    assert main(["compare", str(run_dir), "--out", str(out), "--overwrite"]) == 0


def test_load_view_of_a_pipeline_run(run_dir: Path, tmp_path: Path) -> None:
    """A `mechcheck-run/1` results.json embeds each condition; predictions sit in its test dir."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run / "test" / "unfrozen-fixed")
    results = json.loads((run_dir / "results.json").read_text())
    combined = {
        "format": "mechcheck-run/1",
        "name": "demo",
        "experiment": {"reference": None},
        "conditions": [
            {
                "key": "unfrozen-fixed",
                "dir": "test/unfrozen-fixed",
                "results": results,
                "curves": {"0": results["run"]["curves"], "1": results["run"]["curves"]},
            }
        ],
    }
    (run / "results.json").write_text(json.dumps(combined))
    view = load_view(run)
    assert view.name == "demo" and view.reference is None
    (cond,) = view.conditions
    assert cond.seeds == [0, 1] and sorted(cond.curves) == [0, 1] and sorted(cond.predictions) == [0, 1]
    text = render_report(run).read_text()
    assert text.startswith("# mechcheck report — demo")
    assert "| 1 | 4 | 1.6 (step 50) |" in text  # seed 1 has a curve row: from the embedded curves
