"""One training cell: a condition × target mode × seed on a bench, through the one loop.

`build_task` wires a condition to the loop: it freezes every parameter the condition does not
train, picks where the report is computed from, and defines the loss for the label regime
(`fixed`: the original model's labels; `live`: the current model's neuron read in the same
forward pass, gradient flowing through it; `live_detached`: the same value, detached).
The loss is the readout's own `loss(x, labels)`: MSE on standardised labels for the linear head,
cross-entropy on the label's class token through the LM head for token readouts
(`mechcheck.train.readouts`). `train_run` runs the loop and measures the trained model.

A run trains on the bench's own target set, or on `targets` of another model's neuron over the
bench's texts (an experiment's `[labels]`, `mechcheck.train.labels`, made by the pipeline's labels
stage; `[cross]` crosses two models into such runs and `mechcheck.cross` renders their matrix): the
same loop, loss, frozen-weights check, drift record and checkpoint. The other model is never
trained, so its live labels are its fixed ones, and only conditions that keep the bench's prefix (up
to `bench.layer`) frozen apply.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mechcheck.checkpoint import params_digest, write_checkpoint
from mechcheck.config import to_dict
from mechcheck.errors import UserError
from mechcheck.experiment import TrainConfig
from mechcheck.readout import LinearReadout, Readout
from mechcheck.run_record import RunRecord
from mechcheck.stats import fit_metrics
from mechcheck.targets import SPLITS, TargetSet, compute_labels
from mechcheck.token_readout import TokenReadout
from mechcheck.train.bench import Bench
from mechcheck.train.conditions import CONDITIONS, Condition, check_pair
from mechcheck.train.frozen_fit import fit_ridge
from mechcheck.train.loop import LoopResult, Task, train_loop
from mechcheck.train.lr_sweep import sweep_lr
from mechcheck.train.monitors import Evaluator, SplitPredictions, predict_split
from mechcheck.train.readouts import READOUT_INIT_STD, is_token, make_readout, readout_record
from mechcheck.train.record import (
    fold_readout,
    metrics_from_predictions,
    predictions_json,
    unchanged_tolerance,
)
from mechcheck.train.sources import (
    LOGITS,
    FeatureSource,
    FullSource,
    ResumeSource,
    Source,
    head_logits,
)
from mechcheck.train.state import StateStore


@dataclass
class Setup:
    """A run wired up: the task for the loop plus what the measurements need. `standardised`: the
    linear head trains on standardised labels (folded afterwards; `train.standardise = false` trains
    on raw values, as the study did); token readouts classify labels in the neuron's own units.
    `initial`: the original model's cached features as a source, to score step 0 without a pass.
    `own_labels`: `targets` are the bench's own (else another model's neuron, cross-prediction)."""

    task: Task
    source: Source
    readout: Readout
    evaluator: Evaluator
    trainable: set[str]
    frozen_digest: str
    targets: TargetSet
    standardised: bool = True
    initial: Source | None = None
    own_labels: bool = True


def make_source(bench: Bench, condition: Condition, readout: Readout) -> Source:
    """The readout's input (its site) for each chunk; prompted chunks cannot read the raw-text neuron."""
    t, site = bench.targets, readout.site
    if condition.source == "features":
        return FeatureSource(bench.chunks, bench.features()[0])
    if condition.source == "resume":
        return ResumeSource(bench.subject, bench.layer, t.position, bench.chunks, bench.resid(), site)
    return FullSource(
        bench.subject, t.neuron_spec, t.position, bench.chunks, site, read_neuron=not bench.prompted
    )


def initial_source(bench: Bench, readout: Readout) -> Source | None:
    """The original model's cached readout-site features, when the bench has them without a pass."""
    if not bench.has_features():
        return None
    subject = bench.subject
    transform = (lambda x: head_logits(subject, x.to(subject.device))) if readout.site == LOGITS else None
    return FeatureSource(bench.chunks, bench.features()[0], transform)


def train_eval_chunks(n_chunks: int, batch_size: int, texts: int) -> list[int]:
    """Evenly spaced training chunks (they are length-sorted) covering about `texts` texts."""
    k = max(1, min(n_chunks, math.ceil(texts / batch_size)))
    return sorted({round(i * (n_chunks - 1) / max(1, k - 1)) for i in range(k)})


