"""Cross-talk between the neurons of a several-neuron run: does ablating neuron j move neuron i's report?

Run on neuron i's view of the checkpoint (its own row of the vector readout), the probe
mean-ablates every targeted neuron j in turn (its mean over every real token of the evaluation
texts, in the trained model) and measures mean |Δreport_i| / SD(label_i): row i of the k×k
cross-talk matrix. The diagonal is the neuron's own mean ablation; off-diagonal entries are the
cross-talk. The null for entry (i, j): the same ablation of random neurons of neuron j's layer
(never a targeted neuron), measured on the null subset of texts. `matrix` assembles the rows of
every view into the matrix that results.json carries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mechcheck.battery.base import Probe, ProbeResult, bar_figure, register
from mechcheck.battery.context import Context
from mechcheck.battery.edits import set_neuron
from mechcheck.battery.stats import mean_metric, null_control
from mechcheck.readout import Neuron, neuron_key
from mechcheck.subject import Site
from mechcheck.verdict import ALPHA, MIN_EFFECT


def metric_name(neuron: Neuron) -> str:
    return f"ablate_{neuron_key(neuron)}.mean_abs_delta"


def token_means(ctx: Context, layers: list[int]) -> dict[int, torch.Tensor]:
    """Every neuron's mean over the real tokens of the evaluation texts, trained model. {layer: [d_mlp]}"""
    sums = {layer: torch.zeros(ctx.trained.d_mlp, dtype=torch.float64) for layer in layers}
    count = 0
    for batch in ctx.eval.batches:
        got = ctx.trained.run(batch.enc, reads=[Site("mlp_post", layer) for layer in layers])
        real = batch.enc["attention_mask"].bool()
        for layer in layers:
            sums[layer] += got[Site("mlp_post", layer)][real].double().sum(0).cpu()
        count += int(real.sum())
    return {layer: (total / count).float() for layer, total in sums.items()}


def random_neurons(ctx: Context, layer: int) -> list[int]:
    """`n_random` neurons of `layer` that no view reports, drawn with the probe's generator."""
    taken = {n.index for n in ctx.targets if n.layer == layer}
    others = np.array([i for i in range(ctx.trained.d_mlp) if i not in taken])
    size = min(ctx.options.n_random, len(others))
    return sorted(int(i) for i in ctx.rng.choice(others, size=size, replace=False))


@register("cross_talk")
class CrossTalk(Probe):
    hypotheses = ("H2_out",)
    needs = ("labels", "several_neurons")
    order = 95
    intervenes = True

    def run(self, ctx: Context) -> ProbeResult:
        opts, result, sd = ctx.options, ProbeResult(), ctx.label_std
        clean = ctx.clean_report
        layers = sorted({n.layer for n in ctx.targets})
        means = token_means(ctx, layers)

        def ablate(layer: int, index: int, batches=None) -> np.ndarray:
            edit = [(Site("mlp_post", layer), set_neuron(index, float(means[layer][index])))]
            got = ctx.reports(lambda b: edit, batches)
            return np.abs(got - clean[ctx.rows(batches)]) / sd

        for neuron in ctx.targets:
            effect = ablate(neuron.layer, neuron.index)
            metric = mean_metric(effect, opts.n_bootstrap, opts.ci, ctx.seed(), ctx.groups)
            result.metrics[metric_name(neuron)] = metric
        bars = {}
        for layer in layers:
            null = [float(ablate(layer, k, ctx.null_batches).mean()) for k in random_neurons(ctx, layer)]
            for neuron in (n for n in ctx.targets if n.layer == layer):
                name = metric_name(neuron)
                control = null_control(result.metrics[name]["value"], null, name, opts.ci)
                result.controls[f"ablate_{neuron_key(neuron)}.random_neurons"] = control
                bars[neuron_key(neuron)] = result.metrics[name]
            bars[f"random, layer {layer}"] = {"value": control["value"], "ci": control["ci"]}
        me = neuron_key(ctx.neuron)
        title = f"Report of {me} when each reported neuron is mean-ablated"
        result.figures["row"] = bar_figure(title, bars, f"mean |Δreport| / SD(label {me})")
        result.notes.append(
            f"row {neuron_key(ctx.neuron)} of the cross-talk matrix over {len(ctx.targets)} neurons; nulls: "
            f"{opts.n_random} random neurons per layer ({', '.join(map(str, layers))}) on "
            f"{len(ctx.rows(ctx.null_batches))} of {ctx.eval.n} labels"
        )
        return result


def matrix(neurons: list[dict[str, int]], per_neuron: list[dict[str, Any]]) -> dict[str, Any]:
    """The k×k cross-talk matrix from each view's (seed-aggregated) `cross_talk` probe: entry [i][j] =
    mean |Δreport_i| / SD(label_i) when neuron j is mean-ablated, its CI, its null's upper quantile
    and BH q; `present[i][j]` (the verdicts' rule for an effect) when the value is at least MIN_EFFECT,
    the CI's low end clears that null quantile and q < ALPHA."""
    keys = [neuron_key(Neuron(n["layer"], n["index"])) for n in neurons]
    nan = float("nan")
    out: dict[str, Any] = {"neurons": neurons, "keys": keys, "value": [], "ci": [], "null_upper": [], "q": []}
    for view in per_neuron:
        probe = (view.get("probes") or {}).get("cross_talk") or {}
        metrics, controls = probe.get("metrics") or {}, probe.get("controls") or {}
        row = [metrics.get(f"ablate_{k}.mean_abs_delta") or {"value": nan, "ci": [nan, nan]} for k in keys]
        nulls = [controls.get(f"ablate_{k}.random_neurons") or {} for k in keys]
        out["value"].append([float(m["value"]) for m in row])
        out["ci"].append([[float(c) for c in m["ci"]] for m in row])
        out["null_upper"].append([float(c.get("upper", nan)) for c in nulls])
        out["q"].append([float(c.get("q", c.get("p", nan))) for c in nulls])
    out["present"] = [
        [bool(v >= MIN_EFFECT and ci[0] > up and q < ALPHA) for v, ci, up, q in zip(*cells, strict=True)]
        for cells in zip(out["value"], out["ci"], out["null_upper"], out["q"], strict=True)
    ]
    return out
