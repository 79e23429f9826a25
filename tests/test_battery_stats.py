"""The battery's statistics: bootstrap CIs, null comparisons, BH, aggregation over seeds."""

from __future__ import annotations

import numpy as np
import pytest

from mechcheck.battery import stats
from mechcheck.battery.edits import sattolo


def test_mean_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 2000)
    m_small = stats.mean_metric(small, 1000, 0.95, seed=1)
    m_large = stats.mean_metric(large, 1000, 0.95, seed=1)
    for m, x in ((m_small, small), (m_large, large)):
        assert m["ci"][0] < x.mean() < m["ci"][1]
    width = lambda m: m["ci"][1] - m["ci"][0]  # noqa: E731
    assert width(m_large) < width(m_small) / 4
    assert width(m_large) == pytest.approx(2 * 1.96 / np.sqrt(2000), rel=0.15)
    assert stats.mean_metric(small, 1000, 0.95, seed=1) == m_small  # seeded


def test_grouped_bootstrap_resamples_texts_not_rows():
    values = np.repeat(np.arange(10.0), 20)  # 10 texts, 20 identical rows each
    rows = stats.mean_metric(values, 1000, 0.95, seed=0)
    texts = stats.mean_metric(values, 1000, 0.95, seed=0, groups=np.repeat(np.arange(10), 20))
    assert texts["value"] == rows["value"] == 4.5
    assert texts["ci"][1] - texts["ci"][0] > 3 * (rows["ci"][1] - rows["ci"][0])


def test_r2_and_skill_change():
    y = np.linspace(-1, 1, 200)
    assert stats.r2(y, y) == 1.0 and stats.r2(np.zeros_like(y), y) == pytest.approx(0.0)
    m = stats.skill_change_metric(np.zeros_like(y), y, y, 500, 0.95, seed=0)
    assert m["value"] == pytest.approx(-1.0) and m["ci"][1] < -0.9
    ratio = stats.std_ratio_metric(0.5 * y + 3, y, 500, 0.95, seed=0)
    assert ratio["value"] == pytest.approx(0.5) and ratio["ci"] == pytest.approx([0.5, 0.5])


def test_null_control_places_the_observed_value():
    null = np.linspace(0, 1, 21)
    c = stats.null_control(2.0, null, "x")
    assert c["upper"] == pytest.approx(0.95) and c["percentile"] == 1.0 and c["p"] < 0.01
    assert c["observed"] == 2.0 and c["compares"] == "x"
    inside = stats.null_control(0.5, null, "x")
    assert 0.4 < inside["percentile"] < 0.6 and inside["p"] > 0.3
    assert stats.null_control(-2.0, null, "x", use_abs=True)["observed"] == 2.0
    empty = stats.null_control(1.0, [], "x")
    assert empty["null"] == [] and np.isnan(empty["upper"])


def test_bh_adjusts_upwards():
    q = stats.bh_adjust([0.01, 0.02, 0.5])
    assert q == pytest.approx([0.03, 0.03, 0.5])


def test_permutation_test_of_a_correlation():
    rng = np.random.default_rng(0)
    y = rng.normal(size=100)
    assert stats.correlation_pvalue(y + 0.1 * rng.normal(size=100), y, seed=0) < 0.01
    assert stats.correlation_pvalue(rng.normal(size=100), y, seed=0) > 0.01


def test_aggregation_takes_the_envelope_and_pools_nulls():
    seeds = [
        {"m": stats.metric(1.0, (0.8, 1.2))},
        {"m": stats.metric(2.0, (1.5, 2.5))},
    ]
    agg = stats.aggregate_metrics(seeds)["m"]
    assert agg["value"] == 1.5 and agg["ci"] == [0.8, 2.5] and agg["seeds"] == [1.0, 2.0]
    controls = [{"c": stats.null_control(1.0, [0.1, 0.2], "m")}, {"c": stats.null_control(2.0, [0.3], "m")}]
    pooled = stats.aggregate_controls(controls, {"m": agg}, 0.95)["c"]
    assert pooled["null"] == [0.1, 0.2, 0.3] and pooled["observed"] == 1.5


def test_slope_per_row():
    x = np.array([0.0, 1.0, 2.0])
    assert stats.slope(x, np.array([[1.0, 3.0, 5.0], [0.0, 0.0, 0.0]])) == pytest.approx([2.0, 0.0])


def test_sattolo_is_a_derangement():
    rng = np.random.default_rng(0)
    for n in (2, 3, 17, 300):
        perm = sattolo(n, rng)
        assert sorted(perm) == list(range(n)) and not (perm == np.arange(n)).any()
