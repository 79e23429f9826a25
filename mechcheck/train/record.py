"""Provenance and measurements that go into a checkpoint's run.json and predictions.json."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mechcheck.experiment import Experiment, config_dict
from mechcheck.readout import LinearReadout
from mechcheck.records import column
from mechcheck.stages import digest
from mechcheck.stats import digit_metrics, fit, regression_metrics, value_stats
from mechcheck.targets import TargetSet
from mechcheck.train.monitors import COLLAPSE_RATIO, SplitPredictions

UNCHANGED_TOLERANCE = 1e-4  # max |label diff| / max(1, max |label|) for conditions that keep the neuron fixed


def unchanged_tolerance(labels: torch.Tensor) -> float:
    """The largest label difference a frozen prefix may show: batches composed differently (the labels
    come from one pass over every text, the check from the test split alone) round differently,
    ~1e-7 of the activation's scale; a trained prefix moves it by far more."""
    return UNCHANGED_TOLERANCE * max(1.0, float(labels.abs().max()))


def training_config(experiment: Experiment) -> dict[str, Any]:
    """The parts of the experiment that determine a training run (not the seed list or the battery)."""
    config = config_dict(experiment)
    config["train"].pop("seeds", None)
    for key in ("battery", "name", "reference", "variant", "cross"):  # [cross]: the report's statistics
        config.pop(key, None)
    return config


def config_hash(experiment: Experiment, condition: str, target_mode: str, seed: int) -> str:
    """The digest (`stages.digest`) of what determines one training run."""
    payload = {"config": training_config(experiment), "condition": condition, "target_mode": target_mode}
    return digest(payload | {"seed": seed})


def fold_readout(readout: LinearReadout, targets: TargetSet) -> LinearReadout:
    """A readout in the neuron's own units: std·(w·x + b) + mean (per output for several neurons)."""
    d_model, device = readout.weight.shape[-1], readout.weight.device
    folded = LinearReadout(d_model, readout.n_outputs, readout.site).to(device)
    std, mean = targets.std, targets.mean
    if isinstance(std, torch.Tensor):
        std, mean = std.to(readout.weight.device), mean.to(readout.weight.device)
    with torch.no_grad():
        folded.weight.copy_(readout.weight * (std[:, None] if isinstance(std, torch.Tensor) else std))
        folded.bias.copy_(readout.bias * std + mean)
    return folded


def _floats(values: torch.Tensor | None) -> list[float] | list[list[float]] | None:
    """Plain floats: a list for one neuron, rows of k values for several."""
    return None if values is None else values.float().tolist()


def predictions_json(
    targets: TargetSet,
    before: SplitPredictions,
    after: SplitPredictions,
    live: torch.Tensor,
    target_key: str,
    classes: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Test-split predictions in the neuron's units (token readouts: Σ p_k · class mean); token
    readouts add the expected class index (`predictions_digit`), the arg-max class and the true
    class of each label (`labels_digit`, from the fitted edges)."""
    out: dict[str, Any] = {"split": "test", "texts": list(targets.test_texts), "target": target_key}
    if targets.groups.get("test"):
        out["groups"] = list(targets.groups["test"])  # each text's group (article): for grouped bootstraps
    if targets.k > 1:
        out["neurons"] = [n.as_dict() for n in targets.neurons]  # column order of every [n, k] array
    if targets.position == "all":
        out["text_index"] = [int(i) for i in targets.test_index]
    out["labels"] = _floats(targets.test_labels)
    out["live_labels"] = _floats(live)
    out["predictions"] = _floats(after.predictions)
    out["predictions_before"] = _floats(before.predictions)
    if classes is not None:
        out["labels_digit"] = [int(c) for c in classes]
        out["predictions_digit"] = _floats(after.digits)
        out["predictions_argmax"] = [int(c) for c in after.argmax]
        out["predictions_digit_before"] = _floats(before.digits)
        out["predictions_argmax_before"] = [int(c) for c in before.argmax]
    return out


def metrics_from_predictions(predictions: dict[str, Any], moves_neuron: bool) -> dict[str, Any]:
    """The metrics recomputed from predictions.json alone (the test checks exactly this)."""
    p = predictions
    if "neurons" in p:
        return per_neuron_metrics(p, moves_neuron)
    target = p[p["target"]]
    test = regression_metrics(p["predictions"], target)
    metrics: dict[str, Any] = {
        "target": p["target"],
        "test": test,
        "test_before": regression_metrics(p["predictions_before"], p["labels"]),
        "test_vs_fixed": regression_metrics(p["predictions"], p["labels"]),
        "test_vs_live": regression_metrics(p["predictions"], p["live_labels"]),
        "neuron_before": value_stats(p["labels"]),
        "neuron_after": value_stats(p["live_labels"]),
        "collapsed": test["pred_sd_ratio"] is None or test["pred_sd_ratio"] < COLLAPSE_RATIO,
    }
    if "labels_digit" in p:  # token readouts: class-space skill, after and before training
        metrics["digit"] = digit_metrics(p["predictions_digit"], p["predictions_argmax"], p["labels_digit"])
        before = (p["predictions_digit_before"], p["predictions_argmax_before"], p["labels_digit"])
        metrics["digit_before"] = digit_metrics(*before)
    diff = np.asarray(p["labels"], dtype=np.float64) - np.asarray(p["live_labels"], dtype=np.float64)
    if moves_neuron:
        metrics["stale_labels"] = {"mse": float(np.mean(diff**2)), "max_abs_diff": float(np.abs(diff).max())}
    else:
        metrics["neuron_unchanged_maxdiff"] = float(np.abs(diff).max())
    return metrics


def per_neuron_metrics(predictions: dict[str, Any], moves_neuron: bool) -> dict[str, Any]:
    """Several neurons: each neuron's metrics as a one-neuron run reports them, plus its test skill's
    bootstrap CI over texts (seeded, as the report computes it), and a summary over neurons."""
    per = []
    for i, neuron in enumerate(predictions["neurons"]):
        p = column(predictions, i)
        m = metrics_from_predictions(p, moves_neuron)
        index = np.asarray(p.get("text_index", range(len(p["labels"]))))
        got = fit(np.asarray(p[p["target"]], np.float64), np.asarray(p["predictions"], np.float64), index)
        m["test_skill_ci"] = None if got is None or got.ci is None else [float(c) for c in got.ci]
        per.append({"neuron": neuron, **m})
    out: dict[str, Any] = {"target": predictions["target"], "neurons": predictions["neurons"]}
    out["mean_test_skill"] = float(np.mean([m["test"]["skill"] for m in per]))
    out["mean_test_skill_before"] = float(np.mean([m["test_before"]["skill"] for m in per]))
    out["collapsed"] = any(m["collapsed"] for m in per)
    if moves_neuron:
        out["stale_labels"] = {"max_abs_diff": max(m["stale_labels"]["max_abs_diff"] for m in per)}
    else:
        out["neuron_unchanged_maxdiff"] = max(m["neuron_unchanged_maxdiff"] for m in per)
    return out | {"per_neuron": per}
