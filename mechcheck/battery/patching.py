"""Activation patching, dose–response: set the neuron to quantiles of its own distribution.

The neuron is set to its p5, p25, p50, p75 and p95 (over every real token of the evaluation
texts, in the *base* model, so a neuron that training made constant is still probed over its
original range) at every position. `slope` is the report's change per unit of the neuron
(least squares per text, averaged); `range_effect` is the report's change from p5 to p95 in units
of the label's std. The null: the same p5→p95 patch of (up to NULL_NEURONS of) the random
neurons of the same layer, on the null subset of texts (two passes each).
"""

from __future__ import annotations

import numpy as np

from mechcheck.battery.base import Probe, ProbeResult, line_figure, register
from mechcheck.battery.context import Context
from mechcheck.battery.edits import neuron_edit, set_neuron
from mechcheck.battery.stats import mean_metric, null_control, slope

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
NULL_NEURONS = 10  # the first of the context's random neurons: this null costs two passes each
MIN_SPAN = 1e-6  # a neuron whose p5..p95 span is below this cannot be patched meaningfully


@register("patching")
class Patching(Probe):
    hypotheses = ("H1", "H2_out")
    needs = ("labels",)
    order = 20
    intervenes = True

    def run(self, ctx: Context) -> ProbeResult:
        opts, result = ctx.options, ProbeResult()
        tokens = ctx.token_values(base=True)
        values = np.quantile(tokens[:, 0], QUANTILES)
        if values[-1] - values[0] < MIN_SPAN:
            result.notes.append(
                f"the neuron's p5..p95 span is {values[-1] - values[0]:.3g}: nothing to patch"
            )
            return result
        index = ctx.neuron.index
        reports = np.stack(
            [ctx.reports(lambda b, v=float(v): neuron_edit(ctx, set_neuron(index, v))) for v in values],
            axis=1,
        )  # [rows, quantiles]
        sd = ctx.label_std
        result.metrics["slope"] = mean_metric(
            slope(values, reports), opts.n_bootstrap, opts.ci, ctx.seed(), ctx.groups
        )
        span = (reports[:, -1] - reports[:, 0]) / sd
        result.metrics["range_effect"] = mean_metric(span, opts.n_bootstrap, opts.ci, ctx.seed(), ctx.groups)
        null_slopes, null_spans = self._null(ctx, tokens)
        result.controls["slope.random_neurons"] = null_control(
            result.metrics["slope"]["value"], null_slopes, "slope", opts.ci, use_abs=True
        )
        result.controls["range_effect.random_neurons"] = null_control(
            result.metrics["range_effect"]["value"], null_spans, "range_effect", opts.ci, use_abs=True
        )
        curve = [
            mean_metric(reports[:, i], opts.n_bootstrap, opts.ci, ctx.seed(), ctx.groups) for i in range(5)
        ]
        result.figures["dose_response"] = line_figure(
            "Report vs the neuron's patched value (quantiles p5..p95)",
            [float(v) for v in values],
            {"mean report": {"y": [c["value"] for c in curve], "ci": [c["ci"] for c in curve]},
             "identity": {"y": [float(v) for v in values]}},
            "neuron value (set at every position)", "report",
        )  # fmt: skip
        result.notes.append(
            f"quantiles {', '.join(f'{v:.3g}' for v in values)} of the base neuron over "
            f"{len(tokens)} real tokens; "
            f"null: |slope| of {len(null_slopes)} random neurons patched p5→p95 on the null subset."
        )
        return result

    @staticmethod
    def _null(ctx: Context, tokens: np.ndarray) -> tuple[list[float], list[float]]:
        """|slope| and |p5→p95 effect| of each random neuron (dead ones are left out)."""
        slopes, spans = [], []
        for column, index in enumerate(ctx.random_neurons[:NULL_NEURONS].tolist(), start=1):
            lo, hi = np.quantile(tokens[:, column], (QUANTILES[0], QUANTILES[-1]))
            if hi - lo < MIN_SPAN:
                continue
            low = ctx.reports(
                lambda b, i=index, v=float(lo): neuron_edit(ctx, set_neuron(i, v)), ctx.null_batches
            )
            high = ctx.reports(
                lambda b, i=index, v=float(hi): neuron_edit(ctx, set_neuron(i, v)), ctx.null_batches
            )
            change = float(np.mean(high - low))
            slopes.append(abs(change / (hi - lo)))
            spans.append(abs(change) / ctx.label_std)
        return slopes, spans
