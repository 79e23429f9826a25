"""The neuron's directions in the residual stream: ablate them, and inject along `W_out`.

`direction_ablation` mean-ablates a subspace of the residual stream — the component along it is
replaced by its mean over every real evaluation token, so the edit removes the information the
direction carries without pushing the residual off its distribution (zero-projection would also
remove the residual's large constant components, and then a random direction's null is dominated
by that off-distribution shift rather than by what the report reads):
- `in_free`: the `W_in` direction(s) (folded; for gated MLPs the span of `gate` and `up`) in the
  residual the neuron reads (`mlp_in` at L, edited in place, so the edit
  persists in the stream);
- `in_pinned`: the same, with the neuron held at its clean activations — what is left is the
  report reading the `W_in` direction itself, not through the neuron (H2-in); for gated MLPs also
  `in_pinned.gate` and `in_pinned.up`, each direction alone;
- `out`: the unit `W_out` direction in `resid_post` at L *and at every later layer*, so nothing
  downstream can write it back (H2-out).
Effects are mean |Δreport| / SD(label). Nulls (on the null subset of texts): `n_random` random
orthonormal subspaces of the same dimension, and the corresponding directions of NULL_NEURONS
random neurons of layer L.

`direction_injection` adds α·SD(label)·`W_out` to `resid_post` at L — exactly what shifting the
neuron by α label-SDs at every position writes — for α in ±1, ±2; `slope` is the report's change
per unit of that equivalent neuron shift. Null: random directions of the same norm as `W_out`,
injected at the largest α (|mean change| / shift, one pass each).
"""

from __future__ import annotations

import numpy as np
import torch

from mechcheck.battery.base import Probe, ProbeResult, bar_figure, line_figure, register
from mechcheck.battery.context import Context
from mechcheck.battery.edits import add, at_mlp_in, downstream, pinned
from mechcheck.battery.stats import mean_metric, metric, null_control, slope
from mechcheck.battery.vectors import (
    all_in_directions,
    all_out_directions,
    in_directions,
    orthonormal,
    out_direction,
    random_bases,
    unit,
)
from mechcheck.subject import Edit, Site

ALPHAS = (-2.0, -1.0, 1.0, 2.0)
NULL_NEURONS = 10  # other neurons whose W_in / W_out serve as the neuron-direction nulls


def in_bases(ctx: Context) -> dict[str, torch.Tensor]:
    """Orthonormal bases of the neuron's `W_in` directions; key "" is the primary (all of them)."""
    dirs = in_directions(ctx.trained, ctx.neuron)
    bases = {"": orthonormal(list(dirs.values()))}
    if len(dirs) > 1:
        bases.update({name: orthonormal([v]) for name, v in dirs.items()})
    return bases


def _in_edits(ctx: Context, basis: torch.Tensor, pin: bool):
    edit = at_mlp_in(ctx, basis)

    def edits_for(b: int) -> list[Edit]:
        return [edit, pinned(ctx, b)] if pin else [edit]

    return edits_for


def _effect(ctx: Context, edits_for, batches=None) -> np.ndarray:
    rows = ctx.rows(batches)
    return np.abs(ctx.reports(edits_for, batches) - ctx.clean_report[rows]) / ctx.label_std