def build_task(
    bench: Bench, condition: Condition, mode: str, seed: int, cfg: TrainConfig,
    targets: TargetSet | None = None,
) -> Setup:  # fmt: skip
    """Freeze what the condition keeps, init the readout, define the regime's loss and the evaluation;
    `targets`: another model's labels over the bench's texts instead of the bench's own."""
    check_pair(condition, mode)
    own_labels = targets is None
    targets = bench.targets if targets is None else check_other_targets(bench, condition, targets)
    subject = bench.subject
    bench.restore()
    trainable = condition.trainable(subject, bench.layer)
    if cfg.readout_frozen and not trainable:
        raise UserError(f"condition {condition.name!r} with readout_frozen = true would train nothing")
    readout = make_readout(subject, targets, cfg, seed, bench.prompted)
    source = make_source(bench, condition, readout)  # builds the original model's caches first, if needed
    for name, p in subject.model.named_parameters():
        p.requires_grad_(name in trainable)
    frozen_names = {name for name, _ in subject.model.named_parameters()} - trainable
    frozen_digest = params_digest(subject.model, frozen_names)
    torch.manual_seed(seed)
    standardised = isinstance(readout, LinearReadout) and cfg.standardise
    units = targets.standardise if standardised else (lambda y: y)
    train_labels = units(targets.labels("train"))  # the raw texts' labels, whatever the model reads

    def batch_loss(i: int) -> torch.Tensor:
        x, live = source.forward("train", i, grad=True)
        if mode == "fixed":
            y = train_labels[bench.chunks["train"][i].rows]
        else:
            y = units(live if mode == "live" else live.detach())
        return readout.loss(x, y.to(x.device))

    model_params = {f"model.{n}": p for n, p in subject.model.named_parameters() if n in trainable}
    readout_params = {} if cfg.readout_frozen else {f"readout.{n}": p for n, p in readout.named_parameters()}
    groups = {"model": (model_params, cfg.lr), "readout": (readout_params, cfg.readout_lr)}
    n_train = len(bench.chunks["train"])
    eval_ids = train_eval_chunks(n_train, bench.batch_size, cfg.eval_train_texts)
    drift_subject = subject if trainable else None
    live_neuron = _raw_live_neuron(bench) if bench.prompted and condition.moves_neuron else None
    evaluator = Evaluator(
        source, readout, targets, mode != "fixed", eval_ids, bench.drift, drift_subject,
        standardised=standardised, live_neuron=live_neuron,
    )  # fmt: skip
    initial = initial_source(bench, readout)
    first = None
    if initial is not None:  # step 0: the original model, so its cached features, labels and no drift
        first = Evaluator(
            initial, readout, targets, False, eval_ids, bench.drift, None, standardised=standardised,
            initial_live=mode != "fixed",
        )  # fmt: skip
    monitor = "val_ce" if is_token(cfg.readout) else "val_mse"
    task = Task(groups, n_train, batch_loss, evaluator, monitor, first)
    return Setup(
        task, source, readout, evaluator, trainable, frozen_digest, targets, standardised, initial, own_labels
    )


def check_other_targets(bench: Bench, condition: Condition, targets: TargetSet) -> TargetSet:
    """Another model's target set for this bench: the same texts, position and token limit, a condition
    that keeps the bench's prefix frozen (a live label would be the bench's own neuron), a linear head."""
    if condition.moves_neuron or bench.prompted:
        what = "a prompted readout" if bench.prompted else f"condition {condition.name!r}"
        raise UserError(
            f"{what} cannot train on another model's labels: only conditions that keep the prefix up to the "
            "bench's layer frozen apply (a live label would be the model's own neuron), with a linear head"
        )
    own = bench.targets
    same = all(tuple(targets.texts(s)) == tuple(own.texts(s)) for s in SPLITS)
    if not same or (targets.position, targets.max_tokens) != (own.position, own.max_tokens):
        raise ValueError("another model's target set must label the bench's texts at its position and limit")
    return targets


def _raw_live_neuron(bench: Bench):
    """The current model's neuron on the RAW val texts (what the labels are defined on)."""
    t = bench.targets

    def live() -> torch.Tensor:
        batch = t.card["label_batch_size"]
        return compute_labels(bench.subject, t.val_texts, t.neuron, t.position, t.max_tokens, batch)[0]

    return live


