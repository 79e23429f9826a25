"""One reporter model and the training of one cell: reporter R reports the neuron of label model O.

`Reporter` holds what every cell of one reporter shares, computed once from its ORIGINAL weights:
the length-sorted chunks of the shared texts in its own tokenisation, the final-norm features of
the `frozen` condition (the on-disk cache of `mechcheck.train.frozen_fit`, keyed by weights and
texts, so a cell that reports the other model's neuron reuses the features of the cell that reports
its own — and of any earlier `mechcheck run` on the same texts), the residual leaving its layer for
`after_target`, and the drift reference.

`after_target` trains the reporter's layers after ITS OWN neuron's layer (the experiment names one
neuron per model, at similar relative depths), whichever model's neuron it reports: a reporter has
the same trainable parameters in both cells of its row, so self and other differ only in the labels.

`train_cell` wires the cell to the one training loop (`mechcheck.train.loop`) with the fixed labels of
the label model, keeps the better of ridge and SGD for `frozen` as the trainer does, and writes a
checkpoint whose run.json names the label model (`label_model`): the battery refuses it when that
is not the reporter, since the reported neuron is not inside the reporter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from mechcheck.checkpoint import params_digest, write_checkpoint
from mechcheck.config import to_dict
from mechcheck.experiment import TrainConfig
from mechcheck.subject import Site, Subject
from mechcheck.targets import SPLITS, TargetSet, make_chunks
from mechcheck.train.bench import restore_weights
from mechcheck.train.conditions import CONDITIONS
from mechcheck.train.frozen_fit import cached_features
from mechcheck.train.loop import Task, train_loop
from mechcheck.train.lr_sweep import sweep_lr
from mechcheck.train.monitors import Drift, Evaluator, predict_split, regression_metrics
from mechcheck.train.record import fold_readout
from mechcheck.train.run import init_readout, ridge_or_sgd, train_eval_chunks
from mechcheck.train.sources import FINAL_NORM, FeatureSource, ResumeSource, Source, cache_sites
from mechcheck.train.state import StateStore


class Reporter:
    def __init__(
        self,
        subject: Subject,
        layer: int,
        texts: dict[str, list[str]],
        position: str,
        cfg: TrainConfig,
        max_tokens: int,
        cache_dir: Path | None,
        progress: bool = False,
    ):
        subject.anatomy.check_neuron(layer)
        self.subject, self.layer, self.position, self.cache_dir = subject, layer, position, cache_dir
        self.max_tokens, self.progress, self.batch_size = max_tokens, progress, cfg.batch_size
        self.drift_texts = texts["val"][: cfg.drift_texts]
        self.chunks = {
            s: make_chunks(subject, texts[s], cfg.batch_size, max_tokens, position) for s in SPLITS
        }
        self.original = {k: v.detach().clone() for k, v in subject.model.state_dict().items()}
        self._features: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
        self._resid: dict[str, list[torch.Tensor]] | None = None
        self._drift: Drift | None = None

    def features(self, targets: TargetSet) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Final-norm features per split (any label set over the shared texts gives the same key)."""
        if self._features is None:
            self.restore()
            self._features = cached_features(
                self.subject, targets, self.chunks, self.cache_dir, self.progress
            )
        return self._features

    def resid(self) -> dict[str, list[torch.Tensor]]:
        """The original residual leaving the reporter's layer, per chunk of each split."""
        if self._resid is None:
            self.restore()
            site = Site("resid_post", self.layer)
            self._resid = {
                s: cache_sites(self.subject, self.chunks[s], site, self.position, self.progress, f"resid {s}")
                for s in SPLITS
            }
        return self._resid

    def drift(self) -> Drift | None:
        if self._drift is None and self.drift_texts:
            self.restore()
            self._drift = Drift(self.subject, self.drift_texts, self.max_tokens, self.batch_size)
        return self._drift

    def source(self, condition: str, targets: TargetSet) -> Source:
        if CONDITIONS.get(condition).source == "features":
            return FeatureSource(self.chunks, self.features(targets)[0])
        return ResumeSource(self.subject, self.layer, self.position, self.chunks, self.resid(), FINAL_NORM)

    def restore(self) -> None:
        restore_weights(self.subject.model, self.original)


