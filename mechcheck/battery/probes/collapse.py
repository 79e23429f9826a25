"""`collapse` (H3): did training make the neuron nearly constant on the same inputs?

The neuron at the label position on the evaluation texts, in the base and the trained model:
`std_ratio` = std(after) / std(before) with its CI; `live.r2`, the r² between the fixed label and
the trained model's own neuron (how stale the fixed labels went). Specificity: the same ratio for
every active neuron of layer L (base std ≥ ACTIVE of the neuron's; at least the MIN_ACTIVE widest) —
a collapse counts only if the
neuron's ratio ranks among the lowest of its layer (rank p for "lower").
"""

from __future__ import annotations

import numpy as np

from mechcheck.battery.base import Probe, ProbeResult, hist_figure, register
from mechcheck.battery.context import Context
from mechcheck.battery.probes.informative import control

ACTIVE = 0.1
MIN_ACTIVE = 50  # fewer active neurons than this: the layer's widest ones


@register("collapse")
class Collapse(Probe):
    hypotheses = ("H3",)
    needs = ("labels",)
    order = 80

    def run(self, ctx: Context) -> ProbeResult:
        ev, result = ctx.eval, ProbeResult()
        index = ctx.neuron.index
        before = ev.base_units_p.double().cpu().numpy()  # [n, d_mlp]
        after = ev.units_p[:, ctx.layer].double().cpu().numpy()
        result.samples["std_ratio"] = {
            "kind": "std_ratio",
            "x": after[:, index].tolist(),
            "y": before[:, index].tolist(),
        }
        result.samples["live.r2"] = {"kind": "r2", "y": ctx.labels.tolist(), "x": after[:, index].tolist()}
        std_b, std_a = before.std(0), after.std(0)
        others = np.ones(len(std_b), dtype=bool)
        for neuron in ctx.targets:
            if neuron.layer == ctx.layer:
                others[neuron.index] = False
        active = others & (std_b >= ACTIVE * max(std_b[index], 1e-12)) & (std_b > 0)
        if active.sum() < MIN_ACTIVE:  # a layer of near-silent neurons: its widest ones
            widest = np.argsort(-np.where(others & (std_b > 0), std_b, -1.0))[:MIN_ACTIVE]
            active = np.zeros_like(others)
            active[widest[std_b[widest] > 0]] = True
        ratios = (std_a[active] / std_b[active]).tolist()
        result.controls["std_ratio.layer_neurons"] = control(ratios, "std_ratio", direction="less")
        result.figures["distribution"] = hist_figure(
            "The neuron at the label position, before and after training",
            {"before (base)": before[:, index].tolist(), "after (trained)": after[:, index].tolist()},
            "activation",
            {"mean before": float(before[:, index].mean()), "mean after": float(after[:, index].mean())},
        )
        if ctx.base_is_trained:
            result.notes.append(
                "the checkpoint has no trained model (model/): the neuron is unchanged by construction"
            )
        result.notes.append(
            f"specificity: std ratios of the {int(active.sum())} active neurons of layer {ctx.layer}"
        )
        return result
