"""The battery on planted mechanisms: it must find the planted hypothesis and never a wrong one.

Cases H1, H2_in and H2_out (see tests/planted.py) over three seeds of the tiny model, through the
library entry `run_battery`; H3 and the null case are in tests/test_verdict.py.
"""

from __future__ import annotations

import pytest
from planted import TEST_OPTIONS, write_planted

from mechcheck.battery.runner import run_battery

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("planted")


def battery(root, case: str, seed: int) -> dict:
    return run_battery([write_planted(root, case, seed)], options=TEST_OPTIONS)


def assert_only(verdicts: dict, planted: str) -> None:
    assert verdicts[planted]["verdict"] == "supported", verdicts[planted]
    wrong = {h: v["verdict"] for h, v in verdicts.items() if h != planted and v["verdict"] == "supported"}
    assert not wrong, wrong


def metric(results: dict, probe: str, key: str) -> float:
    return results["probes"][probe]["metrics"][key]["value"]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", SEEDS)
def test_planted_h1_separate_model(root, seed):
    results = battery(root, "H1", seed)
    assert_only(results["verdicts"], "H1")
    assert results["verdicts"]["H2_in"]["verdict"] == "not_supported"
    assert results["verdicts"]["H2_out"]["verdict"] == "not_supported"
    assert metric(results, "baselines", "report.skill") > 0.99
    assert metric(results, "ablation", "mean.mean_abs_delta") < 0.02
    assert metric(results, "direction_ablation", "in_pinned") < 0.02
    assert abs(metric(results, "direction_injection", "slope")) < 0.02
    assert abs(metric(results, "geometry", "cos_readout_W_out")) < 1e-4  # e2 ⟂ e3 by construction


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", SEEDS)
def test_planted_h2_in_reads_w_in(root, seed):
    results = battery(root, "H2_in", seed)
    assert_only(results["verdicts"], "H2_in")
    assert results["verdicts"]["H1"]["verdict"] == "not_supported"
    assert metric(results, "direction_ablation", "in_pinned") > 0.5
    assert metric(results, "ablation", "resample.mean_abs_delta") < 0.02
    assert metric(results, "direction_ablation", "out") < 0.02
    # the readout pulled back through the final norm is the folded W_in direction itself
    assert metric(results, "geometry", "cos_readout_W_in.gate") == pytest.approx(1.0, abs=1e-4)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", SEEDS)
def test_planted_h2_out_reads_w_out(root, seed):
    results = battery(root, "H2_out", seed)
    assert_only(results["verdicts"], "H2_out")
    assert results["verdicts"]["H1"]["verdict"] == "not_supported"
    assert results["verdicts"]["H2_in"]["verdict"] == "not_supported"
    for mode in ("zero", "mean", "resample"):
        assert metric(results, "ablation", f"{mode}.mean_abs_delta") > 0.5
    assert metric(results, "direction_ablation", "out") > 0.5
    assert metric(results, "direction_ablation", "in_pinned") < 0.02
    # the report is calibrated in neuron units and reads the neuron's output: slope ≈ 1
    assert metric(results, "direction_injection", "slope") == pytest.approx(1.0, abs=0.05)
    assert metric(results, "patching", "slope") == pytest.approx(1.0, abs=0.05)
    assert metric(results, "direction_injection", "gain_ratio") == pytest.approx(1.0, abs=0.05)
    assert metric(results, "geometry", "cos_readout_W_out") == pytest.approx(1.0, abs=1e-4)
    assert metric(results, "variance", "std_ratio") == pytest.approx(1.0)
