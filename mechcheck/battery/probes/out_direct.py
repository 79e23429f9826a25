"""`out_direct` (direct vs indirect read of `W_out`): only the neuron's changed write, added to the
final residual, with every later layer left clean.

The neuron at p takes the donor's value as in `neuron`, but its changed write reaches the report
only directly: the final residual at r gets `post_norm(mlp_out + Δa·W_out) − post_norm(mlp_out)`
(for architectures without a post-MLP norm simply Δa·W_out). Comparing with `neuron` splits the
neuron's share into its direct and its indirect (through later layers) parts. Null: the direct
writes of the neurons matched on write magnitude. Needs the report to be read where the label is
(a linear readout at the last token): elsewhere the write has no direct path to the report.
"""

from __future__ import annotations

import numpy as np
import torch

from mechcheck.battery.base import register
from mechcheck.battery.context import Context
from mechcheck.battery.engine import Readings
from mechcheck.battery.scoring import InformationTest, donors, heads, matched


def direct_final(ctx: Context, layer: int, index: int, donor: np.ndarray) -> torch.Tensor:
    """The final residual at r with only the direct write of (layer, index) := donor value. [n, d]"""
    ev, anatomy = ctx.eval, ctx.trained.anatomy
    units = ev.units_p[:, layer]  # [n, d_mlp] (p = r here)
    down = anatomy.down_proj(layer)
    with torch.no_grad():
        old = down(units)
        delta = (units[torch.as_tensor(donor), index] - units[:, index])[:, None]
        new = old + delta * anatomy.W_out(layer, index, folded=False).to(old)
        post = anatomy.post_mlp_norm(layer)
        write = (post(new) - post(old)) if post is not None else new - old
    return ev.x_final + write


@register("out_direct")
class OutDirect(InformationTest):
    hypotheses = ("H2_out",)
    primary = True
    intervenes = False  # computed from the clean pass: no forward pass is edited
    order = 40

    needs = ("labels", "report_at_label")

    def edits(self, ctx: Context):
        units = matched(ctx)
        return (
            {"effect": (ctx.layer, ctx.neuron.index)},
            list(units.units),
            "direct writes of the matched neurons",
        )

    def reports(self, ctx: Context, named, null):
        give, ev = donors(ctx), ctx.eval
        layer, index = ctx.layer, ctx.neuron.index
        finals = [direct_final(ctx, ly, i, give) for ly, i in [*named.values(), *null]]
        readings = Readings(
            torch.stack(finals, dim=1),
            ev.units_p[:, layer, index, None].expand(-1, len(finals)),
            ev.mlp_in_p[:, None].expand(-1, len(finals), -1),
            ev.resid_p[:, layer, None].expand(-1, len(finals), -1),
        )
        return heads(ctx).reports(readings)
