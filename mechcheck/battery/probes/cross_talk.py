"""`cross_talk` (several neurons): does interchanging neuron j at p remove neuron i's information?

Run on neuron i's view of the checkpoint (its own row of the vector readout): every reported
neuron j is interchanged at p in turn, and the information report i loses about label i is row i
of the k×k matrix (the diagonal is the `neuron` test of i). Null: the same interchange of
`n_null_secondary` neurons matched to i on write magnitude. `matrix` assembles the rows.
"""

from __future__ import annotations

from typing import Any

from mechcheck.battery.base import register
from mechcheck.battery.context import Context
from mechcheck.battery.interchange import donor_unit
from mechcheck.battery.scoring import InformationTest, donors, matched
from mechcheck.readout import Neuron, neuron_key


def edit_name(neuron: Neuron) -> str:
    return f"interchange_{neuron_key(neuron)}"


@register("cross_talk")
class CrossTalk(InformationTest):
    hypotheses = ("H2_out",)
    needs = ("labels", "several_neurons")
    order = 95

    def edits(self, ctx: Context):
        give = donors(ctx)
        named = {"effect": (donor_unit(ctx, ctx.layer, ctx.neuron.index, give),)}
        for neuron in ctx.targets:
            if neuron != ctx.neuron:
                named[edit_name(neuron)] = (donor_unit(ctx, neuron.layer, neuron.index, give),)
        units = matched(ctx).units[: ctx.options.n_null_secondary]
        null = [(donor_unit(ctx, layer, index, give),) for layer, index in units]
        return named, null, "neurons matched on write magnitude to this view's neuron"


def matrix(neurons: list[dict[str, int]], per_neuron: list[dict[str, Any]]) -> dict[str, Any]:
    """Entry [i][j]: Δr² of report i about label i when neuron j is interchanged at p, with its CI
    and rank p; the diagonal is the view's own neuron."""
    keys = [neuron_key(Neuron(n["layer"], n["index"])) for n in neurons]
    nan = float("nan")
    out: dict[str, Any] = {"neurons": neurons, "keys": keys, "value": [], "ci": [], "p": []}
    for i, view in enumerate(per_neuron):
        probe = ((view.get("probes") or {}).get("cross_talk") or {}).get("heads", {}).get("report", {})
        row, cis, ps = [], [], []
        for j, key in enumerate(keys):
            entry = (
                probe.get("dr2")
                if i == j
                else (probe.get("comparisons") or {}).get(f"interchange_{key}", {}).get("dr2")
            )
            p = (
                probe.get("null", {}).get("p")
                if i == j
                else (probe.get("comparisons") or {}).get(f"interchange_{key}", {}).get("p")
            )
            entry = entry or {"value": nan, "ci": [nan, nan]}
            row.append(float(entry["value"]))
            cis.append([float(c) for c in entry["ci"]])
            ps.append(float(p) if p is not None else nan)
        out["value"].append(row)
        out["ci"].append(cis)
        out["p"].append(ps)
    return out
