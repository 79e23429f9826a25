"""The README's "Add a probe" example, as written there: a new information test needs only its edit
and its null draws; Δr², shares, CIs, rank p and specificity come from the shared machinery."""

from __future__ import annotations

import pytest
from planted import TEST_OPTIONS, write_planted

from mechcheck.battery.aggregate import Pooled, aggregate_test
from mechcheck.battery.context import build_context
from mechcheck.battery.evaluation import eval_texts
from mechcheck.battery.interchange import donor_coords
from mechcheck.battery.scoring import InformationTest, donors, heads, matched
from mechcheck.battery.vectors import all_out_directions, orthonormal
from mechcheck.checkpoint import read_checkpoint


class OutCoordinate(InformationTest):  # the README's example, not registered (tests share one registry)
    hypotheses = ("H2_out",)
    order = 45

    def edits(self, ctx):
        give = donors(ctx)
        out = all_out_directions(ctx.trained, ctx.layer)
        effect = (donor_coords(ctx, orthonormal([out[ctx.neuron.index]]), give),)
        null = [(donor_coords(ctx, orthonormal([all_out_directions(ctx.trained, ly)[i]]), give),)
                for ly, i in matched(ctx).units if ly == ctx.layer]  # fmt: skip
        return {"effect": effect}, null, "W_out coordinates of write-matched neurons of layer L"


@pytest.mark.usefixtures("one_thread")
def test_a_new_information_test_gets_its_statistics_from_shared_helpers(tmp_path):
    ck = read_checkpoint(write_planted(tmp_path, "H2_out", 0, n_eval=40))
    base = ck.load_base()
    texts, groups, _ = eval_texts(ck, None, TEST_OPTIONS)
    ctx = build_context(base, base, ck.readout, ck.neuron, ck.position, texts, groups, TEST_OPTIONS)
    ctx.audit = True
    ctx.start_probe("out_coordinate")
    result = OutCoordinate().run(ctx).check("out_coordinate")
    assert ctx.interventions and all(e["present"] for e in ctx.interventions)
    data = {n: {"label": h.label, "clean": h.clean} for n, h in heads(ctx).heads.items()}
    pooled = aggregate_test(Pooled([ctx.eval.groups], 200, 0.95, 0), [result.test], [data])
    report = pooled["report"]
    assert set(report) >= {"r2", "dr2", "share", "motion", "shift", "null", "specificity"}
    assert report["null"]["n"] == len(result.test["null"]["report"]) > 0
    lo, hi = report["dr2"]["ci"]
    assert lo <= report["dr2"]["value"] <= hi
    # the planted H2_out report reads the neuron's write; before the neuron writes (layer L's MLP
    # input), its W_out coordinate carries nothing of the label: the test rightly finds nothing
    assert abs(report["share"]["value"]) < 0.05
