"""cross_talk on planted two-neuron models: the k×k matrix of the information report i loses about
label i when neuron j is interchanged at the label position. Each report reads its own neuron's
W_out: the diagonal is large, the off-diagonal ≈ 0. Report 0 also reading neuron 1 (unrelated to
label 0) moves report 0 when neuron 1 is interchanged, yet removes none of label 0's information:
motion, not information. And the full battery and report of such a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from planted import TEST_OPTIONS, _basis, planted_base

from mechcheck import verdict
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


@pytest.fixture(scope="module")
def separate(checkpoints, one_thread):
    return run_battery([checkpoints[False]], probes=["cross_talk"], options=TEST_OPTIONS)


def test_each_report_reads_only_its_own_neuron(separate):
    m = separate["cross_talk"]
    assert m["keys"] == ["L1N5", "L2N4"] and m["neurons"] == [n.as_dict() for n in NEURONS]
    (a, b), (c, d) = m["value"]
    assert a > 0.9 and d > 0.9, m["value"]  # the diagonal: each report's information is its neuron's
    assert abs(b) < 0.02 and abs(c) < 0.02, m["value"]  # no cross-talk
    floor = 1 / (TEST_OPTIONS.n_null_secondary + 1)
    assert m["p"][0][0] == pytest.approx(floor) and m["p"][1][1] == pytest.approx(floor)
    assert m["p"][0][1] > 0.05 and m["p"][1][0] > 0.05
    assert m["ci"][0][0][0] > 0.5 and m["ci"][1][1][0] > 0.5
    assert [p["neuron"] for p in separate["per_neuron"]] == [n.as_dict() for n in NEURONS]
    assert "probes" not in separate and "cross_talk" in separate["per_neuron"][1]["probes"]


@pytest.mark.usefixtures("one_thread")
def test_reading_another_neuron_moves_the_report_but_removes_no_label_information(checkpoints):
    results = run_battery([checkpoints[True]], probes=["cross_talk"], options=TEST_OPTIONS)
    m = results["cross_talk"]
    (a, b), (c, d) = m["value"]
    assert a > 0.5 and d > 0.9, m["value"]
    assert abs(b) < 0.05 and abs(c) < 0.02, m["value"]
    report0 = results["per_neuron"][0]["probes"]["cross_talk"]["heads"]["report"]
    other = report0["comparisons"]["interchange_L2N4"]
    assert other["motion"]["value"] > 0.1  # report 0 moves with neuron 1 …
    assert abs(other["dr2"]["value"]) < 0.05  # … which says nothing about label 0
    report1 = results["per_neuron"][1]["probes"]["cross_talk"]["heads"]["report"]
    assert report1["comparisons"]["interchange_L1N5"]["motion"]["value"] < 0.02


@pytest.mark.usefixtures("one_thread")
def test_full_battery_and_report_of_a_two_neuron_checkpoint(checkpoints, tmp_path):
    from mechcheck.report import render_report

    out = tmp_path / "battery"
    results = run_battery([checkpoints[False]], options=TEST_OPTIONS, out=out)
    first, last = results["per_neuron"]
    assert first["verdicts"]["H2_out"]["verdict"] == "supported", first["verdicts"]["H2_out"]
    # neuron 1 sits in the last layer: matched comparison neurons come from layer L on only, and a
    # 3-layer toy has too few of them — no power, so inconclusive (never "not supported")
    assert last["probes"]["neuron"]["heads"]["report"]["null"]["n"] < verdict.MIN_NULL
    assert last["verdicts"]["H2_out"]["verdict"] == "inconclusive"
    assert last["verdicts"]["H2_out"]["evidence"]["why"] == "too few null draws"
    for i, entry in enumerate(results["per_neuron"]):
        assert set(entry["verdicts"]) == {"H1", "H2_in", "H2_out", "H3"}
        assert {"neuron", "cross_talk", "in_bypass", "remainder"} <= set(entry["probes"])
        # the diagonal is the neuron test of that view: the same interchange on the same texts
        own = entry["probes"]["neuron"]["heads"]["report"]["dr2"]["value"]
        assert results["cross_talk"]["value"][i][i] == pytest.approx(own, abs=1e-9)
    assert sorted(p.name for p in (out / "battery").iterdir()) == ["seed-0-L1N5.json", "seed-0-L2N4.json"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["cross_talk"]["keys"] == ["L1N5", "L2N4"]
    text = render_report(out).read_text()
    assert "Cross-talk" in text and "L1N5" in text and "L2N4" in text
