"""The report of the rebuilt battery, rendered from a real (planted, two-seed) battery directory (its
snapshot: test_render.py's `test_snapshot`), and its numbers recomputed from the per-seed data files
it rests on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from report_kit import PNG_MAGIC, copy_fixture, figure_links

from mechcheck.report import render_report
from mechcheck.stats import r2


@pytest.fixture
def battery_dir(tmp_path: Path) -> Path:
    return copy_fixture("report_fixture_v2", tmp_path)


def test_the_report_shows_verdicts_shares_and_twins(battery_dir: Path) -> None:
    text = render_report(battery_dir).read_text()
    assert "Withdrawn" not in text
    assert "| frozen (fixed) | not supported | not supported | **supported** | not supported |" in text
    for twin in ("twin.H1", "twin.H2_in", "twin.H2_out", "twin.null"):
        assert f"`{twin}`" in text
    assert "2 training seeds (seeds resampled first)" in text
    links = figure_links(text)
    assert links and all((battery_dir / link).read_bytes()[:8] == PNG_MAGIC for link in links)


def test_every_share_recomputes_from_the_per_seed_data(battery_dir: Path) -> None:
    """The pooled share of a test is the mean over seeds of each seed's Δr² / r², computed here
    from the per-text reports in battery/seed-<k>.json alone."""
    results = json.loads((battery_dir / "results.json").read_text())
    seeds = [json.loads((battery_dir / "battery" / f"seed-{s}.json").read_text()) for s in (0, 1)]
    for test in ("neuron", "in_bypass", "in_total", "out_direct", "remainder"):
        for head in ("report", "twin.H2_out", "control.token_count"):
            per_seed = []
            for data in seeds:
                y = np.asarray(data["heads"][head]["label"])
                clean = np.asarray(data["heads"][head]["clean"])
                edited = np.asarray(data["tests"][test]["edited"]["effect"][head])
                before = float(r2(y, clean))
                per_seed.append((before - float(r2(y, edited))) / before)
            got = results["probes"][test]["heads"][head]["share"]
            assert got["value"] == pytest.approx(np.mean(per_seed), abs=1e-9), (test, head)
            assert got["seeds"] == pytest.approx(per_seed, abs=1e-9)
            null = results["probes"][test]["heads"][head]["null"]
            pooled = np.mean([d["tests"][test]["null"][head] for d in seeds], axis=0)
            assert null["null"] == pytest.approx(pooled.tolist(), abs=1e-12)
            effect = results["probes"][test]["heads"][head]["dr2"]["value"]
            assert null["p"] == pytest.approx((1 + np.sum(pooled >= effect)) / (1 + len(pooled)))
