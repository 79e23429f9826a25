"""`remainder` (H1): what survives removing the neuron and its `W_in` span at every non-sink position.

At every real position except the attention sinks, layer L's MLP input in the `W_in` span and the
neuron itself are set to their position-class means (the label position's mean, the other
positions' mean) — the all-position form of `in_total` plus `neuron`. The report's r² with the
label that survives is the share carried by *neither* the neuron nor the directions it reads: a
separate model of the text (H1), or information in the sinks. The sinks' own part is measured by
the same edit at the sinks alone (`sink`). Null: the same all-position edit of variance-matched
subspaces together with write-matched neurons of layer L (a secondary edit: fewer draws, each a
full pass from layer L).
"""

from __future__ import annotations

from mechcheck.battery.base import register
from mechcheck.battery.context import Context
from mechcheck.battery.interchange import mean_coords, mean_unit
from mechcheck.battery.scoring import InformationTest, matched, score
from mechcheck.battery.spans import as_basis, in_basis, subspaces


@register("remainder")
class Remainder(InformationTest):
    hypotheses = ("H1",)
    order = 50
    where = "non_sink"

    def edits(self, ctx: Context):
        n = ctx.options.n_null_secondary
        effect = (mean_coords(ctx, in_basis(ctx)), mean_unit(ctx, ctx.neuron.index))
        units = [index for layer, index in matched(ctx, same_layer=True).units[:n]]
        bases = subspaces(ctx).bases[:n]
        null = [
            (mean_coords(ctx, as_basis(ctx, b)), mean_unit(ctx, i))
            for b, i in zip(bases, units, strict=False)
        ]
        return (
            {"effect": effect, "sink": effect},
            null,
            "variance-matched subspaces with write-matched layer-L neurons",
        )

    def reports(self, ctx: Context, named, null):
        everywhere = score(ctx, [named["effect"], *null], "non_sink")
        sinks = score(ctx, [named["sink"]], "sink")
        return {h: _insert(everywhere[h], sinks[h]) for h in everywhere}

    def info(self, ctx: Context) -> dict:
        counts = [int(b.sinks.sum()) for b in ctx.eval.batches]
        extra = sum(int((b.sinks[:, 1:]).sum()) for b in ctx.eval.batches)
        return {"sinks": sum(counts), "sinks_beyond_position_0": extra}


def _insert(everywhere, sinks):
    import numpy as np

    return np.concatenate([everywhere[:, :1], sinks, everywhere[:, 1:]], axis=1)
