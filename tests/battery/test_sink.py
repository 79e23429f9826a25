"""The attention-sink trap: an H1 readout on a model with a sink must not become H2-in.

In the planted H1_sink model (tests/planted.py) every text starts with a sink token whose residual
is large along the neuron's W_in direction, and a layer-2 head copies the sink's W_in coordinate
into a direction the readout reads. The first battery edited the W_in span at every position,
sink included, set to the all-token mean: in this model that moves every report a long way and
removes almost no information about the label. The battery must leave the sink out of its
all-position edits and still find H1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted import SINK_CASE, TEST_OPTIONS, write_planted

from mechcheck.battery.context import build_context
from mechcheck.battery.engine import SetCoords
from mechcheck.battery.interchange import pin
from mechcheck.battery.runner import run_battery
from mechcheck.battery.scoring import engine, heads
from mechcheck.battery.spans import in_basis
from mechcheck.checkpoint import read_checkpoint
from mechcheck.stats import r2

SEEDS = (0, 1, 2)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("sink")


@pytest.fixture(scope="module")
def context(root):
    ck = read_checkpoint(write_planted(root, SINK_CASE, 0))
    base = ck.load_base()
    texts = ck.predictions()["texts"]
    return build_context(base, base, ck.readout, ck.neuron, ck.position, texts, None, TEST_OPTIONS)


@pytest.mark.parametrize("seed", SEEDS)
def test_an_h1_readout_beside_a_sink_is_h1_not_h2_in(root, seed):
    results = run_battery([write_planted(root, SINK_CASE, seed)], options=TEST_OPTIONS)
    got = {h: v["verdict"] for h, v in results["verdicts"].items()}
    assert got == {"H1": "supported", "H2_in": "not_supported", "H2_out": "not_supported",
                   "H3": "not_supported"}, got  # fmt: skip
    shares = results["shares"]
    assert shares["neither (survives)"]["value"] > 0.9
    assert abs(shares["W_in bypass"]["value"]) < 0.02 and abs(shares["neuron"]["value"]) < 0.02
    assert abs(shares["sinks"]["value"]) < 0.02  # the sink carries a constant, no label information
    [info] = results["probes"]["remainder"]["info"]
    assert info == {"sinks": 64, "sinks_beyond_position_0": 0}  # position 0 of each of the 64 texts


def test_position_0_is_a_sink_in_every_text_and_the_neuron_fires_hugely_there(context):
    ev, layer, index = context.eval, context.layer, context.neuron.index
    for batch in ev.batches:
        assert batch.sinks[:, 0].all() and not batch.sinks[:, 1:].any()
        norms = batch.mlp_in.norm(dim=-1)
        rest = norms[:, 1:][batch.real[:, 1:]]
        assert float(norms[:, 0].min()) > 3 * float(rest.max())
        units = batch.units[..., index]
        assert float(units[:, 0].min()) > 10 * float(units[:, 1:][batch.real[:, 1:]].abs().max())
    assert layer == 1


def test_the_first_batterys_sink_edit_moves_the_report_but_removes_no_information(context):
    """The W_in span at the sink set to its all-token mean: > 0.3 label SDs of motion, < 5 % of the
    report's label information."""
    ev, basis = context.eval, in_basis(context)
    coords = [b.mlp_in[b.real] @ basis for b in ev.batches]
    mean = torch.cat(coords).mean(0)  # over every real token: the sink dominates it
    dense = mean.expand(ev.n, ev.width, basis.shape[1]).clone()
    edit = SetCoords(context.layer, basis, dense)
    readings = engine(context).run([(edit,)], where="sink")
    edited = heads(context).reports(readings)["report"][:, 0]
    clean, labels = ev.report, ev.labels
    pinned = heads(context).reports(engine(context).run([(pin(context),)], where="label"))["report"][:, 0]
    assert np.allclose(pinned, clean, atol=1e-4)  # a no-op edit reproduces the clean report
    motion = float(np.abs(edited - clean).mean() / labels.std())
    share = (float(r2(labels, clean)) - float(r2(labels, edited))) / float(r2(labels, clean))
    assert motion > 0.3, motion
    assert share < 0.05, share
