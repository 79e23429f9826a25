"""The runner: several seeds of one run are aggregated; probes are discovered; results are strict JSON."""

from __future__ import annotations

import json
import shutil

import pytest
from planted import TEST_OPTIONS, write_planted

from mechcheck.battery.base import PROBES, Probe, ProbeResult
from mechcheck.battery.runner import load_probes, run_battery, select_probes
from mechcheck.errors import UserError
from mechcheck.testing import random_texts


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


@pytest.mark.usefixtures("one_thread")
def test_seeds_are_aggregated_conservatively(two_seeds, tmp_path):
    out = tmp_path / "out"
    probes = ["baselines", "ablation", "direction_ablation", "direction_injection", "variance"]
    results = run_battery(list(two_seeds), probes=probes, options=TEST_OPTIONS, out=out)
    assert [r["seed"] for r in results["runs"]] == [0, 1]
    ablation = results["probes"]["ablation"]
    assert len(ablation["per_seed"]) == 2
    agg = ablation["metrics"]["mean.mean_abs_delta"]
    per_seed = [s["metrics"]["mean.mean_abs_delta"] for s in ablation["per_seed"]]
    assert agg["seeds"] == [p["value"] for p in per_seed]
    assert agg["value"] == pytest.approx(sum(agg["seeds"]) / 2)
    assert agg["ci"] == [min(p["ci"][0] for p in per_seed), max(p["ci"][1] for p in per_seed)]
    pooled = ablation["controls"]["mean.random_neurons"]["null"]
    assert len(pooled) == 2 * len(ablation["per_seed"][0]["controls"]["mean.random_neurons"]["null"])
    assert all("q" in c for p in results["probes"].values() for c in p["controls"].values() if "p" in c)
    assert results["verdicts"]["H2_out"]["verdict"] == "supported"
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["seed-0.json", "seed-1.json"]
    text = (out / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_probes_are_discovered_and_selected_in_run_order():
    names = load_probes()
    assert names[0] == "baselines" and names.index("patching") < names.index("direction_injection")
    assert select_probes(["variance", "ablation"]) == ["ablation", "variance"]
    with pytest.raises(UserError, match="unknown probe 'nope'"):
        select_probes(["nope"])


def test_a_probe_name_registered_twice_is_refused():
    class Twice(Probe):
        hypotheses = ("H1",)

        def run(self, ctx) -> ProbeResult:
            return ProbeResult()

    with pytest.raises(ValueError, match="registered twice"):
        PROBES.register("ablation")(Twice)


def test_a_result_without_a_ci_is_refused():
    with pytest.raises(ValueError, match="lacks a value"):
        ProbeResult(metrics={"x": {"value": 1.0}}).check("x")
