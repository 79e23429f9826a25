"""`layerwise_probe` (descriptive, H1): where is the label linearly decodable at the label position?

At every layer, a ridge head on the residual entering that layer at p (and on the final norm at
the report position) predicts the label, cross-fitted in 5 folds by article; skill is the r² of
the out-of-fold predictions. Control task (Hewitt & Liang): each token type at p gets a random
label drawn from the real ones, and the same head is fitted; selectivity = r² − control r².
Trained model only (for a frozen checkpoint that is the base model).
"""

from __future__ import annotations

import numpy as np

from mechcheck.battery.base import Probe, ProbeResult, line_figure, register
from mechcheck.battery.context import Context
from mechcheck.battery.heads import CrossFit
from mechcheck.stats import r2


def control_labels(labels: np.ndarray, types: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random label (drawn from the real ones) per token type."""
    kinds, inverse = np.unique(types, return_inverse=True)
    return rng.choice(labels, size=len(kinds), replace=True)[inverse]


def label_tokens(ctx: Context) -> np.ndarray:
    return np.concatenate([b.enc["input_ids"][np.arange(len(b.label_pos)), b.label_pos].cpu().numpy()
                           for b in ctx.eval.batches])  # fmt: skip


@register("layerwise_probe")
class LayerwiseProbe(Probe):
    hypotheses = ("H1",)
    needs = ("labels",)
    order = 70

    def run(self, ctx: Context) -> ProbeResult:
        ev, result = ctx.eval, ProbeResult()
        y, groups = ctx.labels, ev.groups
        y_control = control_labels(y, label_tokens(ctx), ctx.rng)
        feats = [ev.resid_p[:, i].double().cpu().numpy() for i in range(ctx.trained.n_layers)]
        feats.append(ev.features.double().cpu().numpy())
        seed = int(ctx.rng.integers(2**31))
        preds, ctrl = [], []
        for x in feats:
            preds.append(CrossFit.fit(x, y, groups, np.random.default_rng(seed)).predict(x))
            ctrl.append(CrossFit.fit(x, y_control, groups, np.random.default_rng(seed)).predict(x))
        skill = np.array([float(r2(y, p)) for p in preds])
        selectivity = skill - np.array([float(r2(y_control, c)) for c in ctrl])
        best = int(np.argmax(skill))
        for where, i in (("neuron_layer", ctx.layer), ("best", best), ("final", len(feats) - 1)):
            result.samples[f"r2.{where}"] = {"kind": "r2", "y": y.tolist(), "x": preds[i].tolist()}
            result.samples[f"control_r2.{where}"] = {
                "kind": "r2",
                "y": y_control.tolist(),
                "x": ctrl[i].tolist(),
            }
        result.metrics["best_layer"] = {"value": float(best), "ci": [float(best), float(best)]}
        result.figures["layers"] = line_figure(
            "Ridge head r² per layer (cross-fitted) and selectivity over the control task",
            [*range(ctx.trained.n_layers), ctx.trained.n_layers],
            {"r²": skill.tolist(), "selectivity": selectivity.tolist()},
            "layer (residual entering it at p; last point: final norm at r)", "r²",
        )  # fmt: skip
        result.notes.append(
            f"5-fold cross-fit by article; control task: a random label per token type at p "
            f"({len(np.unique(label_tokens(ctx)))} types)"
        )
        return result