def train_cell(
    reporter: Reporter,
    targets: TargetSet,
    condition: str,
    seed: int,
    cfg: TrainConfig,
    out: Path,
    provenance: dict[str, Any],
    config_hash: str,
    progress: bool = False,
) -> dict[str, Any]:
    """Train the reporter on `targets` (fixed labels of the label model) and write the checkpoint; with
    `train.lr_grid`, a trainable condition keeps the best rate on validation under `train.drift_cap`."""
    start = time.perf_counter()
    subject, chunks = reporter.subject, reporter.chunks
    reporter.restore()
    trainable = CONDITIONS.get(condition).trainable(subject, reporter.layer)
    store = StateStore(out.with_name(out.name + ".state"))

    def train_one(run_cfg: TrainConfig, one: StateStore, again: bool):
        reporter.restore()
        readout = init_readout(subject.d_model, seed, frozen=False).to(subject.device)
        source = reporter.source(condition, targets)
        drift = reporter.drift() if trainable else None
        for name, p in subject.model.named_parameters():
            p.requires_grad_(name in trainable)
        torch.manual_seed(seed)
        train_labels = targets.standardise(targets.labels("train"))

        def batch_loss(i: int) -> torch.Tensor:
            x, _ = source.forward("train", i, grad=True)
            return readout.loss(x, train_labels[chunks["train"][i].rows].to(x.device))

        model_params = {f"model.{n}": p for n, p in subject.model.named_parameters() if n in trainable}
        groups = {
            "model": (model_params, run_cfg.lr),
            "readout": (dict(readout.named_parameters(prefix="readout")), run_cfg.readout_lr),
        }
        eval_ids = train_eval_chunks(len(chunks["train"]), reporter.batch_size, run_cfg.eval_train_texts)
        evaluator = Evaluator(
            source, readout, targets, False, eval_ids, drift, subject if trainable else None
        )
        task = Task(groups, len(chunks["train"]), batch_loss, evaluator, "val_mse")
        before = predict_split(source, readout, targets, "test")[0]
        result = train_loop(task, run_cfg, seed, one, config_hash, progress, resume=again)
        return (readout, source, drift, before), result, task.named()

    frozen = {name for name, _ in subject.model.named_parameters()} - trainable
    frozen_digest = params_digest(subject.model, frozen)
    lr_choice = None
    if cfg.lr_grid and trainable:
        (readout, source, drift, before), result, lr_choice = sweep_lr(cfg, "val_mse", train_one, store, True)
    else:
        (readout, source, drift, before), result, _ = train_one(cfg, store, True)
    frozen_fit = None
    if not trainable:  # frozen: ridge on the cached features replaces the SGD head when better on val
        frozen_fit = ridge_or_sgd(readout, *reporter.features(targets), targets, cfg, result)
    folded = fold_readout(readout, targets)
    after = predict_split(source, folded, targets, "test", standardised=False)[0]
    if params_digest(subject.model, frozen) != frozen_digest:
        raise RuntimeError("a parameter outside the condition's trainable set changed during training")
    predictions = {
        "split": "test", "texts": list(targets.test_texts), "target": "labels",
        "labels": [float(v) for v in targets.test_labels],
        "predictions": [float(v) for v in after.predictions],
        "predictions_before": [float(v) for v in before.predictions],
    }  # fmt: skip
    metrics = {
        "test": regression_metrics(predictions["predictions"], predictions["labels"]),
        "test_before": regression_metrics(predictions["predictions_before"], predictions["labels"]),
        "best_step": result.best_step, "steps": result.steps, "stopped_early": result.stopped_early,
        **_drift(drift, subject if trainable else None),
    }  # fmt: skip
    if lr_choice is not None:
        metrics["trained_within_drift_cap"] = lr_choice["trained_within_cap"]
    sizes = {n: p.numel() for n, p in subject.model.named_parameters()}
    run = {
        **provenance, "condition": condition, "target_mode": "fixed", "seed": seed,
        "readout": {"kind": folded.kind, "frozen": False}, "config_hash": config_hash,
        "train_config": to_dict(cfg), "lr_choice": lr_choice, "reporter_layer": reporter.layer,
        "parameters": {"trainable": sum(sizes[n] for n in trainable), "total": sum(sizes.values())},
        "frozen_params_sha256": frozen_digest, "curves": result.curves, "metrics": metrics,
        "frozen_fit": frozen_fit, "resumed_from_step": result.resumed_from,
        "timing": {"train_loop": result.seconds, "run": time.perf_counter() - start},
    }  # fmt: skip
    model = subject.model if trainable else None
    write_checkpoint(out, run, folded.cpu(), model=model, predictions=predictions)
    store.remove()
    reporter.restore()
    return run


def _drift(drift: Drift | None, subject: Subject | None) -> dict[str, Any]:
    if subject is None:
        return {"kl_after": 0.0, "drift_note": "model frozen: weights unchanged (hash-checked), drift is 0"}
    if drift is None:
        return {"kl_after": None, "drift_note": "drift_texts = 0: not measured"}
    lm_loss, kl = drift.measure(subject)
    return {"lm_loss_before": drift.lm_loss_before, "lm_loss_after": lm_loss, "kl_after": kl}
