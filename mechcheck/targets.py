"""Target sets: the neuron's activation (its label) over the corpus splits, from the ORIGINAL model.

Texts are tokenised once and cut into length-sorted chunks (batches of similar length, so
almost no padding is computed). A chunk knows which texts it holds and which label rows they
own: one row per text for positions last/max/mean, one row per real token for `all` (labels
are stored in text order; `text_index` maps each row back to its text).

Labels are standardised with train-split statistics only; the mean and std travel with the
target set (and into run.json) so every metric is computed after de-standardising.

A target set may hold several neurons (any layers): its labels are then `[n_rows, k]`, read in
one forward pass per batch (stopped after the deepest neuron's layer), and each neuron is
standardised with its own train-split mean and std (`mean`, `std` are then `[k]` tensors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mechcheck.batching import length_sorted_batches
from mechcheck.errors import UserError
from mechcheck.readout import Neuron, neuron_matrix, neuron_values
from mechcheck.subject import POSITIONS, Subject
from mechcheck.tensor_cache import content_key, load_or_compute, model_digest

SPLITS = ("train", "val", "test")
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
LABEL_BATCH = 32  # texts per forward pass when computing labels (inference only)
LABELS_VERSION = "mechcheck-labels/1"


@dataclass(frozen=True)
class Chunk:
    """One batch of texts of similar length, encoded once."""

    ids: torch.Tensor  # [B] text indices within the split, in batch order
    rows: torch.Tensor  # [N] label rows of these texts, in the order gather_position returns them
    counts: torch.Tensor  # [B] label rows per text (1, or its real tokens for position `all`)
    enc: dict[str, torch.Tensor] = field(repr=False)

    @property
    def n_tokens(self) -> int:
        return int(self.enc["attention_mask"].sum())


def token_counts(subject: Subject, texts: Sequence[str], max_tokens: int) -> torch.Tensor:
    """Real tokens per text after truncation to `max_tokens`. [n_texts]"""
    ids = subject.tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
    return torch.tensor([len(x) for x in ids], dtype=torch.long)


def label_counts(lengths: torch.Tensor, position: str) -> torch.Tensor:
    """Label rows per text: its token count for `all`, else 1."""
    if position not in POSITIONS:
        raise UserError(f"unknown position {position!r}; choose one of {', '.join(POSITIONS)}")
    return lengths.clone() if position == "all" else torch.ones_like(lengths)


def make_chunks(
    subject: Subject, texts: Sequence[str], batch_size: int, max_tokens: int, position: str
) -> list[Chunk]:
    """Length-sorted batches (stable by index, so deterministic) covering every text once."""
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    lengths = token_counts(subject, texts, max_tokens)
    counts = label_counts(lengths, position)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    chunks = []
    for batch in length_sorted_batches(lengths.numpy(), batch_size):
        ids = torch.tensor(batch, dtype=torch.long)
        rows = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in ids.tolist()])
        enc = subject.encode([texts[i] for i in ids.tolist()], max_length=max_tokens)
        chunks.append(Chunk(ids, rows, counts[ids], enc))
    return chunks


def n_rows(chunks: Sequence[Chunk]) -> int:
    return sum(len(c.rows) for c in chunks)


def text_index(chunks: Sequence[Chunk]) -> torch.Tensor:
    """The text each label row belongs to, rows in text order. [n_rows]"""
    index = torch.empty(n_rows(chunks), dtype=torch.long)
    for chunk in chunks:
        index[chunk.rows] = chunk.ids.repeat_interleave(chunk.counts)
    return index


def compute_labels(
    subject: Subject,
    texts: Sequence[str],
    neuron: Neuron | Sequence[Neuron],
    position: str,
    max_tokens: int,
    batch_size: int = LABEL_BATCH,
    progress: bool = False,
    desc: str = "labels",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The neuron's activation per label row (text order) and each row's text index; for a sequence
    of neurons `[n_rows, k]`, all of them read in one pass per batch."""
    several = not isinstance(neuron, Neuron)
    for n in neuron if several else [neuron]:
        n.check(subject)
    chunks = make_chunks(subject, texts, batch_size, max_tokens, position)
    labels = torch.empty(n_rows(chunks), *([len(neuron)] if several else []), dtype=torch.float32)
    for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        if several:
            values = neuron_matrix(subject, chunk.enc, neuron, position)
        else:
            values = neuron_values(subject, chunk.enc, neuron, position)
        labels[chunk.rows] = values.float().cpu()
    return labels, text_index(chunks)