@register("direction_ablation")
class DirectionAblation(Probe):
    hypotheses = ("H1", "H2_in", "H2_out")
    needs = ("labels",)
    order = 30
    intervenes = True

    def run(self, ctx: Context) -> ProbeResult:
        opts, result = ctx.options, ProbeResult()
        stat = dict(n_resamples=opts.n_bootstrap, ci=opts.ci, groups=ctx.groups)
        bases = in_bases(ctx)
        for name, basis in bases.items():
            suffix = f".{name}" if name else ""
            pins = ((False, "in_free"), (True, "in_pinned")) if not name else ((True, "in_pinned"),)
            for pin, key in pins:
                per_example = _effect(ctx, _in_edits(ctx, basis, pin))
                result.metrics[key + suffix] = mean_metric(per_example, seed=ctx.seed(), **stat)
        out_basis = orthonormal([out_direction(ctx.trained, ctx.neuron)])
        out_edits = downstream(ctx, out_basis)
        out = _effect(ctx, lambda b: out_edits)
        result.metrics["out"] = mean_metric(out, seed=ctx.seed(), **stat)
        self._nulls(ctx, result, bases[""].shape[1])
        result.figures["effects"] = bar_figure(
            "Direction ablation vs nulls",
            {k: result.metrics[k] for k in ("in_free", "in_pinned", "out")}
            | {f"{k} (null)": {"value": c["value"], "ci": c["ci"]} for k, c in result.controls.items()},
            "mean |Δreport| / SD(label)",
        )
        names = ", ".join(n for n in bases if n) or "in"
        result.notes.append(
            f"W_in directions: {names} (folded with the pre-MLP norm gain); in_* metrics without a suffix "
            f"ablate their span (dimension {bases[''].shape[1]}). W_out is mean-ablated after layer "
            f"{ctx.layer} and every later layer; every subspace is mean-ablated (set to its mean over "
            "the real tokens)."
        )
        return result

    @staticmethod
    def _nulls(ctx: Context, result: ProbeResult, k: int) -> None:
        null_in: dict[str, list[float]] = {"random_directions": [], "neuron_directions": []}
        null_out: dict[str, list[float]] = {"random_directions": [], "neuron_directions": []}
        batches, n = ctx.null_batches, ctx.options.n_random
        for basis in random_bases(ctx.rng, n, ctx.trained.d_model, k):
            null_in["random_directions"].append(_effect(ctx, _in_edits(ctx, basis, True), batches).mean())
        for basis in random_bases(ctx.rng, n, ctx.trained.d_model, 1):
            edits = downstream(ctx, basis)
            null_out["random_directions"].append(_effect(ctx, lambda b, e=edits: e, batches).mean())
        ins, outs = all_in_directions(ctx.trained, ctx.layer), all_out_directions(ctx.trained, ctx.layer)
        for j in ctx.random_neurons[:NULL_NEURONS].tolist():
            vectors = [rows[j] for rows in ins.values() if rows[j].norm() > 0]
            if vectors:
                edits_for = _in_edits(ctx, orthonormal(vectors), True)
                null_in["neuron_directions"].append(_effect(ctx, edits_for, batches).mean())
            if outs[j].norm() > 0:
                edits = downstream(ctx, unit(outs[j])[:, None])
                null_out["neuron_directions"].append(_effect(ctx, lambda b, e=edits: e, batches).mean())
        for key, nulls in (("in_pinned", null_in), ("out", null_out)):
            for name, null in nulls.items():
                value = result.metrics[key]["value"]
                result.controls[f"{key}.{name}"] = null_control(value, null, key, ctx.options.ci)


@register("direction_injection")
class DirectionInjection(Probe):
    hypotheses = ("H1", "H2_out")
    needs = ("labels",)
    order = 40
    intervenes = True

    def run(self, ctx: Context) -> ProbeResult:
        opts, result = ctx.options, ProbeResult()
        sd, w_out = ctx.label_std, out_direction(ctx.trained, ctx.neuron)
        site = Site("resid_post", ctx.layer)
        shifts = np.array([0.0, *(a * sd for a in ALPHAS)])
        reports = [ctx.clean_report] + [
            ctx.reports(lambda b, s=float(s): [(site, add(s * w_out))]) for s in shifts[1:]
        ]
        reports = np.stack(reports, axis=1)  # [rows, shifts]
        result.metrics["slope"] = mean_metric(
            slope(shifts, reports), opts.n_bootstrap, opts.ci, ctx.seed(), ctx.groups
        )
        null, top = [], max(ALPHAS) * sd
        clean = ctx.clean_report[ctx.rows(ctx.null_batches)]
        for basis in random_bases(ctx.rng, opts.n_random, ctx.trained.d_model, 1):
            vector = basis[:, 0] * w_out.norm()
            up = ctx.reports(lambda b, v=vector: [(site, add(top * v))], ctx.null_batches)
            null.append(abs(float(np.mean(up - clean))) / top)
        result.controls["slope.random_directions"] = null_control(
            result.metrics["slope"]["value"], null, "slope", opts.ci, use_abs=True
        )
        self._gain(ctx, result)
        order = np.argsort(shifts)
        means = [mean_metric(reports[:, i], opts.n_bootstrap, opts.ci, ctx.seed(), ctx.groups) for i in order]
        result.figures["dose_response"] = line_figure(
            "Report vs injected α·SD(label)·W_out at resid_post L",
            [float(shifts[i]) for i in order],
            {"mean report": {"y": [m["value"] for m in means], "ci": [m["ci"] for m in means]}},
            "equivalent neuron shift (neuron units)", "report",
        )  # fmt: skip
        return result

    @staticmethod
    def _gain(ctx: Context, result: ProbeResult) -> None:
        """Compare with the neuron's own gain (the patching slope), when that probe ran first."""
        patching = ctx.results.get("patching")
        gain = patching.metrics.get("slope") if patching is not None else None
        if gain is None:
            result.notes.append("gain_ratio not computed: the patching probe did not run in this battery")
            return
        if not gain["ci"][0] > 0:
            result.notes.append(
                f"gain_ratio not computed: the patching slope's CI {gain['ci']} is not above 0"
            )
            return
        inj = result.metrics["slope"]
        bounds = [inj["ci"][i] / gain["ci"][j] for i in (0, 1) for j in (0, 1)]
        result.metrics["gain_ratio"] = metric(inj["value"] / gain["value"], [min(bounds), max(bounds)])
        result.notes.append(
            "gain_ratio = injection slope / patching slope (≈ 1 when the report reads the neuron's output "
            "linearly); its CI combines the ends of the two CIs."
        )
