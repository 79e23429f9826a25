"""cross_talk on planted two-neuron models: each report reads its own neuron's W_out (diagonal only),
or report 0 also reads neuron 1's W_out (an off-diagonal effect); and the report of such a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from planted import TEST_OPTIONS, _basis, planted_base

from mechcheck.battery.runner import run_battery
from mechcheck.checkpoint import base_weights_sha256, write_checkpoint
from mechcheck.readout import LinearReadout, Neuron, neuron_matrix
from mechcheck.subject import Site, Subject, gather_position
from mechcheck.testing import random_texts

NEURONS = (Neuron(1, 5), Neuron(2, 4))  # (1, 5) reads e1 and writes e3 (planted.py); (2, 4) below
OUT_DIRECTION = {0: 3, 1: 5}  # the basis vector each neuron's W_out points along


def two_neuron_base(seed: int):
    """planted.py's base plus neuron 4 of the last layer: reads e4 (h_t), writes 1.0·e5; the only
    writer of layer 2, so nothing else moves with it."""
    model, tok = planted_base(seed)
    q, layer = _basis(seed), model.model.layers[2]
    with torch.no_grad():
        gain = layer.post_attention_layernorm.weight
        layer.mlp.gate_proj.weight[4] = 6.0 * q[:, 4] / gain
        layer.mlp.up_proj.weight[4] = 2.0 * q[:, 4] / gain
        layer.mlp.down_proj.weight[:, 4] = q[:, 5]
    return model, tok


def calibrated_rows(subject: Subject, seed: int, texts: list[str]) -> torch.Tensor:
    """Per neuron: weight ∝ its W_out direction ⊘ final gain, scaled by least squares onto its label.
    Returns `[2, d_model + 1]` (weight, bias)."""
    q, gain = _basis(seed), subject.anatomy.final_norm().weight.detach()
    enc = subject.encode(texts)
    normed = gather_position(subject.run(enc, reads=[Site("final_norm")])[Site("final_norm")],
                             enc["attention_mask"], "last")  # fmt: skip
    labels = neuron_matrix(subject, enc, NEURONS, "last")
    rows = []
    for i in range(2):
        w = q[:, OUT_DIRECTION[i]] / gain
        design = torch.stack([normed @ w, torch.ones(len(texts))], 1).double()
        alpha, beta = torch.linalg.lstsq(design, labels[:, i].double()[:, None]).solution[:, 0].float()
        rows.append(torch.cat([alpha * w, beta[None]]))
    return torch.stack(rows)


def write_two_neuron(root: Path, crossed: bool, seed: int = 0) -> Path:
    model, tok = two_neuron_base(seed)
    base_dir = root / "base"
    if not base_dir.exists():
        model.save_pretrained(base_dir)
        tok.save_pretrained(base_dir)
    subject = Subject(model, tok, str(base_dir))
    rows = calibrated_rows(subject, seed, random_texts(200, seed=seed))
    if crossed:  # report 0 = its own neuron + neuron 1 (both in neuron units)
        rows[0] = rows[0] + rows[1]
    readout = LinearReadout(model.config.hidden_size, 2)
    with torch.no_grad():
        readout.weight.copy_(rows[:, :-1])
        readout.bias.copy_(rows[:, -1])
    run = {
        "base_model": str(base_dir), "neurons": [n.as_dict() for n in NEURONS], "position": "last",
        "condition": "frozen", "target_mode": "fixed", "seed": seed,
        "weights_sha256": base_weights_sha256(subject, NEURONS),
    }  # fmt: skip
    texts = random_texts(64, seed=10_000 + seed)
    name = "crossed" if crossed else "separate"
    return write_checkpoint(root / name, run, readout, predictions={"texts": texts})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross_talk")
    return {crossed: write_two_neuron(root, crossed) for crossed in (False, True)}


@pytest.mark.usefixtures("one_thread")
def test_each_report_reads_only_its_own_neuron(checkpoints):
    results = run_battery([checkpoints[False]], probes=["cross_talk"], options=TEST_OPTIONS)
    m = results["cross_talk"]
    assert m["keys"] == ["L1N5", "L2N4"]
    (a, b), (c, d) = m["value"]
    assert a > 0.5 and d > 0.5, m["value"]  # the diagonal: each report moves with its own neuron
    assert b < 0.02 and c < 0.02, m["value"]  # no cross-talk
    assert m["present"] == [[True, False], [False, True]]
    assert m["ci"][0][0][0] > m["null_upper"][0][0] and m["ci"][1][1][0] > m["null_upper"][1][1]
    assert [p["neuron"] for p in results["per_neuron"]] == [n.as_dict() for n in NEURONS]
    assert "probes" not in results and "cross_talk" in results["per_neuron"][1]["probes"]


@pytest.mark.usefixtures("one_thread")
def test_a_report_that_reads_another_neuron_shows_cross_talk(checkpoints):
    results = run_battery([checkpoints[True]], probes=["cross_talk"], options=TEST_OPTIONS)
    m = results["cross_talk"]
    (a, b), (c, d) = m["value"]
    assert b > 0.1 and m["present"][0][1], m  # ablating neuron 1 moves report 0
    assert c < 0.02 and not m["present"][1][0]  # report 1 still ignores neuron 0
    assert a > 0.3 and d > 0.5


@pytest.mark.usefixtures("one_thread")
def test_full_battery_and_report_of_a_two_neuron_checkpoint(checkpoints, tmp_path, capsys):
    out = tmp_path / "battery"
    results = run_battery([checkpoints[True]], options=TEST_OPTIONS, out=out)
    for entry in results["per_neuron"]:
        assert set(entry["verdicts"]) == {"H1", "H2_in", "H2_out", "H3"}
        assert {"ablation", "cross_talk", "direction_ablation"} <= set(entry["probes"])
    # the diagonal equals the ablation probe's mean ablation of the same neuron (same edit, same texts)
    for i, entry in enumerate(results["per_neuron"]):
        own = entry["probes"]["ablation"]["metrics"]["mean.mean_abs_delta"]["value"]
        assert results["cross_talk"]["value"][i][i] == pytest.approx(own, rel=1e-4)
    text = (out / "report.md").read_text()
    assert (
        "## Battery: frozen (fixed), neuron L1N5" in text
        and "## Battery: frozen (fixed), neuron L2N4" in text
    )
    assert "## Cross-talk: frozen (fixed)" in text and (out / "figures/frozen-fixed-cross-talk.png").is_file()
    assert "layer 1, index 5; layer 2, index 4" in text
    saved = json.loads((out / "results.json").read_text())
    assert saved["cross_talk"]["present"][0][1] is True
