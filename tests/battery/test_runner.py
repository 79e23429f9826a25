"""The runner: seeds of one run are pooled, probes are discovered and selected, results are strict
JSON beside the per-seed data behind them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from planted import TEST_OPTIONS, write_planted
from results_compare import close, numeric_pairs

from mechcheck.battery.base import PROBES, Probe, ProbeResult, register
from mechcheck.battery.runner import FORMAT, load_probes, run_battery, select_probes
from mechcheck.errors import UserError
from mechcheck.stats import r2
from mechcheck.testing import random_texts

PROBES_RUN = ["informative", "neuron", "in_bypass", "out_direct", "collapse"]
PRIMARY = ("neuron", "in_bypass", "out_direct")


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """Two checkpoints of one run (same base, neuron and condition), differing in seed and texts."""
    root = tmp_path_factory.mktemp("seeds")
    first = write_planted(root, "H2_out", 0, n_eval=32)
    second = root / "H2_out-0-seed1"
    shutil.copytree(first, second)
    run = json.loads((second / "run.json").read_text()) | {"seed": 1}
    (second / "run.json").write_text(json.dumps(run))
    (second / "predictions.json").write_text(json.dumps({"texts": random_texts(32, seed=99)}))
    return first, second


@pytest.fixture(scope="module")
def pooled(two_seeds, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("pooled") / "out"
    return run_battery(list(two_seeds), probes=PROBES_RUN, options=TEST_OPTIONS, out=out), out


def test_two_seeds_are_pooled_and_keep_their_own_values(pooled):
    results, out = pooled
    assert [r["seed"] for r in results["runs"]] == [0, 1] and results["eval"]["seeds"] == [0, 1]
    data = [json.loads((out / "battery" / f"seed-{k}.json").read_text()) for k in (0, 1)]
    assert [d["seed"] for d in data] == [0, 1] and data[0]["texts"] != data[1]["texts"]
    entry = results["probes"]["neuron"]["heads"]["report"]
    # each seed's Δr², recomputed from its data file, and the pooled value their mean
    per_seed = []
    for d in data:
        label, clean = np.array(d["heads"]["report"]["label"]), np.array(d["heads"]["report"]["clean"])
        edited = np.array(d["tests"]["neuron"]["edited"]["effect"]["report"])
        per_seed.append(float(r2(label, clean) - r2(label, edited)))
    assert entry["dr2"]["seeds"] == pytest.approx(per_seed, abs=1e-9)
    assert entry["dr2"]["value"] == pytest.approx(np.mean(per_seed), abs=1e-9)
    assert entry["dr2"]["ci"][0] <= entry["dr2"]["value"] <= entry["dr2"]["ci"][1]
    assert len(entry["share"]["seeds"]) == 2 and len(entry["r2"]["seeds"]) == 2
    # the pooled null: draw k is the mean of both seeds' draw k, and each seed keeps its own p
    nulls = [np.array(d["tests"]["neuron"]["null"]["report"]) for d in data]
    assert entry["null"]["n"] == TEST_OPTIONS.n_null
    assert entry["null"]["null"] == pytest.approx(((nulls[0] + nulls[1]) / 2).tolist(), abs=1e-12)
    assert len(entry["null"]["p_seeds"]) == 2
    assert results["verdicts"]["H2_out"]["verdict"] == "supported"


def test_primary_tests_get_bh_q_values_on_every_head(pooled):
    results, _ = pooled
    heads = results["probes"]["neuron"]["heads"]
    for test in PRIMARY:
        assert results["probes"][test]["primary"] is True
        for h in heads:
            null = results["probes"][test]["heads"][h]["null"]
            assert null["p"] <= null["q"] <= 1.0, (test, h)
    for name in ("informative", "collapse"):
        assert (
            results["probes"][name]["kind"] == "descriptive" and results["probes"][name]["primary"] is False
        )
    # the report's q-values are BH over the three primary tests' p-values
    from mechcheck.stats import bh

    ps = [results["probes"][t]["heads"]["report"]["null"]["p"] for t in PRIMARY]
    qs = [results["probes"][t]["heads"]["report"]["null"]["q"] for t in PRIMARY]
    assert qs == pytest.approx(bh(ps))


def test_results_are_strict_json_beside_the_per_seed_data(pooled):
    results, out = pooled
    text = (out / "results.json").read_text()
    saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert saved["format"] == FORMAT == "mechcheck-results/2"
    assert set(saved["probes"]) == set(PROBES_RUN)
    assert set(saved["verdicts"]) == {"H1", "H2_in", "H2_out", "H3"}
    assert set(saved["twins"]) == {"H1", "H2_in", "H2_out", "null"}
    assert {"neuron", "W_in bypass", "neuron, direct write"} <= set(saved["shares"])
    assert saved["verdicts"]["H1"]["verdict"] == "inconclusive"  # `remainder` was not selected
    assert sorted(p.name for p in (out / "battery").iterdir()) == ["seed-0.json", "seed-1.json"]
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["seed-0.json", "seed-1.json"]
    data = json.loads((out / "battery" / "seed-0.json").read_text(), parse_constant=pytest.fail)
    assert set(data["tests"]) == {"neuron", "in_bypass", "out_direct"}  # the information tests
    assert len(data["groups"]) == len(data["texts"]) == 32
    assert set(data["heads"]) == set(saved["heads"])
    assert not (out / "report.md").exists()  # the battery writes results; `report/` renders them


def test_probes_are_discovered_and_selected_in_run_order():
    names = load_probes()
    assert names[0] == "informative"
    assert names[:4] == ["informative", "neuron", "in_bypass", "in_total"]
    assert names.index("remainder") > names.index("out_direct") and names[-1] == "cross_talk"
    assert select_probes(["collapse", "neuron"]) == ["neuron", "collapse"]
    assert select_probes(None) == names
    with pytest.raises(UserError, match="unknown probe 'nope'"):
        select_probes(["nope"])


def test_a_probe_name_registered_twice_is_refused():
    class Twice(Probe):
        hypotheses = ("H1",)

    with pytest.raises(ValueError, match="registered twice"):
        register("neuron")(Twice)
    with pytest.raises(ValueError, match="unknown hypotheses"):
        register("confused")(type("Confused", (Probe,), {"hypotheses": ("H9",)}))
    assert "confused" not in PROBES


def test_a_malformed_result_is_refused():
    with pytest.raises(ValueError, match="lacks a value"):
        ProbeResult(metrics={"x": {"value": 1.0}}).check("x")
    with pytest.raises(ValueError, match="lacks a value"):
        ProbeResult(controls={"x": {"ci": [0.0, 1.0]}}).check("x")
    with pytest.raises(ValueError, match="effect edit"):
        ProbeResult(test={"edited": {"other": {}}, "null": {}}).check("x")
    with pytest.raises(ValueError, match="figure"):
        ProbeResult(figures={"f": {"kind": "pie"}}).check("x")
    assert ProbeResult(metrics={"x": {"value": 1.0, "ci": [0.0, 2.0]}}).check("x")


@pytest.mark.usefixtures("one_thread")
def test_the_runner_refuses_a_probe_that_returns_a_malformed_result(two_seeds, monkeypatch):
    class Broken(Probe):
        name = "broken"
        hypotheses = ("H1",)

        def run(self, ctx) -> ProbeResult:
            return ProbeResult(metrics={"x": {"value": 1.0}})

    monkeypatch.setitem(PROBES._items, "broken", Broken)
    with pytest.raises(ValueError, match="probe 'broken': metric 'x' lacks a value"):
        run_battery([two_seeds[0]], probes=["broken"], options=TEST_OPTIONS)


def test_each_seed_decided_alone_equals_its_own_battery(pooled, two_seeds, tmp_path):
    """seed_verdicts re-pools each seed's saved data: its information tests are exactly those of a
    battery run on that checkpoint alone, and its verdicts are counted against the pooled ones."""
    from mechcheck.battery.seed_verdicts import seed_probes, seed_verdicts

    results, out = pooled
    got = seed_verdicts(results, out)
    assert got["seeds"] == [0, 1] and all(len(v) == 2 for v in got["verdicts"].values())
    assert set(got["twins"]) >= {"H2_out", "null"} and got["agreement"]["H2_out"].endswith("/2")
    for k, checkpoint in enumerate(two_seeds):
        alone = run_battery([checkpoint], probes=PROBES_RUN, options=TEST_OPTIONS, out=tmp_path / str(k))
        data = json.loads((out / "battery" / f"seed-{k}.json").read_text())
        mine = seed_probes(results["probes"], data, k, results["config"])
        for test in PRIMARY:
            a, b = json.loads(json.dumps(mine[test]["heads"])), alone["probes"][test]["heads"]
            for where, x, y in numeric_pairs(a, b, test):
                assert close(x, y, 1e-9, 1e-12), (k, where, x, y)
        for h in ("H1", "H2_in", "H2_out"):  # the same rules on the same numbers
            assert got["verdicts"][h][k] == alone["verdicts"][h]["verdict"], (k, h)
    n_same = sum(v == results["verdicts"]["H2_out"]["verdict"] for v in got["verdicts"]["H2_out"])
    assert got["agreement"]["H2_out"] == f"{n_same}/2"
