"""The battery's statistics: r² and Δr², the cluster bootstrap, rank p, BH, and the matched nulls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from mechcheck.battery import nulls
from mechcheck.battery.aggregate import Pooled
from mechcheck.battery.base import BatteryOptions
from mechcheck.battery.context import build_context
from mechcheck.battery.scoring import delta_r2
from mechcheck.readout import LinearReadout, Neuron
from mechcheck.stats import (
    Resampler,
    bh,
    interval,
    moments,
    r2,
    r2_from_moments,
    rank_p,
)
from mechcheck.testing import random_texts, tiny_subject


# --- r² and Δr² ---------------------------------------------------------------------------------
def test_r2_from_moments_is_the_squared_correlation():
    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    a = 0.5 * y + rng.normal(size=(3, 200))  # three reports at once
    want = [np.corrcoef(y, row)[0, 1] ** 2 for row in a]
    assert r2(y, a) == pytest.approx(want, rel=1e-10)
    assert r2_from_moments(moments(y, a[0]).sum(0)) == pytest.approx(want[0], rel=1e-10)
    assert r2(y, np.full(200, 3.0)) == 0.0  # a constant report carries nothing
    assert r2(y, y) == pytest.approx(1.0)


def test_an_affine_change_of_the_report_costs_no_information():
    rng = np.random.default_rng(1)
    y = rng.normal(size=300)
    clean = y + 0.3 * rng.normal(size=300)
    edited = np.stack([clean + 5.0, -3.0 * clean + 1.0, 0.1 * clean, rng.normal(size=300)], axis=1)
    dr2 = delta_r2(y, clean, edited)
    assert dr2[:3] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)  # shift, flip and rescale
    assert dr2[3] == pytest.approx(float(r2(y, clean)), abs=0.02)  # noise removes it all
    # the pooled numbers agree: no information lost, yet the report moved a lot
    pool = Pooled([np.arange(300)], n_boot=200, ci=0.95, seed=0)
    info = pool.information([y], [clean], [edited[:, 0]])
    assert info["dr2"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert info["share"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert info["dr2"]["ci"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert info["motion"]["value"] == pytest.approx(5.0 / y.std())
    assert info["shift"]["value"] == pytest.approx(5.0 / y.std())


# --- the cluster bootstrap ------------------------------------------------------------------------
def test_one_seed_resamples_whole_groups():
    groups = np.repeat(np.arange(10), 5)  # 10 articles of 5 texts
    sampler = Resampler([groups], n_boot=400, seed=0)
    [w] = sampler.weights
    assert w.shape == (400, 50) and (sampler.seed_counts == 1).all()
    per_group = w.reshape(400, 10, 5)
    assert (per_group == per_group[..., :1]).all()  # texts of an article move together
    assert (per_group[..., 0].sum(1) == 10).all()  # 10 articles drawn per replicate
    # a statistic of article-constant data: its replicates are the means over the drawn articles
    value = np.repeat(np.arange(10.0), 5)
    x = np.stack([np.ones(50), value], -1)
    point, reps = sampler.replicates(lambda s: s[..., 1] / s[..., 0], [x])
    assert point == pytest.approx(4.5)
    counts = per_group[..., 0]
    assert reps == pytest.approx(counts @ np.arange(10.0) / 10)
    # article-level resampling is wider than treating the 50 texts as independent
    texts = Resampler([np.arange(50)], n_boot=400, seed=0)
    wide = np.diff(interval(reps, 0.95))[0]
    narrow = np.diff(interval(texts.replicates(lambda s: s[..., 1] / s[..., 0], [x])[1], 0.95))[0]
    assert wide > 1.5 * narrow


def test_several_seeds_widen_the_ci_when_they_disagree():
    rng = np.random.default_rng(2)
    base = rng.normal(size=60)
    groups = [np.arange(60), np.arange(60)]

    def ci(offset: float):
        per_seed = [np.stack([np.ones(60), base], -1), np.stack([np.ones(60), base + offset], -1)]
        pool = Pooled(groups, n_boot=500, ci=0.95, seed=0)
        return pool.metric(lambda s: s[..., 1] / s[..., 0], per_seed)

    agree, disagree = ci(0.0), ci(3.0)
    assert agree["seeds"] == pytest.approx([base.mean()] * 2)
    assert disagree["value"] == pytest.approx(base.mean() + 1.5)  # the mean over seeds
    assert disagree["seeds"] == pytest.approx([base.mean(), base.mean() + 3.0])
    width = lambda m: m["ci"][1] - m["ci"][0]  # noqa: E731
    assert width(disagree) > 3 * width(agree)
    assert disagree["ci"][0] < base.mean() + 0.5 and disagree["ci"][1] > base.mean() + 2.5


# --- rank p and BH ----------------------------------------------------------------------------------
def test_rank_p_floor_and_ties():
    assert rank_p(5.0, np.zeros(100)) == pytest.approx(1 / 101)  # never below 1 / (n + 1)
    assert rank_p(1.0, np.ones(9)) == 1.0  # ties count against the effect
    assert rank_p(0.5, [0.0, 1.0]) == pytest.approx(2 / 3)
    assert rank_p(0.5, [0.0, float("nan"), 1.0]) == pytest.approx(2 / 3)  # NaN draws are dropped
    assert rank_p(float("nan"), [0.0]) == 1.0 and rank_p(1.0, []) == 1.0


def test_bh_equals_the_textbook_procedure_and_scipy():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.001])
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    want = np.empty_like(q)
    want[order] = np.minimum(q, 1)
    assert bh(p) == pytest.approx(want)
    assert bh(p) == pytest.approx(stats.false_discovery_control(p, method="bh"))
    assert bh([]) == []


# --- matched nulls ----------------------------------------------------------------------------------
def test_matched_subspaces_are_orthogonal_to_the_span_and_variance_matched():
    rng = np.random.default_rng(3)
    d, k = 24, 2
    scales = np.geomspace(10.0, 0.1, d)  # anisotropic, like a residual stream
    rot = np.linalg.qr(rng.normal(size=(d, d)))[0]
    x = rng.normal(size=(2000, d)) * scales @ rot.T
    cov = np.cov(x, rowvar=False)
    exclude = np.linalg.qr(rot[:, 3 : 3 + k] + 0.3 * rot[:, 10 : 10 + k])[0]  # a mid-variance span
    found = nulls.matched_subspaces(cov, exclude, k, 50, np.random.default_rng(0))
    assert len(found.bases) == 50 and found.matched == 50
    assert found.target == pytest.approx(nulls.span_variance(cov, exclude))
    for b, v in zip(found.bases, found.variances, strict=True):
        assert b.shape == (d, k)
        assert np.allclose(b.T @ b, np.eye(k), atol=1e-8)
        assert np.abs(exclude.T @ b).max() < 1e-8
        assert 1 / nulls.MATCH <= v / found.target <= nulls.MATCH
        assert v == pytest.approx(nulls.span_variance(cov, b))
    again = nulls.matched_subspaces(cov, exclude, k, 50, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(found.bases, again.bases, strict=True))


def test_matched_subspaces_say_when_no_match_exists():
    cov = np.diag([100.0, 1.0, 1.0, 1.0])
    exclude = np.eye(4)[:, :1]  # the one large direction: nothing else is within a factor 2
    found = nulls.matched_subspaces(cov, exclude, 1, 10, np.random.default_rng(0))
    assert found.matched == 0 and len(found.bases) == 10  # the nearest, and it says so
    assert all(np.abs(exclude.T @ b).max() < 1e-8 for b in found.bases)


TARGET = Neuron(2, 3)  # in a random 4-layer tiny Llama: write magnitudes overlap across layers


@pytest.fixture(scope="module")
def ctx():
    torch.set_num_threads(1)
    subject = tiny_subject("llama", seed=1)
    options = BatteryOptions(n_null=10, batch_size=16)
    return build_context(subject, subject, LinearReadout(subject.d_model), TARGET, "last",
                         random_texts(40, seed=2), None, options)  # fmt: skip


def test_matched_neurons_never_return_the_target_and_prefer_its_layer(ctx):
    mag = nulls.write_magnitudes(ctx)
    assert mag.shape == (4, ctx.trained.d_mlp)
    target = mag[TARGET.layer, TARGET.index]
    ok = (mag / target >= 1 / nulls.MATCH) & (mag / target <= nulls.MATCH)
    ok[TARGET.layer, TARGET.index] = False
    in_layer = int(ok[TARGET.layer].sum())
    n = in_layer + 5  # more than the neuron's own layer can give
    found = nulls.matched_neurons(ctx, n, np.random.default_rng(0))
    assert found.target == pytest.approx(target) and found.matched == n
    assert (TARGET.layer, TARGET.index) not in found.units and len(set(found.units)) == n
    assert all(ok[u] for u in found.units)  # every one within a factor MATCH of the target
    layers = [u[0] for u in found.units]
    # its own layer first, then the next one — never a layer before L (whose neurons act partly
    # through the tested neuron, so their null would contain the effect under test)
    assert layers == [TARGET.layer] * in_layer + [TARGET.layer + 1] * 5
    too_many = nulls.matched_neurons(ctx, int(ok.sum()) + 5, np.random.default_rng(0))
    assert too_many.matched == int(ok[TARGET.layer :].sum())  # says how many really match
    assert min(u[0] for u in too_many.units) == TARGET.layer
    same = nulls.matched_neurons(ctx, 5, np.random.default_rng(0), same_layer=True)
    assert {u[0] for u in same.units} == {TARGET.layer} and (TARGET.layer, TARGET.index) not in same.units
    again = nulls.matched_neurons(ctx, n, np.random.default_rng(0))
    assert again.units == found.units  # seeded


def test_derangement_has_no_fixed_point():
    rng = np.random.default_rng(0)
    for n in (2, 3, 17, 300):
        perm = nulls.derangement(n, rng)
        assert sorted(perm) == list(range(n)) and not (perm == np.arange(n)).any()
    assert np.array_equal(
        nulls.derangement(50, np.random.default_rng(5)), nulls.derangement(50, np.random.default_rng(5))
    )
