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
    options = BatteryOptions(n_random=6, n_null_texts=16, n_bootstrap=300, max_tokens=64)
    probes = ["baselines", "ablation", "patching", "direction_injection", "variance"]
    results = run_battery([checkpoint], probes=probes, options=options, out=tmp_path / "out")
    assert results["eval"]["n_texts"] == 40
    assert {v["verdict"] for v in results["verdicts"].values()} <= {
        "supported",
        "not_supported",
        "inconclusive",
    }
    assert results["verdicts"]["H3"]["verdict"] == "not_supported"  # frozen: the neuron is unchanged
    for probe in results["probes"].values():
        for entry in probe["metrics"].values():
            assert entry["ci"][0] <= entry["ci"][1]
    assert len(results["probes"]["ablation"]["controls"]["mean.random_neurons"]["null"]) == 6
    skill = results["probes"]["baselines"]["metrics"]["report.skill"]["value"]
    assert np.isfinite(skill)
    assert (tmp_path / "out" / "report.md").is_file()