def ridge_or_sgd(
    readout: LinearReadout, features: dict[str, torch.Tensor], cache_info: dict[str, Any],
    targets: TargetSet, cfg: TrainConfig, result: LoopResult, standardised: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Fit closed-form ridge on the cached features; it replaces the SGD-trained `readout` (in place)
    when it beats it on val. Returns the record of both fits. `standardised`: the readout predicts
    standardised labels (else raw values, `train.standardise = false`)."""
    sgd = {split: _split_metrics(readout, features, targets, split, standardised) for split in SPLITS}
    sgd |= {"best_step": result.best_step, "steps": result.steps, "seconds": result.seconds}
    ridge, ridge_info = fit_ridge(features, targets, cfg.ridge_alpha)
    if not standardised:
        ridge = fold_readout(ridge, targets)
    chosen = "ridge" if ridge_info["val"]["mse"] < sgd["val"]["mse"] else "sgd"
    if chosen == "ridge":
        readout.load_state_dict(ridge.state_dict())
    return {"ridge": ridge_info, "sgd": sgd, "chosen": chosen, "chosen_by": "val mse", "features": cache_info}


def _split_metrics(readout: LinearReadout, features: dict, targets, split: str, standardised: bool) -> dict:
    with torch.no_grad():
        pred = readout(features[split])
        pred = targets.destandardise(pred) if standardised else pred
    return fit_metrics(pred, targets.labels(split))


def train_run(
    bench: Bench,
    condition_name: str,
    mode: str,
    seed: int,
    cfg: TrainConfig,
    out: Path,
    provenance: dict[str, Any],
    config_hash: str = "",
    resume: bool = False,
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
    targets: TargetSet | None = None,
) -> RunRecord:
    """Train one run and write its checkpoint to `out`; returns its run.json record. With `train.lr_grid`, a
    condition that trains model weights trains once per rate and keeps the best on validation under
    `train.drift_cap` (`mechcheck.train.lr_sweep`). `targets`: another model's neuron over the bench's
    texts (cross-prediction) instead of the bench's own target set; run.json then has no
    `weights_sha256` (that neuron is not in the base model: the caller records its label model's)."""
    start = time.perf_counter()
    condition = CONDITIONS.get(condition_name)
    store = StateStore(out.with_name(out.name + ".state"))

    def train_one(run_cfg: TrainConfig, one: StateStore, again: bool):
        setup = build_task(bench, condition, mode, seed, run_cfg, targets)
        source = setup.initial or setup.source  # the untrained model: its cached features when there are
        before = predict_split(source, setup.readout, setup.targets, "test", standardised=setup.standardised)
        result = train_loop(setup.task, run_cfg, seed, one, config_hash, progress, on_step, again)
        return (setup, before[0]), result, setup.task.named()

    lr_choice = None
    if cfg.lr_grid and condition.trainable(bench.subject, bench.layer):
        monitor = "val_ce" if is_token(cfg.readout) else "val_mse"
        (setup, before), result, lr_choice = sweep_lr(cfg, monitor, train_one, store, resume)
    else:
        (setup, before), result, _ = train_one(cfg, store, resume)
    frozen_fit = None
    if condition.source == "features":
        frozen_fit = ridge_or_sgd(
            setup.readout, *bench.features(), setup.targets, cfg, result, setup.standardised
        )
    readout, predictions, metrics = measure(bench, setup, condition, mode, before, result)
    metrics |= {"best_step": result.best_step, "steps": result.steps, "stopped_early": result.stopped_early}
    if lr_choice is not None:
        metrics["trained_within_drift_cap"] = lr_choice["trained_within_cap"]
    sizes = {n: p.numel() for n, p in bench.subject.model.named_parameters()}
    run = {
        **provenance,
        "condition": condition.name,
        "target_mode": mode,
        "readout": {
            "kind": readout.kind,
            "frozen": cfg.readout_frozen,
            **_readout_init(setup),
            **readout_record(readout),
        },
        "seed": seed,
        "config_hash": config_hash,
        "train_config": to_dict(cfg),
        "lr_choice": lr_choice,
        **({"weights_sha256": bench.base_weights_sha256} if setup.own_labels else {}),
        "parameters": {"trainable": sum(sizes[n] for n in setup.trainable), "total": sum(sizes.values())},
        "frozen_params_sha256": setup.frozen_digest,
        "curves": result.curves,
        "metrics": metrics,
        "frozen_fit": frozen_fit,
        "resumed_from_step": result.resumed_from,
        **_prompt_tokens(bench),
        "timing": {"train_loop": result.seconds, "run": time.perf_counter() - start, **bench.seconds},
    }
    record = RunRecord.from_fields(run)
    model = bench.subject.model if setup.trainable else None
    write_checkpoint(out, record, readout.cpu(), model=model, predictions=predictions)
    store.remove()
    bench.restore()
    return record


def _prompt_tokens(bench: Bench) -> dict[str, Any]:
    """Token readouts: the truncation that keeps every prompted text whole, for `mechcheck test`
    (labels are unchanged by it: every raw text is within corpus.max_tokens, or training refused)."""
    if not bench.prompted:
        return {}
    note = "longest prompted text; every raw text fits corpus.max_tokens, so labels are unchanged"
    return {"max_tokens": bench.max_tokens, "max_tokens_note": note}


def _readout_init(setup: Setup) -> dict[str, Any]:
    if isinstance(setup.readout, LinearReadout):
        return {"init_std": READOUT_INIT_STD} | ({} if setup.standardised else {"trained_on": "raw labels"})
    return {"init": "fitted on the train labels; no parameters (the model answers through its LM head)"}


def measure(
    bench: Bench,
    setup: Setup,
    condition: Condition,
    mode: str,
    before: SplitPredictions,
    result: LoopResult | None = None,
) -> tuple[Readout, dict[str, Any], dict[str, Any]]:
    """The trained run on the test split: folded readout, predictions.json and the metrics. The live
    neuron comes from the predictions' own pass when the source reads it (unfrozen, raw texts), else
    from a pass over the test texts (another model's neuron: its fixed labels, that model is never
    trained); drift from the best state's evaluation row of `result`."""
    targets, subject = setup.targets, bench.subject
    readout = fold_readout(setup.readout, targets) if setup.standardised else setup.readout
    after = predict_split(setup.source, readout, targets, "test", standardised=False)[0]
    live = after.live if setup.own_labels else targets.test_labels
    if live is None:
        batch = targets.card["label_batch_size"]
        live, _ = compute_labels(
            subject, targets.test_texts, targets.neuron_spec, targets.position, targets.max_tokens, batch
        )
    _check_frozen(setup, subject)
    target_key = "labels" if mode == "fixed" else "live_labels"
    classes = readout.classes(targets.test_labels) if isinstance(readout, TokenReadout) else None
    predictions = predictions_json(targets, before, after, live, target_key, classes)
    metrics = metrics_from_predictions(predictions, condition.moves_neuron)
    tolerance = unchanged_tolerance(targets.test_labels)
    if not condition.moves_neuron and metrics["neuron_unchanged_maxdiff"] > tolerance:
        raise RuntimeError(
            f"{condition.name}: the neuron changed by {metrics['neuron_unchanged_maxdiff']:.3g} although "
            "every layer up to it was frozen"
        )
    return readout, predictions, metrics | _drift(bench, setup, result)


def _check_frozen(setup: Setup, subject) -> None:
    frozen = {n for n, _ in subject.model.named_parameters()} - setup.trainable
    if params_digest(subject.model, frozen) != setup.frozen_digest:
        raise RuntimeError("a parameter outside the condition's trainable set changed during training")


def _drift(bench: Bench, setup: Setup, result: LoopResult | None = None) -> dict[str, Any]:
    if bench.drift is None:
        none = {"lm_loss_before": None, "lm_loss_after": None, "kl_after": None}
        return {**none, "drift_note": "drift_texts = 0: not measured"}
    before = bench.drift.lm_loss_before
    if not setup.trainable:
        note = "model frozen: weights unchanged (hash-checked), so drift is exactly 0; no forward pass"
        return {"lm_loss_before": before, "lm_loss_after": before, "kl_after": 0.0, "drift_note": note}
    best = [r for r in (result.curves if result else []) if r["step"] == result.best_step]
    if best and best[0].get("kl") is not None:  # the restored best state was measured at its evaluation
        note = f"measured at the evaluation of the best state (step {result.best_step})"
        return {"lm_loss_before": before, "lm_loss_after": best[0]["lm_loss"], "kl_after": best[0]["kl"],
                "drift_note": note}  # fmt: skip
    lm_loss, kl = bench.drift.measure(bench.subject)
    return {"lm_loss_before": bench.drift.lm_loss_before, "lm_loss_after": lm_loss, "kl_after": kl}
