"""`in_bypass` (H2-in): interchange the neuron's `W_in` span at the label position, neuron pinned.

Layer L's MLP input at p gets the donor text's coordinates in the span of the neuron's (folded)
input directions — gate and up for a gated MLP — while the neuron itself is held at its clean
value: what the report loses is what it read from those directions *other than through the
neuron*. Null: the same edit of random subspaces of equal dimension drawn from the residual's own
covariance and variance-matched to the span at p. Comparison: the most label-predictive directions
outside the span (does any label-bearing direction matter as much?).
"""

from __future__ import annotations

from mechcheck.battery.base import register
from mechcheck.battery.context import Context
from mechcheck.battery.interchange import donor_coords, pin, primary_where
from mechcheck.battery.scoring import InformationTest, donors
from mechcheck.battery.spans import as_basis, in_basis, label_basis, subspaces


def span_info(ctx: Context) -> dict:
    found = subspaces(ctx)
    return {"dimension": int(in_basis(ctx).shape[1]), "span_variance": found.target, "alpha": found.alpha,
            "matched": found.matched, "n": len(found.bases),
            "variances": found.variances.tolist()}  # fmt: skip


@register("in_bypass")
class InBypass(InformationTest):
    hypotheses = ("H2_in",)
    primary = True
    order = 20
    pinned = True

    def where_for(self, ctx: Context) -> str:
        return primary_where(ctx)

    def edits(self, ctx: Context):
        give = donors(ctx)
        held = (pin(ctx),) if self.pinned else ()
        effect = (donor_coords(ctx, in_basis(ctx), give), *held)
        label = (donor_coords(ctx, label_basis(ctx), give), *held)
        null = [(donor_coords(ctx, as_basis(ctx, b), give), *held) for b in subspaces(ctx).bases]
        about = "random subspaces variance-matched to the W_in span at p" + (
            ", neuron pinned" if self.pinned else ""
        )
        return {"effect": effect, "label_subspace": label}, null, about

    def info(self, ctx: Context) -> dict:
        return span_info(ctx)
