"""The battery on the real offline model (SmolLM2-135M): `pytest -m slow`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechcheck.battery.base import BatteryOptions
from mechcheck.battery.runner import run_battery
from mechcheck.checkpoint import neuron_weights, write_checkpoint
from mechcheck.corpus import load_corpus, split_corpus
from mechcheck.readout import LinearReadout, Neuron
from mechcheck.subject import Site, gather_position, load_subject, weights_digest

pytestmark = pytest.mark.slow
NEURON = Neuron(8, 1188)  # robust spread on the default corpus (DESIGN.md)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Frozen SmolLM2 + a least-squares readout on the final norm, fitted on 120 train texts."""
    subject = load_subject("smollm2-135m")
    splits = split_corpus(load_corpus("default", max_texts=1500, seed=0), seed=0)
    enc = subject.encode(list(splits.train[:120]), max_length=64)
    got = subject.run(enc, reads=[Site("mlp_post", NEURON.layer), Site("final_norm")])
    x = gather_position(got[Site("final_norm")], enc["attention_mask"], "last").double()
    y = gather_position(got[Site("mlp_post", NEURON.layer)], enc["attention_mask"], "last")[:, NEURON.index]
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    ridge = torch.linalg.solve(design.T @ design + 10.0 * torch.eye(design.shape[1]), design.T @ y.double())
    readout = LinearReadout(subject.d_model)
    with torch.no_grad():
        readout.weight.copy_(ridge[:-1].float()[None])
        readout.bias.fill_(float(ridge[-1]))
    run = {
        "base_model": "smollm2-135m",
        "neuron": NEURON.as_dict(),
        "position": "last",
        "condition": "frozen",
        "target_mode": "fixed",
        "seed": 0,
        "weights_sha256": weights_digest(neuron_weights(subject, NEURON)),
    }
    texts = list(splits.test[:40])
    return write_checkpoint(
        tmp_path_factory.mktemp("smollm2") / "ck", run, readout, predictions={"texts": texts}
    )


def test_battery_on_smollm2(checkpoint, tmp_path):
    """The whole v2 battery runs on the real model. 40 texts and 20 null draws are too few for the
    verdicts (MIN_NULL): the primary tests fail their null-size check, so H2 is inconclusive."""
    from mechcheck import verdict
    from mechcheck.report import render_report

    options = BatteryOptions(n_null=20, n_null_secondary=3, n_bootstrap=300, max_tokens=64)
    assert options.n_null < verdict.MIN_NULL
    results = run_battery([checkpoint], options=options, out=tmp_path / "out")
    assert results["eval"]["n_texts"] == 40
    allowed = {"supported", "not_supported", "inconclusive"}
    assert {v["verdict"] for v in results["verdicts"].values()} <= allowed
    assert {v["verdict"] for twin in results["twins"].values() for v in twin.values()} <= allowed
    assert results["verdicts"]["H3"]["verdict"] == "not_supported"  # frozen: the neuron is unchanged
    assert results["verdicts"]["H2_in"]["verdict"] == "inconclusive"
    assert results["verdicts"]["H2_out"]["verdict"] == "inconclusive"
    for name in ("neuron", "in_bypass", "in_total", "out_direct"):
        entry = results["probes"][name]["heads"]["report"]
        assert entry["null"]["n"] == 20 and 0 < entry["null"]["p"] <= 1
        assert entry["dr2"]["ci"][0] <= entry["dr2"]["value"] <= entry["dr2"]["ci"][1]
    r2 = results["probes"]["informative"]["metrics"]["report.r2"]["value"]
    assert np.isfinite(r2) and 0 <= r2 <= 1
    [info] = results["probes"]["remainder"]["info"]
    assert info["sinks"] >= 40  # SmolLM2's position 0 is a sink in every text
    assert render_report(tmp_path / "out").is_file()
