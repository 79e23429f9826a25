"""Geometry: is the readout aligned with the neuron's `W_in` / `W_out`, more than other neurons'?

Two views of what the report reads, in the residual stream:
- `readout`: the linear readout pulled back through the final norm's gain (`w ⊙ g`, centred for
  LayerNorm) — what the head reads at the last layer;
- `gradient`: the mean over evaluation examples of d report / d resid_post at L (at the report
  position) — what the report reads at the neuron's layer, through every later layer.
Each is compared by cosine with the neuron's `W_in` (folded: gate, up / in) and `W_out`. Nulls:
the same |cosine| for every other neuron of the layer, and for random directions. A cosine is a
fixed number for the readout (CI = the value); for the gradient it is bootstrapped over examples.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from mechcheck.battery.base import Probe, ProbeResult, bar_figure, register
from mechcheck.battery.context import Context
from mechcheck.battery.stats import metric, null_control
from mechcheck.battery.vectors import (
    all_in_directions,
    all_out_directions,
    cosine,
    in_directions,
    out_direction,
    random_bases,
    readout_pullback,
)
from mechcheck.readout import report_positions
from mechcheck.subject import Site, gather_position

N_RANDOM_DIRECTIONS = 200  # cheap: no forward pass


def report_gradients(ctx: Context) -> torch.Tensor:
    """d report / d resid_post L at each report position, per label row. [rows, d_model]"""
    out = []
    for b, batch in enumerate(ctx.eval.batches):
        leaves: list[torch.Tensor] = []

        def leaf(x: torch.Tensor, leaves: list[torch.Tensor] = leaves) -> torch.Tensor:
            leaves.append(x.detach().clone().requires_grad_(True))
            return leaves[-1]

        report = ctx.report(b, [(Site("resid_post", ctx.layer), leaf)], grad=True)
        (grad,) = torch.autograd.grad(report.sum(), leaves[-1])
        where = report_positions(batch.enc, ctx.position)
        out.append(gather_position(grad, batch.enc["attention_mask"], where).detach())
    return torch.cat(out).double()


def _targets(ctx: Context) -> dict[str, torch.Tensor]:
    """The neuron's directions in the trained model (a zero vector — a silenced neuron — is left out)."""
    dirs = {f"W_in.{name}": v for name, v in in_directions(ctx.trained, ctx.neuron).items()}
    dirs |= {"W_out": out_direction(ctx.trained, ctx.neuron)}
    return {name: v for name, v in dirs.items() if v.norm() > 0}


def _layer_rows(ctx: Context) -> dict[str, torch.Tensor]:
    rows = {f"W_in.{name}": m for name, m in all_in_directions(ctx.trained, ctx.layer).items()}
    return rows | {"W_out": all_out_directions(ctx.trained, ctx.layer)}


def _abs_cosines(rows: torch.Tensor, v: torch.Tensor, skip: int) -> list[float]:
    cos = torch.nn.functional.cosine_similarity(rows.double(), v.double()[None], dim=1).abs()
    keep = torch.ones(len(rows), dtype=torch.bool)
    keep[skip] = False
    keep &= rows.norm(dim=1) > 0
    return cos[keep].tolist()


@register("geometry")
class Geometry(Probe):
    hypotheses = ("H2_in", "H2_out")
    needs = ()
    order = 60
    intervenes = True

    def run(self, ctx: Context) -> ProbeResult:
        result = ProbeResult()
        targets, layer_rows = _targets(ctx), _layer_rows(ctx)
        if len(targets) < len(_layer_rows(ctx)):
            result.notes.append(
                "some of the neuron's directions are zero in the trained model and were left out"
            )
        views: dict[str, torch.Tensor] = {}
        pullback = readout_pullback(ctx.trained, ctx.readout)
        if pullback is not None:
            views["readout"] = pullback
        else:
            result.notes.append("the readout is not linear: only the gradient view is measured")
        grads = report_gradients(ctx)
        views["gradient"] = grads.mean(0)
        randoms = [b[:, 0] for b in random_bases(ctx.rng, N_RANDOM_DIRECTIONS, ctx.trained.d_model, 1)]
        for view, v in views.items():
            for name, t in targets.items():
                key = f"cos_{view}_{name}"
                value = cosine(v, t)
                ci = self._gradient_ci(ctx, grads, t) if view == "gradient" else (value, value)
                result.metrics[key] = metric(value, ci)
                others = _abs_cosines(layer_rows[name], v, ctx.neuron.index)
                result.controls[f"{key}.other_neurons"] = null_control(
                    value, others, key, ctx.options.ci, True
                )
                result.controls[f"{key}.random_directions"] = null_control(
                    value, [abs(cosine(v, r)) for r in randoms], key, ctx.options.ci, True
                )
        result.figures["cosines"] = bar_figure(
            "Cosine of what the report reads with the neuron's directions",
            {k: m for k, m in result.metrics.items()},
            "cosine",
        )
        result.notes.append(
            f"other_neurons nulls: |cos| for the other {ctx.trained.d_mlp - 1} neurons of layer {ctx.layer}; "
            f"random_directions: {N_RANDOM_DIRECTIONS} random unit vectors."
        )
        return result

    @staticmethod
    def _gradient_ci(ctx: Context, grads: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        g, t = grads.numpy(), target.double().numpy()
        t = t / np.linalg.norm(t)

        def cos_of_mean(index: np.ndarray) -> float:
            m = g[index.astype(int)].mean(0)
            return float(m @ t / (np.linalg.norm(m) or 1.0))

        if len(g) < 2:
            return cos_of_mean(np.arange(len(g))), cos_of_mean(np.arange(len(g)))
        res = stats.bootstrap(
            (np.arange(len(g)),), cos_of_mean, n_resamples=ctx.options.n_bootstrap, vectorized=False,
            confidence_level=ctx.options.ci, method="percentile", rng=np.random.default_rng(ctx.seed()),
        )  # fmt: skip
        return float(res.confidence_interval.low), float(res.confidence_interval.high)
