"""Baselines: did the report learn anything a trivial predictor could not?

- `report.skill`: the trained report's R² against the fixed labels (+ a permutation test);
- `input_only.skill`: bag-of-tokens ridge — counts of the tokens up to the report position — to
  the label, cross-validated;
- `untrained_readout.skill`: random readout directions of the trained readout's norm on the same
  features, each given the best affine calibration by cross-validation (a generous baseline);
- `shuffled_labels.skill`: ridge on the trained model's readout features fitted to permuted
  labels and scored, cross-validated, against those permuted labels (what fitting noise gives);
- `trained_ridge.skill`: a fresh cross-validated ridge on the same features (the linear ceiling).
The report counts as learned only if it beats every baseline (see `mechcheck.verdict`).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.linear_model import LinearRegression

from mechcheck.battery.base import Probe, ProbeResult, bar_figure, register
from mechcheck.battery.context import Context
from mechcheck.battery.probing import cv_predict
from mechcheck.battery.stats import correlation_pvalue, null_control, r2, r2_metric

N_SHUFFLES = 5


def token_counts(ctx: Context) -> sparse.csr_matrix:
    """Per label row: counts of each token id up to and including its report position."""
    rows, cols = [], []
    row = 0
    for batch in ctx.eval.batches:
        enc = batch.label_enc
        ids, mask = enc["input_ids"].cpu().numpy(), enc["attention_mask"].cpu().numpy().astype(bool)
        for text_ids, text_mask in zip(ids, mask, strict=True):
            real = text_ids[text_mask]
            ends = range(1, len(real) + 1) if ctx.position == "all" else [len(real)]
            for end in ends:
                rows += [row] * end
                cols += real[:end].tolist()
                row += 1
    _, compact = np.unique(np.asarray(cols), return_inverse=True)
    data = np.ones(len(cols), dtype=np.float64)
    return sparse.csr_matrix((data, (np.asarray(rows), compact)), shape=(row, int(compact.max()) + 1))


def _affine_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    return cv_predict(x[:, None], y, groups, seed, model=LinearRegression())


@register("baselines")
class Baselines(Probe):
    hypotheses = ("H1", "H2_in", "H2_out")
    needs = ("labels",)
    order = 0

    def run(self, ctx: Context) -> ProbeResult:
        opts, result = ctx.options, ProbeResult()
        y, groups, report = ctx.labels, ctx.eval.text_of, ctx.clean_report
        stat = dict(n_resamples=opts.n_bootstrap, ci=opts.ci, groups=ctx.groups)
        skill = r2_metric(report, y, seed=ctx.seed(), **stat)
        skill["p_permutation"] = correlation_pvalue(report, y, ctx.seed())
        result.metrics["report.skill"] = skill
        if not ctx.base_is_trained:
            live = ctx.eval.columns_after[:, 0]
            result.metrics["report.skill_vs_trained_neuron"] = r2_metric(
                report, live, seed=ctx.seed(), **stat
            )
        counts = token_counts(ctx).toarray()
        result.controls["input_only.skill"] = r2_metric(
            cv_predict(counts, y, groups, ctx.seed()), y, seed=ctx.seed(), **stat
        )
        feats = np.concatenate([c.features.double().cpu().numpy() for c in ctx.clean])
        result.metrics["trained_ridge.skill"] = r2_metric(
            cv_predict(feats, y, groups, ctx.seed()), y, seed=ctx.seed(), **stat
        )
        untrained = []
        for _ in range(opts.n_random):
            w = ctx.rng.standard_normal(feats.shape[1])
            untrained.append(float(r2(_affine_cv(feats @ w, y, groups, ctx.seed()), y)))
        result.controls["untrained_readout.skill"] = null_control(
            skill["value"], untrained, "report.skill", opts.ci
        )
        shuffled = []
        for _ in range(N_SHUFFLES):
            perm = ctx.rng.permutation(y)
            shuffled.append(float(r2(cv_predict(feats, perm, groups, ctx.seed()), perm)))
        result.controls["shuffled_labels.skill"] = null_control(
            skill["value"], shuffled, "report.skill", opts.ci
        )
        result.figures["skills"] = bar_figure(
            "The report's skill against its baselines (R² vs the fixed labels)",
            {"report": skill, "trained ridge": result.metrics["trained_ridge.skill"],
             "input only": result.controls["input_only.skill"],
             "untrained readout": {"value": result.controls["untrained_readout.skill"]["value"],
                                   "ci": result.controls["untrained_readout.skill"]["ci"]},
             "shuffled labels": {"value": result.controls["shuffled_labels.skill"]["value"],
                                 "ci": result.controls["shuffled_labels.skill"]["ci"]}},
            "R²",
        )  # fmt: skip
        result.notes.append(
            f"input only: {counts.shape[1]} distinct tokens; untrained readout: {opts.n_random} random "
            f"directions, affine-calibrated by CV; shuffled labels: {N_SHUFFLES} permutations."
        )
        return result
