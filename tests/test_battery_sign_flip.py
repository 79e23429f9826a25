"""The README's worked example of a new probe: `sign_flip`, on planted mechanisms.

H2-out (the readout reads the neuron's W_out contribution): flipping the neuron moves the report
far beyond flipping random neurons. H1 (the readout reads a copy of the neuron elsewhere): the
flip leaves the report where it was. And the probe reaches results.json and report.md with
nothing else touched.
"""

from __future__ import annotations

import pytest
from planted import TEST_OPTIONS, write_planted

from mechcheck.battery.runner import run_battery


@pytest.mark.usefixtures("one_thread")
def test_sign_flip_finds_the_neurons_write_and_nothing_in_a_separate_model(tmp_path):
    h2_out = run_battery([write_planted(tmp_path, "H2_out", 0)], probes=["sign_flip"], options=TEST_OPTIONS)
    result = h2_out["probes"]["sign_flip"]
    effect = result["metrics"]["mean_abs_delta"]
    null = result["controls"]["mean_abs_delta.random_neurons"]
    assert effect["value"] > 0.5  # the report moves by more than half a label SD
    assert effect["ci"][0] > null["upper"]  # and clears every random neuron's flip
    assert len(null["null"]) == TEST_OPTIONS.n_random

    h1 = run_battery([write_planted(tmp_path, "H1", 0)], probes=["sign_flip"], options=TEST_OPTIONS)
    assert h1["probes"]["sign_flip"]["metrics"]["mean_abs_delta"]["value"] < 0.02


@pytest.mark.usefixtures("one_thread")
def test_sign_flip_shows_up_in_results_and_report(tmp_path):
    out = tmp_path / "out"
    run_battery([write_planted(tmp_path, "H2_out", 1)], probes=["sign_flip"], options=TEST_OPTIONS, out=out)
    assert "sign_flip" in (out / "results.json").read_text()
    assert "sign_flip" in (out / "report.md").read_text()
