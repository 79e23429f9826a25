"""Neuron ablation: does the report change when the neuron is removed? (H2-out: yes; H1: no.)

Three ablations, because they are not interchangeable: `zero`, `mean` (the neuron's mean over
every real token of the evaluation texts) and `resample` (each text gets the neuron's activations
from another text, a random derangement, position by position; a shorter donor repeats its last
value). The effect is mean |Δreport| in units of the label's std, and the change of skill
(R² against the fixed labels). The null: the same ablation of (up to NULL_NEURONS) random
neurons of the same layer, measured on the null subset of texts.
"""

from __future__ import annotations

import numpy as np
import torch

from mechcheck.battery.base import Probe, ProbeResult, bar_figure, register
from mechcheck.battery.context import Context
from mechcheck.battery.edits import neuron_edit, sattolo, set_neuron
from mechcheck.battery.stats import mean_metric, null_control, skill_change_metric

MODES = ("zero", "mean", "resample")
NULL_NEURONS = 10  # the first of the context's random neurons: three modes × one null pass each


def resample_values(ctx: Context, b: int, column: int, donors: np.ndarray) -> torch.Tensor:
    """Activations of cached `column` taken from each text's donor text, position-aligned. [batch, pos]"""
    batch = ctx.eval.batches[b]
    width = batch.enc["attention_mask"].shape[1]
    rows = []
    for text in range(batch.texts.start, batch.texts.stop):
        donor = ctx.text_values(int(donors[text]), column)
        rows.append(donor[torch.arange(width).clamp(max=len(donor) - 1)])
    return torch.stack(rows)


class _Ablator:
    """The value each mode puts in place of a cached column (0 = the neuron, k = k-th random neuron)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.means = ctx.token_values().mean(0)
        self.donors = sattolo(len(ctx.eval.texts), ctx.rng)
        self.indices = [ctx.neuron.index, *ctx.random_neurons[:NULL_NEURONS].tolist()]

    def edits(self, mode: str, column: int, b: int):
        if mode == "zero":
            value: float | torch.Tensor = 0.0
        elif mode == "mean":
            value = float(self.means[column])
        else:
            value = resample_values(self.ctx, b, column, self.donors)
        return neuron_edit(self.ctx, set_neuron(self.indices[column], value))


@register("ablation")
class Ablation(Probe):
    hypotheses = ("H1", "H2_out")
    needs = ("labels",)
    order = 10
    intervenes = True

    def run(self, ctx: Context) -> ProbeResult:
        opts, result = ctx.options, ProbeResult()
        ablator = _Ablator(ctx)
        clean, labels, sd = ctx.clean_report, ctx.labels, ctx.label_std
        null_rows = ctx.rows(ctx.null_batches)
        bars = {}
        for mode in MODES:
            ablated = ctx.reports(lambda b, m=mode: ablator.edits(m, 0, b))
            effect = mean_metric(
                np.abs(ablated - clean) / sd, opts.n_bootstrap, opts.ci, ctx.seed(), ctx.groups
            )
            result.metrics[f"{mode}.mean_abs_delta"] = effect
            result.metrics[f"{mode}.delta_skill"] = skill_change_metric(
                ablated, clean, labels, opts.n_bootstrap, opts.ci, ctx.seed(), ctx.groups
            )
            null = []
            for column in range(1, len(ablator.indices)):
                got = ctx.reports(lambda b, m=mode, k=column: ablator.edits(m, k, b), ctx.null_batches)
                null.append(float(np.mean(np.abs(got - clean[null_rows])) / sd))
            control = null_control(effect["value"], null, f"{mode}.mean_abs_delta", opts.ci)
            result.controls[f"{mode}.random_neurons"] = control
            bars[mode] = effect
            bars[f"{mode}: random neurons"] = {"value": control["value"], "ci": control["ci"]}
        result.figures["effects"] = bar_figure(
            "Neuron ablation vs random neurons of the same layer", bars, "mean |Δreport| / SD(label)"
        )
        result.notes.append(
            f"{len(ablator.indices) - 1} random neurons of layer {ctx.layer}; nulls on "
            f"{len(null_rows)} of {ctx.eval.n} labels; mean ablation uses the neuron's mean over every "
            "real token."
        )
        return result
