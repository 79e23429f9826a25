"""`neuron` (H2-out): interchange the neuron at the label position with a donor text's value.

The neuron's only route to the report is its write (`W_out`·a), so the information this edit
removes is the information the report gets through the neuron. Null: the same interchange of
neurons matched on write magnitude at p (std·‖W_out‖ within a factor 2; own layer first).
"""

from __future__ import annotations

from mechcheck.battery.base import register
from mechcheck.battery.context import Context
from mechcheck.battery.interchange import donor_unit, primary_where
from mechcheck.battery.scoring import InformationTest, donors, matched


@register("neuron")
class NeuronInterchange(InformationTest):
    hypotheses = ("H2_out",)
    primary = True
    order = 10

    def where_for(self, ctx: Context) -> str:
        return primary_where(ctx)

    def edits(self, ctx: Context):
        give = donors(ctx)
        units = matched(ctx, same_layer=primary_where(ctx) != "label")
        effect = (donor_unit(ctx, ctx.layer, ctx.neuron.index, give),)
        null = [(donor_unit(ctx, layer, index, give),) for layer, index in units.units]
        return {"effect": effect}, null, "neurons matched on write magnitude at p (std·‖W_out‖)"

    def info(self, ctx: Context) -> dict:
        units = matched(ctx, same_layer=primary_where(ctx) != "label")
        layers = sorted({layer for layer, _ in units.units})
        return {"target_magnitude": units.target, "matched": units.matched, "n": len(units.units),
                "layers": layers, "magnitudes": units.magnitude.tolist()}  # fmt: skip
