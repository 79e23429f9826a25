"""Layerwise ridge probes: where is the label linearly decodable, before and after training?

At every layer, a ridge probe (`sklearn` `RidgeCV` on standardised features) maps the residual
after that layer, at the report position, to the label; skill is R² of cross-validated
predictions (5 folds, texts kept together). Control task (Hewitt & Liang): each token type at
the report position gets a random label drawn from the real labels, and the same probe is fitted;
selectivity = skill − control skill. Run on the base model and on the trained model (the same
cached passes when the checkpoint has no model/).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mechcheck.battery.base import Probe, ProbeResult, line_figure, register
from mechcheck.battery.context import Context
from mechcheck.battery.stats import r2, r2_gap_metric, r2_metric

ALPHAS = np.logspace(-2, 5, 15)
FOLDS = 5


def cv_predict(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, model: BaseEstimator | None = None
) -> np.ndarray:
    """Cross-validated predictions (default: ridge on standardised features), folds by text."""
    shuffled = np.random.default_rng(seed).permutation(np.unique(groups))
    fold_of = {g: i % FOLDS for i, g in enumerate(shuffled)}
    folds = np.array([fold_of[g] for g in groups])
    model = model if model is not None else make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS))
    return cross_val_predict(model, x, y, groups=folds, cv=GroupKFold(n_splits=min(FOLDS, len(shuffled))))


def control_labels(labels: np.ndarray, types: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hewitt & Liang control task: one random label (drawn from the real ones) per token type."""
    kinds, inverse = np.unique(types, return_inverse=True)
    return rng.choice(labels, size=len(kinds), replace=True)[inverse]


@register("layerwise_probe")
class LayerwiseProbe(Probe):
    hypotheses = ("H1",)
    needs = ("labels",)
    order = 70

    def run(self, ctx: Context) -> ProbeResult:
        opts, result = ctx.options, ProbeResult()
        y, groups = ctx.labels, ctx.eval.text_of
        y_control = control_labels(y, ctx.eval.token_of, ctx.rng)
        fold_seed = ctx.seed()
        models = (
            {"trained": ctx.clean} if ctx.base_is_trained else {"base": ctx.base_clean, "trained": ctx.clean}
        )
        series: dict[str, dict] = {}
        for name, passes in models.items():
            feats = np.concatenate([c.layers.double().cpu().numpy() for c in passes])  # [rows, layers, d]
            preds = [cv_predict(feats[:, i], y, groups, fold_seed) for i in range(feats.shape[1])]
            ctrl = [cv_predict(feats[:, i], y_control, groups, fold_seed) for i in range(feats.shape[1])]
            skill = np.array([r2(p, y) for p in preds])
            gap = skill - np.array([r2(p, y_control) for p in ctrl])
            best = int(np.argmax(skill))
            stat = dict(n_resamples=opts.n_bootstrap, ci=opts.ci, groups=ctx.groups)
            for where, i in (("neuron_layer", ctx.layer), ("best", best), ("last", feats.shape[1] - 1)):
                result.metrics[f"{name}.skill.{where}"] = r2_metric(preds[i], y, seed=ctx.seed(), **stat)
                result.metrics[f"{name}.selectivity.{where}"] = r2_gap_metric(
                    preds[i], y, ctrl[i], y_control, seed=ctx.seed(), **stat
                )
                result.controls[f"{name}.control_task.{where}"] = r2_metric(
                    ctrl[i], y_control, seed=ctx.seed(), **stat
                )
            result.metrics[f"{name}.best_layer"] = {"value": float(best), "ci": [float(best), float(best)]}
            series[f"{name} skill"] = skill.tolist()
            series[f"{name} selectivity"] = gap.tolist()
        if ctx.base_is_trained:
            result.notes.append("the checkpoint has no model/: base and trained are the same model")
        result.figures["layers"] = line_figure(
            "Ridge probe skill per layer (cross-validated R²) and selectivity",
            list(range(ctx.trained.n_layers)),
            series,
            "layer (resid_post)",
            "R²",
        )
        result.notes.append(
            f"{FOLDS}-fold CV by text; control task: a random label per token type at the report position "
            f"({len(np.unique(ctx.eval.token_of))} types)."
        )
        return result
