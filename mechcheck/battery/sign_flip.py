"""Sign flip: negate the neuron at every position. Does the report follow? (H2-out: yes; H1: no.)

The worked example of "add a probe" in the README: one file, registered under a unique name; the
runner imports it, and it appears in results.json and the report with nothing else touched.
Unlike ablation, a flip keeps the neuron's magnitude, so it tests whether the report reads the
neuron's *sign*. The effect is mean |Δreport| in label SDs; the null flips random neurons of the
same layer on the null subset of texts.
"""

from __future__ import annotations

import numpy as np
import torch

from mechcheck.battery.base import Probe, ProbeResult, register
from mechcheck.battery.context import Context
from mechcheck.battery.edits import neuron_edit
from mechcheck.battery.stats import mean_metric, null_control

NULL_NEURONS = 10  # random neurons of the layer flipped for the null (one pass each on the null texts)


def flip(index: int):
    """mlp_post edit: neuron `index` := −neuron `index`, at every position."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[..., index] = -x[..., index]
        return y

    return fn


@register("sign_flip")
class SignFlip(Probe):
    hypotheses = ("H2_out",)
    needs = ("labels",)
    order = 90
    intervenes = True

    def run(self, ctx: Context) -> ProbeResult:
        opts, result, sd = ctx.options, ProbeResult(), ctx.label_std
        flipped = ctx.reports(lambda b: neuron_edit(ctx, flip(ctx.neuron.index)))
        effect = np.abs(flipped - ctx.clean_report) / sd
        result.metrics["mean_abs_delta"] = mean_metric(
            effect, opts.n_bootstrap, opts.ci, ctx.seed(), ctx.groups
        )
        rows = ctx.rows(ctx.null_batches)
        null = [
            float(np.mean(np.abs(ctx.reports(lambda b, k=k: neuron_edit(ctx, flip(int(k))), ctx.null_batches)
                                 - ctx.clean_report[rows])) / sd)
            for k in ctx.random_neurons[:NULL_NEURONS]
        ]  # fmt: skip
        result.controls["mean_abs_delta.random_neurons"] = null_control(
            result.metrics["mean_abs_delta"]["value"], null, "mean_abs_delta", opts.ci
        )
        result.notes.append(f"null: the same flip of {len(null)} random neurons of layer {ctx.layer}")
        return result
