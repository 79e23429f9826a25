"""Scan: running statistics against full-data numbers, reservoir sampling, batching, ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

from mechcheck import scan as scan_module
from mechcheck.batching import length_sorted_batches, padding_fraction
from mechcheck.errors import UserError
from mechcheck.running_stats import QUANTILES, LayerStats, ReservoirSampler
from mechcheck.scan import (
    CRITERIA,
    ScanResult,
    neuron_histogram_png,
    rank,
    scan,
    select_neuron,
)
from mechcheck.subject import gather_position
from mechcheck.testing import random_texts, tiny_subject


def fold(rows: torch.Tensor, batch_sizes: list[int], capacity: int = 4096, seed: int = 0) -> LayerStats:
    stats, sampler, start = LayerStats.empty(rows.shape[1], capacity), ReservoirSampler(capacity, seed), 0
    while start < len(rows):
        size = batch_sizes[start % len(batch_sizes)]
        batch = rows[start : start + size]
        stats.update(batch, *sampler.plan(len(batch)))
        start += size
    stats.finish()
    return stats


def result_of(stats: LayerStats, layer: int = 0) -> ScanResult:
    return ScanResult({layer: stats}, "last", stats.n, stats.n, stats.n, 0, 1.0)


def test_running_moments_equal_full_data_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    rows = torch.cat([torch.randn(700, 3, generator=gen) * 4 + 10, torch.rand(700, 3, generator=gen) ** 3], 1)
    x = rows.double().numpy()
    for sizes in ([1], [16], [1, 5, 64, 3], [700]):
        s = fold(rows, sizes)
        assert s.n == 700
        np.testing.assert_allclose(s.mean.numpy(), x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(s.std.numpy(), x.std(0, ddof=1), rtol=1e-10)
        np.testing.assert_array_equal(s.min.numpy(), x.min(0))
        np.testing.assert_array_equal(s.max.numpy(), x.max(0))
        skew, kurt = sps.skew(x, 0, bias=False), sps.kurtosis(x, 0, bias=False)
        sarle = (skew**2 + 1) / (kurt + 3 * 699**2 / (698 * 697))
        np.testing.assert_allclose(s.bimodality().numpy(), sarle, rtol=1e-8)
        for name, q in QUANTILES.items():  # 700 rows fit the reservoir: exact quantiles
            np.testing.assert_allclose(
                s.quantiles[name].numpy(), np.quantile(rows.numpy(), q, axis=0), rtol=1e-6
            )


def test_reservoir_is_a_uniform_seeded_sample_of_fixed_size() -> None:
    n, capacity, hits = 1000, 50, np.zeros(10)
    rows = torch.arange(n, dtype=torch.float64)[:, None]
    for seed in range(200):
        s = fold(rows, [7, 1, 33], capacity=capacity, seed=seed)
        kept = s.reservoir[:, 0].numpy()
        assert s.filled == capacity and s.reservoir.shape == (capacity, 1)
        assert len(set(kept.tolist())) == capacity  # distinct rows of the stream
        np.add.at(hits, (kept // 100).astype(int), 1)
    # each decile of the stream holds 10 % of the sample: 1000 expected hits each (sd ~30)
    assert np.abs(hits - 1000).max() < 120
    again = fold(rows, [7, 1, 33], capacity=capacity, seed=3).reservoir
    assert torch.equal(again, fold(rows, [7, 1, 33], capacity=capacity, seed=3).reservoir)
    assert not torch.equal(again, fold(rows, [7, 1, 33], capacity=capacity, seed=4).reservoir)


def test_reservoir_quantiles_stay_within_the_documented_rank_error() -> None:
    rows = torch.rand(40_000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = fold(rows, [64], capacity=4096)
    for name, q in QUANTILES.items():  # uniform data: the value is its own population rank
        assert abs(float(s.quantiles[name][0]) - q) < 4 * (q * (1 - q) / 4096) ** 0.5
    assert s.reservoir.shape == (4096, 1)  # memory does not grow with the stream


def test_length_sorted_batches_cut_padding() -> None:
    lengths = [3, 10, 4, 9, 3, 10, 4, 9]
    batches = length_sorted_batches(lengths, 2, longest_first=True)
    assert batches == [[1, 5], [3, 7], [2, 6], [0, 4]]
    assert padding_fraction(lengths, batches) == 0
    assert padding_fraction(lengths, [[0, 1], [2, 3], [4, 5], [6, 7]]) == pytest.approx(1 - 52 / 76)


@pytest.mark.parametrize("position", ["last", "max", "mean", "all"])
def test_scan_equals_statistics_of_all_activations(position: str, capsys) -> None:
    s = tiny_subject("gpt2")
    texts = random_texts(70, seed=2, min_words=2, max_words=20)
    result = scan(s, texts, [3, 1], position, batch_size=8, max_tokens=12)
    enc = s.encode(texts, max_length=12)
    acts = s.mlp_post(enc, [1, 3])
    assert list(result.layers) == [1, 3]
    assert result.n_texts == 70 and result.n_tokens == int(enc["attention_mask"].sum())
    uncut = s.encode(texts, max_length=None)["attention_mask"].sum(1)
    assert result.n_truncated == int((uncut > 12).sum()) > int((uncut == 12).sum()) > 0
    assert 0 <= result.padding_fraction < 0.1 and result.tokens_per_s > 0
    for layer in (1, 3):
        rows = gather_position(acts[layer], enc["attention_mask"], position).double()
        stats = result.layers[layer]
        assert stats.n == result.n_rows == len(rows)
        torch.testing.assert_close(stats.mean, rows.mean(0), atol=1e-7, rtol=0)
        torch.testing.assert_close(stats.std, rows.std(0), atol=1e-7, rtol=0)
        torch.testing.assert_close(stats.max, rows.amax(0), atol=1e-6, rtol=0)
        if len(rows) <= 4096:
            p50 = torch.from_numpy(np.quantile(rows.float().numpy(), 0.5, axis=0))
            torch.testing.assert_close(stats.quantiles["p50"].float(), p50.float(), atol=1e-6, rtol=0)
    assert capsys.readouterr() == ("", "")  # library code prints nothing


def planted_result() -> ScanResult:
    """Neuron 0 wide Gaussian, 1 a lone spike, 2 two modes at ±3, 3 constant."""
    gen = torch.Generator().manual_seed(5)
    n = 2000
    rows = torch.zeros(n, 4, dtype=torch.float64)
    rows[:, 0] = 5 * torch.randn(n, generator=gen, dtype=torch.float64)
    rows[:, 1] = 0.01 * torch.randn(n, generator=gen, dtype=torch.float64)
    rows[7, 1] = 150
    rows[:, 2] = 3 * torch.sign(torch.randn(n, generator=gen)) + 0.1 * torch.randn(n, generator=gen)
    rows[:, 3] = 1.5
    return result_of(fold(rows, [16]), layer=4)


def test_rank_criteria_pick_the_planted_neurons() -> None:
    result = planted_result()
    best = {criterion: rank(result, criterion, top=4)[0]["index"] for criterion in CRITERIA}
    assert best == {"std": 0, "quantile_span": 0, "range": 1, "study": 0, "bimodality": 2}
    s = result.layers[4]
    study = [r["score"] for r in rank(result, "study", top=4)]
    expected = sorted((s.var * torch.log1p(s.max - s.min)).tolist(), reverse=True)
    assert study == pytest.approx(expected, rel=1e-12)
    bimodal = rank(result, "bimodality", top=4)
    assert [r["index"] for r in bimodal] == [2, 0]  # the spike and the constant are excluded
    assert bimodal[0]["score"] > 0.9 > 0.4 > bimodal[1]["score"] > 0.25


def test_rank_records_follow_the_design_schema() -> None:
    ranked = rank(planted_result(), "std", top=2)
    assert len(ranked) == 2
    record = ranked[0]
    assert list(record) == ["layer", "index", "mean", "std", "min", "max", "quantiles", "score"]
    assert list(record["quantiles"]) == ["p01", "p05", "p25", "p50", "p75", "p95", "p99"]
    assert record["layer"] == 4 and record["score"] == record["std"] == pytest.approx(5, rel=0.05)
    assert all(isinstance(v, float) for k, v in record.items() if k not in ("layer", "index", "quantiles"))
    assert record["min"] <= record["quantiles"]["p01"] <= record["quantiles"]["p99"] <= record["max"]


def test_rank_breaks_ties_by_layer_then_index() -> None:
    stats = fold(torch.tensor([[0.0, 1.0, 1.0], [2.0, 3.0, 3.0]]), [2])
    result = ScanResult({6: stats, 2: fold(torch.tensor([[5.0], [7.0]]), [2])}, "last", 2, 2, 2, 0, 1.0)
    assert [(r["layer"], r["index"]) for r in rank(result, "range", top=10)] == [
        (6, 0),
        (6, 1),
        (6, 2),
        (2, 0),
    ]


def test_select_neuron_and_bad_arguments() -> None:
    s = tiny_subject("llama")
    texts = random_texts(40, seed=4)
    best, ranked, result = select_neuron(s, texts, [2], "last", "quantile_span", top=5)
    assert best == ranked[0] and len(ranked) == 5 and result.n_texts == 40
    assert ranked[0]["score"] == pytest.approx(ranked[0]["quantiles"]["p99"] - ranked[0]["quantiles"]["p01"])
    with pytest.raises(UserError, match="criterion 'widest'.*std, quantile_span"):
        select_neuron(s, texts, [2], "last", "widest")
    with pytest.raises(UserError, match="position 'first'"):
        scan(s, texts, [2], "first")
    with pytest.raises(UserError, match="layer 4 is out of range"):
        scan(s, texts, [4], "last")
    with pytest.raises(UserError, match="no texts"):
        scan(s, [], [1], "last")
    with pytest.raises(UserError, match="1 label rows"):
        select_neuron(s, texts[:1], [1], "last")


def test_neuron_histogram_png(tmp_path) -> None:
    path = neuron_histogram_png(
        np.random.default_rng(0).normal(size=500), tmp_path / "h.png", "layer 1 neuron 2"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_default_reservoir_size_is_documented() -> None:
    assert scan_module.RESERVOIR_ROWS == 4096 and "4096" in scan_module.__doc__