def label_stats(labels: torch.Tensor | np.ndarray) -> dict[str, float]:
    """n, mean, std (population), min, quantiles and max of a label vector."""
    x = np.asarray(labels, dtype=np.float64)
    if x.size == 0:
        return {"n": 0}
    q = np.quantile(x, QUANTILES)
    return {
        "n": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "quantiles": {f"p{round(p * 100)}": float(v) for p, v in zip(QUANTILES, q, strict=True)},
        "max": float(x.max()),
    }


@dataclass
class TargetSet:
    """Texts and labels per split, with the train-split standardisation."""

    neuron: Neuron
    position: str
    max_tokens: int
    train_texts: tuple[str, ...]
    val_texts: tuple[str, ...]
    test_texts: tuple[str, ...]
    train_labels: torch.Tensor  # [n_rows] in the neuron's units, original model
    val_labels: torch.Tensor
    test_labels: torch.Tensor
    train_index: torch.Tensor  # [n_rows] text index of each label row
    val_index: torch.Tensor
    test_index: torch.Tensor
    mean: float | torch.Tensor  # [k] for several neurons
    std: float | torch.Tensor
    card: dict[str, Any]
    neurons: tuple[Neuron, ...] = ()  # every targeted neuron, in label-column order (one: `neuron`)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> group key per text

    def __post_init__(self) -> None:
        self.neurons = tuple(self.neurons) or (self.neuron,)

    @property
    def k(self) -> int:
        """How many neurons; labels are `[n_rows]` for one, `[n_rows, k]` for several."""
        return len(self.neurons)

    @property
    def layer(self) -> int:
        """The deepest targeted layer: every layer up to it must stay frozen to keep labels exact."""
        return max(n.layer for n in self.neurons)

    @property
    def neuron_spec(self) -> Neuron | tuple[Neuron, ...]:
        """What `compute_labels` takes to reproduce these labels: the neuron, or all of them."""
        return self.neuron if self.k == 1 else self.neurons

    def texts(self, split: str) -> tuple[str, ...]:
        return getattr(self, f"{_split(split)}_texts")

    def labels(self, split: str) -> torch.Tensor:
        return getattr(self, f"{_split(split)}_labels")

    def text_index(self, split: str) -> torch.Tensor:
        return getattr(self, f"{_split(split)}_index")

    def _moments(self, values: torch.Tensor) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """Mean and std where `values` live (per-neuron tensors follow them onto their device)."""
        if isinstance(self.mean, torch.Tensor):
            return self.mean.to(values.device), self.std.to(values.device)
        return self.mean, self.std

    def standardise(self, values: torch.Tensor) -> torch.Tensor:
        mean, std = self._moments(values)
        return (values - mean) / std

    def destandardise(self, values: torch.Tensor) -> torch.Tensor:
        mean, std = self._moments(values)
        return values * std + mean


def _split(name: str) -> str:
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; known: {SPLITS}")
    return name


