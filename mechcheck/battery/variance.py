"""Variance (H3): did training make the neuron (nearly) constant on the same inputs?

The neuron at the label position on the evaluation texts, before (base model) and after (trained
model): std ratio after/before with a paired bootstrap CI, plus mean, std and range of each. The
null: the same ratio for random neurons of the layer — is a collapse specific to this neuron?
"""

from __future__ import annotations

import numpy as np

from mechcheck.battery.base import Probe, ProbeResult, hist_figure, register
from mechcheck.battery.context import Context
from mechcheck.battery.stats import bootstrap_ci, mean_metric, metric, null_control, std_ratio_metric


def _spread(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.ptp(values, axis=axis)


@register("variance")
class Variance(Probe):
    hypotheses = ("H3",)
    needs = ("base_model",)
    order = 80

    def run(self, ctx: Context) -> ProbeResult:
        opts, result = ctx.options, ProbeResult()
        before, after = ctx.eval.columns_before, ctx.eval.columns_after
        stat = dict(n_resamples=opts.n_bootstrap, ci=opts.ci)
        result.metrics["std_ratio"] = std_ratio_metric(
            after[:, 0], before[:, 0], seed=ctx.seed(), groups=ctx.groups, **stat
        )
        for name, values in (("before", before[:, 0]), ("after", after[:, 0])):
            result.metrics[f"mean.{name}"] = mean_metric(values, seed=ctx.seed(), groups=ctx.groups, **stat)
            result.metrics[f"std.{name}"] = metric(
                values.std(), bootstrap_ci(np.std, values, seed=ctx.seed(), **stat)
            )
            result.metrics[f"range.{name}"] = metric(
                _spread(values), bootstrap_ci(_spread, values, seed=ctx.seed(), **stat)
            )
        null = [
            after[:, k].std() / before[:, k].std()
            for k in range(1, before.shape[1])
            if before[:, k].std() > 0
        ]
        result.controls["std_ratio.random_neurons"] = null_control(
            result.metrics["std_ratio"]["value"], null, "std_ratio", opts.ci
        )
        result.figures["distribution"] = hist_figure(
            "The neuron at the label position, before and after training",
            {"before (base)": before[:, 0].tolist(), "after (trained)": after[:, 0].tolist()},
            "activation",
            {"mean before": float(before[:, 0].mean()), "mean after": float(after[:, 0].mean())},
        )
        if ctx.base_is_trained:
            result.notes.append(
                "the checkpoint has no trained model (model/): the neuron is unchanged by construction"
            )
        result.notes.append(
            f"null: std ratio of {len(null)} random neurons of layer {ctx.layer} on the same texts"
        )
        return result
