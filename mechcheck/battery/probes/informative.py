"""`informative`: does the report carry information about the label at all? (the gate for H1/H2)

- `report.r2`: r² of the clean report with the fixed label (squared Pearson: the information a
  report carries, whatever its offset and scale), against a permutation null (labels shuffled
  over texts, NULL_PERMUTATIONS draws — an r² is never negative, so its CI alone cannot say "no
  information"); the same for every head the battery scores (`<head>.r2`: control heads and
  planted twins, whose verdicts need the same gate); `<head>.spread`: the head's standard deviation
  over the label's (an r² is blind to scale, so a report that is constant up to float rounding can
  still correlate with the label: the verdicts' gate wants a spread of at least MIN_SPREAD);
  `report.skill`: 1 − MSE/Var, the training
  metric;
- `report.r2_live`: r² with the trained model's own neuron (differs from the fixed label only when
  training moved the neuron);
- descriptive baselines: `trained_ridge.r2` (a cross-fitted ridge on the same features — the
  linear ceiling) and `input_only.r2` (ridge on the counts of the text's tokens: how much of the
  label is a function of the bag of tokens).
"""

from __future__ import annotations

import numpy as np

from mechcheck.battery.base import Probe, ProbeResult, register
from mechcheck.battery.context import Context
from mechcheck.battery.heads import CrossFit
from mechcheck.battery.scoring import heads
from mechcheck.stats import r2

NULL_PERMUTATIONS = 999


def token_counts(ctx: Context) -> np.ndarray:
    """Counts of each token id of the bare text (up to the label position). [n, vocab used]"""
    rows, ids = [], []
    for batch in ctx.eval.batches:
        for b, p in enumerate(batch.label_pos.tolist()):
            tokens = batch.enc["input_ids"][b, : p + 1].tolist()
            rows += [batch.texts.start + b] * len(tokens)
            ids += tokens
    _, compact = np.unique(np.asarray(ids), return_inverse=True)
    counts = np.zeros((ctx.eval.n, int(compact.max()) + 1))
    np.add.at(counts, (np.asarray(rows), compact), 1.0)
    return counts


def control(null: list[float], compares: str, direction: str = "greater") -> dict:
    """A descriptive probe's null sample for metric `compares` (`direction`: which tail is extreme)."""
    values = np.asarray([v for v in null if np.isfinite(v)], np.float64)
    nan = float("nan")
    summary = (
        {
            "value": float(values.mean()),
            "ci": [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))],
        }
        if values.size
        else {"value": nan, "ci": [nan, nan]}
    )
    return summary | {"null": values.tolist(), "compares": compares, "direction": direction}


def spread_ratio(label: np.ndarray, head: np.ndarray) -> float:
    """std(head) / std(label) over the texts (0 for a constant label: nothing to report)."""
    label, head = np.asarray(label, np.float64), np.asarray(head, np.float64)
    scale = label.std()
    return float(head.std() / scale) if scale > 0 else 0.0


@register("informative")
class Informative(Probe):
    hypotheses = ("H1", "H2_in", "H2_out")
    needs = ("labels",)
    order = 0

    def run(self, ctx: Context) -> ProbeResult:
        ev, result = ctx.eval, ProbeResult()
        y, report = ctx.labels, ev.report
        result.samples["report.r2"] = {"kind": "r2", "y": y.tolist(), "x": report.tolist()}
        result.samples["report.skill"] = {"kind": "skill", "y": y.tolist(), "x": report.tolist()}
        if not ctx.base_is_trained:
            live = ev.units_p[:, ctx.layer, ctx.neuron.index].double().cpu().numpy()
            result.samples["report.r2_live"] = {"kind": "r2", "y": live.tolist(), "x": report.tolist()}
        features = ev.features.double().cpu().numpy()
        ridge = CrossFit.fit(features, y, ev.groups, ctx.rng).predict(features)
        result.samples["trained_ridge.r2"] = {"kind": "r2", "y": y.tolist(), "x": ridge.tolist()}
        bag = CrossFit.fit(token_counts(ctx), y, ev.groups, ctx.rng)
        result.samples["input_only.r2"] = {
            "kind": "r2",
            "y": y.tolist(),
            "x": bag.predict(token_counts(ctx)).tolist(),
        }
        perms = np.stack([ctx.rng.permutation(len(y)) for _ in range(NULL_PERMUTATIONS)])  # [P, n]
        for name, head in heads(ctx).heads.items():
            key = "report.r2" if name == "report" else f"{name}.r2"
            result.samples[key] = {"kind": "r2", "y": head.label.tolist(), "x": head.clean.tolist()}
            shuffled = r2(head.label[perms], np.broadcast_to(head.clean, perms.shape))  # [P]
            result.controls[f"{key}.permuted_labels"] = control(shuffled.tolist(), key)
            spread = spread_ratio(head.label, head.clean)
            result.metrics[key.removesuffix(".r2") + ".spread"] = {"value": spread, "ci": [spread, spread]}
        result.notes.append(
            f"permutation null: {NULL_PERMUTATIONS} shuffles of the labels over the texts; ridge heads "
            "cross-fitted in 5 folds by article"
        )
        return result
