"""What the trainer measures: predictions per split, their metrics, drift of the LM.

All metrics are computed in the neuron's own units (after de-standardising) by
`mechcheck.stats.fit_metrics` (numpy float64 from float32 values), so the same function applied to
predictions.json reproduces them exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mechcheck.readout import Readout
from mechcheck.stats import digit_metrics, fit_metrics
from mechcheck.subject import Site, Subject
from mechcheck.targets import Chunk, TargetSet, make_chunks, n_rows
from mechcheck.train.readouts import cross_entropy, readout_outputs
from mechcheck.train.sources import Source

COLLAPSE_RATIO = 0.2  # SD(prediction) / SD(label) below this: the report has collapsed
LOGITS = Site("logits")


@dataclass
class SplitPredictions:
    """Predictions and (when the source reads it) the live neuron, in the neuron's units, label-row order;
    token readouts add the expected class index (`digits`) and the arg-max class."""

    predictions: torch.Tensor
    live: torch.Tensor | None
    digits: torch.Tensor | None = None
    argmax: torch.Tensor | None = None
    answer_logp: torch.Tensor | None = None  # [N, n_classes]


def predict_split(
    source: Source,
    readout: Readout,
    targets: TargetSet,
    split: str,
    chunk_ids: Sequence[int] | None = None,
    standardised: bool = True,
) -> tuple[SplitPredictions, torch.Tensor]:
    """Predict every chunk (or the given ones) of `split` without gradients; also returns the label
    rows covered, in label (text) order. `standardised`: the readout predicts standardised labels."""
    chunks: list[Chunk] = source.chunks[split]
    ids = range(len(chunks)) if chunk_ids is None else chunk_ids
    rows = torch.cat([chunks[i].rows for i in ids]).sort().values
    size = n_rows(chunks)
    got: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in ids:
            x, neuron = source.forward(split, i, grad=False)
            outputs = readout_outputs(readout, x.float())
            if standardised:
                outputs["predictions"] = targets.destandardise(outputs["predictions"])
            if neuron is not None:
                outputs["live"] = neuron
            for name, value in outputs.items():
                column = got.setdefault(name, torch.full((size, *value.shape[1:]), float("nan")))
                column[chunks[i].rows] = value.float().cpu()
    kept = {name: column[rows] for name, column in got.items()}
    if "argmax" in kept:
        kept["argmax"] = kept["argmax"].long()
    extra = {k: kept.get(k) for k in ("digits", "argmax", "answer_logp")}
    return SplitPredictions(kept["predictions"], kept.get("live"), **extra), rows


class Drift:
    """Next-token LM loss on held-out texts and KL(original || current), original log-probs cached once."""

    def __init__(self, subject: Subject, texts: Sequence[str], max_tokens: int, batch_size: int = 16):
        self.chunks = make_chunks(subject, texts, batch_size, max_tokens, "all")
        self.reference = [self._log_probs(subject, chunk) for chunk in self.chunks]
        self.lm_loss_before = self._lm_loss(self.reference)

    @staticmethod
    def _log_probs(subject: Subject, chunk: Chunk) -> torch.Tensor:
        logits = subject.run(chunk.enc, reads=[LOGITS])[LOGITS]
        mask = chunk.enc["attention_mask"].bool()
        return torch.log_softmax(logits.float(), -1)[mask].cpu()  # [n_real, vocab]

    def _lm_loss(self, log_probs: list[torch.Tensor]) -> float:
        """Mean -log p(next token) over real positions that have a real next token."""
        total, count = 0.0, 0
        for chunk, lp in zip(self.chunks, log_probs, strict=True):
            mask = chunk.enc["attention_mask"].bool()
            ids = chunk.enc["input_ids"]
            has_next = mask.clone()
            has_next[:, :-1] &= mask[:, 1:]
            has_next[:, -1] = False
            nxt = torch.zeros_like(ids)
            nxt[:, :-1] = ids[:, 1:]
            pick = has_next[mask].cpu()  # which of the real positions have a next token
            nll = -lp[torch.arange(lp.shape[0]), nxt[mask].cpu()]
            total += float(nll[pick].double().sum())
            count += int(pick.sum())
        return total / max(count, 1)

    def measure(self, subject: Subject) -> tuple[float, float]:
        """(LM loss, mean KL(original || current) per real position) of the current model."""
        current = [self._log_probs(subject, chunk) for chunk in self.chunks]
        kl_sum, count = 0.0, 0
        for ref, cur in zip(self.reference, current, strict=True):
            kl_sum += float((ref.exp() * (ref - cur)).sum(-1).double().sum())
            count += ref.shape[0]
        return self._lm_loss(current), kl_sum / max(count, 1)


class Evaluator:
    """One evaluation row for the loop's curves: train/val MSE and skill, live neuron, drift; for
    token readouts also the class-space metrics on val (`val_digit_*`, `val_argmax_accuracy`).

    `standardised`: the readout predicts standardised labels (the linear head while it trains).
    `live_neuron`: the current model's neuron on the raw val texts, for sources that cannot read it
    in their own pass (prompted readouts on a model that moves the neuron). `initial_live`: this
    evaluator scores the untouched model of a live-label run from cached features, where the live
    labels are the fixed ones (so `val_mse_vs_fixed` is `val_mse`)."""

    def __init__(
        self,
        source: Source,
        readout: Readout,
        targets: TargetSet,
        live_target: bool,
        train_chunk_ids: Sequence[int],
        drift: Drift | None,
        subject: Subject | None,
        standardised: bool = True,
        live_neuron: Callable[[], torch.Tensor] | None = None,
        initial_live: bool = False,
    ):
        self.source, self.readout, self.targets = source, readout, targets
        self.initial_live = initial_live
        self.live_target, self.train_chunk_ids = live_target, list(train_chunk_ids)
        self.drift, self.subject = drift, subject  # subject None: the model is frozen, drift is exactly 0
        self.standardised, self.live_neuron = standardised, live_neuron

    def target(self, split: str, got: SplitPredictions, rows: torch.Tensor) -> torch.Tensor:
        """The labels the run is trained on: the live neuron (live regimes) or the fixed labels."""
        return got.live if self.live_target else self.targets.labels(split)[rows]

    def __call__(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        args = (self.source, self.readout, self.targets)
        train, train_rows = predict_split(
            *args, "train", self.train_chunk_ids, standardised=self.standardised
        )
        val, val_rows = predict_split(*args, "val", standardised=self.standardised)
        per_neuron: list[dict[str, Any]] = []
        for name, got, rows in (("train", train, train_rows), ("val", val, val_rows)):
            m = fit_metrics(got.predictions, self.target(name, got, rows))
            row[f"{name}_mse"], row[f"{name}_skill"] = m["mse"], m["skill"]
            if name == "val":
                row["val_r"], row["val_pred_sd_ratio"] = m["r"], m["pred_sd_ratio"]
            for i, one in enumerate(m.get("per_neuron", [])):
                if len(per_neuron) <= i:
                    per_neuron.append({})
                per_neuron[i] |= {f"{name}_{k}": one[k] for k in ("mse", "skill", "r", "pred_sd_ratio")}
        if val.digits is not None:
            classes = self.readout.classes(self.targets.labels("val")[val_rows])
            d = digit_metrics(val.digits, val.argmax, classes)
            row["val_digit_spearman"], row["val_digit_mae"] = d["spearman"], d["mae"]
            row["val_argmax_accuracy"] = d["argmax_accuracy"]
            row["val_ce"] = cross_entropy(val.answer_logp, classes)
        neuron = val.live if val.live is not None else self.targets.labels("val")[val_rows]
        if val.live is None and self.live_neuron is not None:
            neuron = self.live_neuron()[val_rows]
        if per_neuron:  # several neurons: the neuron's spread per neuron, beside its metrics
            for i, one in enumerate(per_neuron):
                one["neuron_mean"] = float(neuron[:, i].double().mean())
                one["neuron_std"] = float(neuron[:, i].double().std(correction=0))
            row["per_neuron"] = per_neuron
        else:
            row["neuron_mean"] = float(neuron.double().mean())
            row["neuron_std"] = float(neuron.double().std(correction=0))
        if val.live is not None:
            fixed = self.targets.labels("val")[val_rows]
            row["val_mse_vs_fixed"] = fit_metrics(val.predictions, fixed)["mse"]
        elif self.initial_live:
            row["val_mse_vs_fixed"] = row["val_mse"]
        if self.drift is None:
            row["lm_loss"], row["kl"] = None, None
        elif self.subject is None:
            row["lm_loss"], row["kl"] = self.drift.lm_loss_before, 0.0
        else:
            row["lm_loss"], row["kl"] = self.drift.measure(self.subject)
        return row