def build_targets(
    subject: Subject,
    splits: dict[str, Sequence[str]] | Any,
    neuron: Neuron | Sequence[Neuron],
    position: str = "last",
    max_tokens: int = 128,
    batch_size: int = LABEL_BATCH,
    progress: bool = False,
    cache_dir: Path | None = None,
) -> TargetSet:
    """Labels for each split from `subject` (the original model); `splits` is a corpus `Splits`
    or a dict with keys train/val/test. Several neurons give `[n_rows, k]` labels. With `cache_dir`
    the labels are kept in a file there, keyed by the model's weights and everything else they
    depend on, and read back by the next call (another process's, too)."""
    texts = split_texts(splits)
    neurons = (neuron,) if isinstance(neuron, Neuron) else tuple(neuron)
    if len(set(neurons)) != len(neurons):
        raise UserError("the same neuron is listed twice in neuron.neurons")
    which = neurons[0] if len(neurons) == 1 else neurons

    def compute() -> dict[str, torch.Tensor]:
        out = {}
        for name in SPLITS:
            out[f"{name}.labels"], out[f"{name}.index"] = compute_labels(
                subject, texts[name], which, position, max_tokens, batch_size, progress, desc=f"labels {name}"
            )
        return out

    file = None
    if cache_dir is not None:
        head = {"version": LABELS_VERSION, "model": model_digest(subject.model), "position": position}
        head |= {"neurons": [n.as_dict() for n in neurons], "max_tokens": max_tokens}
        head["batch_size"] = batch_size
        file = Path(cache_dir) / f"{content_key(head, *texts.items())}.safetensors"
    cached, _ = load_or_compute(file, compute, metadata={"format": LABELS_VERSION})
    labels = {name: (cached[f"{name}.labels"], cached[f"{name}.index"]) for name in SPLITS}
    return assemble_targets(
        neurons, position, max_tokens, batch_size, texts, labels, getattr(splits, "groups", {})
    )


def split_texts(splits: dict[str, Sequence[str]] | Any) -> dict[str, tuple[str, ...]]:
    """train/val/test texts of a corpus `Splits` or a dict; an empty split is a UserError."""
    get = splits.__getitem__ if isinstance(splits, dict) else lambda name: getattr(splits, name)
    texts = {name: tuple(get(name)) for name in SPLITS}
    for name, items in texts.items():
        if not items:
            raise UserError(f"the {name} split is empty: the target set needs texts in train, val and test")
    return texts


def assemble_targets(
    neurons: tuple[Neuron, ...],
    position: str,
    max_tokens: int,
    batch_size: int,
    texts: dict[str, tuple[str, ...]],
    labels: dict[str, tuple[torch.Tensor, torch.Tensor]],
    groups: dict[str, tuple[str, ...]] | None = None,
) -> TargetSet:
    """The target set from each split's (labels, text index): train-split standardisation and the card."""
    if len(set(neurons)) != len(neurons):
        raise UserError("the same neuron is listed twice in neuron.neurons")
    train = labels["train"][0].double().reshape(len(labels["train"][0]), -1)
    means, stds = train.mean(0), train.std(0, correction=0)
    for n, std in zip(neurons, stds.tolist(), strict=True):
        if not std > 1e-8:
            raise UserError(
                f"neuron {n.layer}/{n.index} is constant on the train split (std {std:.3g}): "
                "nothing to predict"
            )
    one = len(neurons) == 1
    mean = float(means[0]) if one else means.float()
    std = float(stds[0]) if one else stds.float()
    card = {
        "neuron": neurons[0].as_dict() if one else None,
        "position": position,
        "max_tokens": max_tokens,
        "label_batch_size": batch_size,
        "standardisation": {"mean": mean if one else means.tolist(), "std": std if one else stds.tolist(),
                            "from": "train split"},
        "splits": {n: {"texts": len(texts[n]), **_split_stats(labels[n][0], one)} for n in SPLITS},
    }  # fmt: skip
    if not one:
        card |= {"neurons": [n.as_dict() for n in neurons], "standardisation_per": "neuron"}
        del card["neuron"]
    values = (labels[name][0] for name in SPLITS)
    index = (labels[name][1] for name in SPLITS)
    return TargetSet(
        neurons[0], position, max_tokens, *texts.values(), *values, *index, mean, std, card, neurons,
        dict(groups or {}),
    )  # fmt: skip


def _split_stats(labels: torch.Tensor, one: bool) -> dict[str, Any]:
    """label_stats of the split's labels; for several neurons one entry per neuron (`per_neuron`)."""
    if one:
        return label_stats(labels)
    per_neuron = [label_stats(labels[:, i]) for i in range(labels.shape[1])]
    return {"n": int(labels.shape[0]), "per_neuron": per_neuron}
