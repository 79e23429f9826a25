"""The battery on planted mechanisms: it must find the planted hypothesis, never a wrong one, and
say how much of the report's information each route carries.

Cases H1, H2_in and H2_out (see tests/planted.py) over three seeds of the tiny model, through the
library entry `run_battery`; H3 and the null case are in tests/test_verdict.py, the attention
sink in tests/battery/test_sink.py.
"""

from __future__ import annotations

import pytest
from planted import D_MLP, NEURON, TEST_OPTIONS, write_planted

from mechcheck.battery.runner import run_battery

SEEDS = (0, 1, 2)
FLOOR = 1 / (TEST_OPTIONS.n_null + 1)  # the smallest rank p a test with n_null draws can give
TWINS = {"H1": "H1", "H2_in": "H2_in", "H2_out": "H2_out", "null": None}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    """Each (case, seed) battery runs once for the module."""
    root, done = tmp_path_factory.mktemp("planted"), {}

    def get(case: str, seed: int) -> dict:
        if (case, seed) not in done:
            done[case, seed] = run_battery([write_planted(root, case, seed)], options=TEST_OPTIONS)
        return done[case, seed]

    return get


def verdicts(results: dict) -> dict[str, str]:
    return {h: v["verdict"] for h, v in results["verdicts"].items()}


def share(results: dict, key: str) -> float:
    return results["shares"][key]["value"]


def readout_head(results: dict, probe: str) -> dict:
    """A probe's entry for the checkpoint's readout (results.json's `report` head)."""
    return results["probes"][probe]["heads"]["report"]


def assert_only(results: dict, planted: str) -> None:
    got = verdicts(results)
    assert got[planted] == "supported", results["verdicts"][planted]
    assert got == {h: "supported" if h == planted else "not_supported" for h in got}, got
    assert results["verdicts"][planted]["fragile"] == []


def assert_decided_at_the_floor(results: dict, probe: str) -> None:
    """The deciding test beats every one of its matched null draws, and is specific."""
    entry = readout_head(results, probe)
    assert entry["null"]["n"] == TEST_OPTIONS.n_null
    assert entry["null"]["p"] == pytest.approx(FLOOR)
    assert entry["null"]["q"] <= 3 * FLOOR  # BH over the battery's primary tests
    assert entry["dr2"]["ci"][0] > entry["null"]["max"]
    assert all(s["ci"][0] > 0 for s in entry["specificity"].values()), entry["specificity"]


def assert_twins_right(results: dict) -> None:
    """Every planted twin gets its own verdict right on this model (and the null twin nothing)."""
    twins = results["twins"]
    assert set(twins) == set(TWINS)
    for twin, planted in TWINS.items():
        got = {h: v["verdict"] for h, v in twins[twin].items()}
        if planted is None:
            assert "supported" not in got.values(), (twin, got)
        else:
            assert got == {h: "supported" if h == planted else "not_supported" for h in got}, (twin, got)


@pytest.mark.parametrize("seed", SEEDS)
def test_planted_h1_separate_model(battery, seed):
    results = battery("H1", seed)
    assert_only(results, "H1")
    assert share(results, "neither (survives)") > 0.9
    assert results["shares"]["neither (survives)"]["ci"][0] > 0.5  # the H1 rule's bar
    for key in ("neuron", "W_in bypass", "W_in total", "neuron, direct write", "sinks"):
        assert abs(share(results, key)) < 0.02, (key, results["shares"][key])
    # the report reads e2 (the neuron's copy) and nothing the edits touch: no null draw is beaten
    for probe in ("neuron", "in_bypass", "in_total", "out_direct"):
        assert readout_head(results, probe)["null"]["p"] > 0.05, probe
    assert readout_head(results, "neuron")["r2"]["value"] > 0.95
    assert_twins_right(results)


@pytest.mark.parametrize("seed", SEEDS)
def test_planted_h2_in_reads_w_in(battery, seed):
    results = battery("H2_in", seed)
    assert_only(results, "H2_in")
    assert share(results, "W_in bypass") > 0.9
    assert share(results, "W_in total") > 0.9
    assert abs(share(results, "neuron")) < 0.02
    assert abs(share(results, "neuron, direct write")) < 0.02
    assert share(results, "neither (survives)") < 0.3
    assert_decided_at_the_floor(results, "in_bypass")
    # the most label-informative direction outside the W_in span carries nothing of the report
    label_subspace = readout_head(results, "in_bypass")["comparisons"]["label_subspace"]
    assert label_subspace["share"]["value"] < 0.1
    assert_twins_right(results)


@pytest.mark.parametrize("seed", SEEDS)
def test_planted_h2_out_reads_w_out(battery, seed):
    results = battery("H2_out", seed)
    assert_only(results, "H2_out")
    assert share(results, "neuron") > 0.9
    assert share(results, "W_in total") > 0.9  # the neuron follows its changed input
    assert abs(share(results, "W_in bypass")) < 0.02
    # the readout reads W_out directly: the direct write carries all of the neuron's share
    assert share(results, "neuron, direct write") == pytest.approx(share(results, "neuron"), abs=0.02)
    assert share(results, "neither (survives)") < 0.3
    assert_decided_at_the_floor(results, "neuron")
    assert_decided_at_the_floor(results, "out_direct")
    assert_twins_right(results)


def test_position_mean_edits_every_non_sink_position(tmp_path):
    """A label made of every token: the primary interchanges act at every non-sink position
    (position-aligned donors), so the neuron's comparison units must come from its own layer."""
    import json

    ck = write_planted(tmp_path, "H2_out", 0)
    run = json.loads((ck / "run.json").read_text()) | {"position": "mean"}
    (ck / "run.json").write_text(json.dumps(run))
    results = run_battery([ck], probes=["informative", "neuron", "in_bypass"], options=TEST_OPTIONS)
    for probe in ("neuron", "in_bypass"):
        assert results["probes"][probe]["where"] == "non_sink"
    [info] = results["probes"]["neuron"]["info"]
    assert info["layers"] == [NEURON.layer] and info["n"] == D_MLP - 1  # all its layer has: too few
    assert share(results, "neuron") > 0.8 and abs(share(results, "W_in bypass")) < 0.02
    assert results["verdicts"]["H2_out"]["verdict"] == "inconclusive"  # below MIN_NULL: no power
    assert results["verdicts"]["H2_out"]["evidence"]["why"] == "too few null draws"
