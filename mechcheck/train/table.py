"""The original model's tensors for every text of an experiment, from ONE forward pass per batch.

Labels, the `frozen` condition's features and the `after_target` residual are properties of a
text under the original model, not of a split; every training seed splits the same corpus its own
way. So they are computed once per text, in one pass per length-sorted batch that reads

- the label site of every target (the neuron's `mlp_post`, or the study's `mlp_out`),
- the residual leaving the deepest target layer, real tokens only (when `after_target` trains),
- the readout's site (the final normed residual) at the report positions (when `frozen` trains;
  it also scores the untrained step 0 of every condition without a pass),

stopping after the last site needed, and each seed's target set and bench index them. A token
readout's model reads the prompted texts: its labels come from a table of the raw texts, its
residual and features from a second table of the prompted ones (no labels).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mechcheck.readout import Neuron, readout_positions, target_columns
from mechcheck.subject import Site, Subject, gather_position
from mechcheck.targets import LABEL_BATCH, SPLITS, Chunk, TargetSet, assemble_targets, make_chunks, n_rows
from mechcheck.tensor_cache import content_key, load_or_compute, model_digest

TABLE_VERSION = "mechcheck-table/1"


@dataclass
class TextTable:
    """Per text (in `texts` order): label rows `offsets[i]:offsets[i + 1]` of `labels` / `features`,
    and the residual `resid[i]` `[n_tokens_i, d_model]` leaving layer `layer`."""

    texts: tuple[str, ...]
    offsets: torch.Tensor  # [n_texts + 1]
    labels: torch.Tensor | None  # [n_rows] or [n_rows, k]; None for a table of prompted texts
    features: torch.Tensor | None  # [n_rows, d_model]
    resid: list[torch.Tensor] | None
    layer: int | None
    neurons: tuple[Neuron, ...]
    position: str
    max_tokens: int
    seconds: float

    def __post_init__(self) -> None:
        self._where = {text: i for i, text in enumerate(self.texts)}

    def ids(self, texts: Sequence[str]) -> list[int]:
        return [self._where[t] for t in texts]

    def rows(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The label rows of `texts` (in order) and each row's index into `texts`. ([n], [n])"""
        ids = torch.tensor(self.ids(texts), dtype=torch.long)
        starts, counts = self.offsets[ids], self.offsets[ids + 1] - self.offsets[ids]
        text_of = torch.arange(len(ids)).repeat_interleave(counts)
        first = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
        return starts[text_of] + torch.arange(len(text_of)) - first[text_of], text_of

    def labels_for(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """As `targets.compute_labels` returns them: label rows in text order, and their text index."""
        rows, text_of = self.rows(texts)
        return self.labels[rows].clone(), text_of

    def features_for(self, texts: Sequence[str]) -> torch.Tensor:
        """The readout site's value (final norm) at the report positions of `texts`, rows in label order."""
        return self.features[self.rows(texts)[0]].clone()

    def resid_for(self, chunk: Chunk, texts: Sequence[str]) -> torch.Tensor:
        """The chunk's cached residual `[B, T, d_model]`, right-padded with zeros like its encoding (a
        pad position is never attended by a real one, so its value does not matter)."""
        mask = chunk.enc["attention_mask"]
        out = torch.zeros(*mask.shape, self.resid[0].shape[-1], dtype=self.resid[0].dtype)
        for b, i in enumerate(chunk.ids.tolist()):
            value = self.resid[self._where[texts[i]]]
            out[b, : value.shape[0]] = value
        return out.to(mask.device)

    def targets(self, splits, groups: dict[str, tuple[str, ...]] | None = None) -> TargetSet:
        """The target set of one seed's splits (`Splits` or a train/val/test dict)."""
        from mechcheck.targets import split_texts

        texts = split_texts(splits)
        labels = {name: self.labels_for(texts[name]) for name in SPLITS}
        groups = groups if groups is not None else getattr(splits, "groups", {})
        return assemble_targets(
            self.neurons, self.position, self.max_tokens, LABEL_BATCH, texts, labels, groups
        )


def build_table(
    subject: Subject,
    texts: Sequence[str],
    neurons: Sequence[Neuron],
    position: str,
    max_tokens: int,
    *,
    labels: bool = True,
    resid_layer: int | None = None,
    feature_site: Site | None = None,
    progress: bool = False,
    desc: str = "original model",
    cache: Path | None = None,
) -> TextTable:
    """One no-grad pass of the (original) `subject` over the distinct `texts`, reading what is asked;
    with `cache`, kept in a file there keyed by the model's weights and everything the table depends
    on, so that the other processes of an experiment read it instead of making it again."""
    texts = tuple(dict.fromkeys(texts))
    for n in neurons:
        n.check(subject)
    neurons = tuple(neurons)
    reads = (labels, resid_layer, feature_site)
    if cache is None:
        return _one_pass(subject, texts, neurons, position, max_tokens, reads, progress, desc)
    head = {"version": TABLE_VERSION, "model": model_digest(subject.model), "position": position}
    head |= {"neurons": [n.as_dict() for n in neurons], "max_tokens": max_tokens, "labels": labels}
    head |= {"resid_layer": resid_layer, "features": None if feature_site is None else str(feature_site)}
    made: list[TextTable] = []

    def compute() -> dict[str, torch.Tensor]:
        made.append(_one_pass(subject, texts, neurons, position, max_tokens, reads, progress, desc))
        return _table_tensors(made[0])

    file = Path(cache) / f"{content_key(head, texts)}.safetensors"
    tensors, _ = load_or_compute(file, compute, metadata={"format": TABLE_VERSION})
    if made:
        return made[0]
    resid = None
    if "resid" in tensors:
        resid = list(torch.split(tensors["resid"], tensors["resid_lengths"].tolist()))
    return TextTable(
        texts, tensors["offsets"], tensors.get("labels"), tensors.get("features"), resid, resid_layer,
        neurons, position, max_tokens, 0.0,
    )  # fmt: skip


def _one_pass(subject, texts, neurons, position, max_tokens, reads, progress, desc) -> TextTable:
    start = time.perf_counter()
    labels, resid_layer, feature_site = reads
    chunks = make_chunks(subject, texts, LABEL_BATCH, max_tokens, position)
    total = n_rows(chunks)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), _rows_per_text(chunks, len(texts)).cumsum(0)])
    resid_site = Site("resid_post", resid_layer) if resid_layer is not None else None
    features = feature_site is not None
    sites = list(dict.fromkeys(n.site for n in neurons)) if labels else []
    sites += ([resid_site] if resid_site else []) + ([feature_site] if features else [])
    k = len(neurons)
    out_labels = torch.empty(total, *([k] if k > 1 else []), dtype=torch.float32) if labels else None
    out_features = torch.empty(total, subject.d_model, dtype=torch.float32) if features else None
    out_resid: list[torch.Tensor | None] = [None] * len(texts) if resid_site else []
    for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        got = subject.run(chunk.enc, reads=sites)
        mask = chunk.enc["attention_mask"]
        if labels:
            values = gather_position(target_columns(got, neurons), mask, position)
            out_labels[chunk.rows] = (values[:, 0] if k == 1 else values).float().cpu()
        if features:
            rows = gather_position(got[feature_site], mask, readout_positions(chunk.enc, position))
            out_features[chunk.rows] = rows.float().cpu()
        if resid_site:
            lengths = mask.sum(-1).tolist()
            for b, i in enumerate(chunk.ids.tolist()):
                out_resid[i] = got[resid_site][b, : lengths[b]].detach().float().cpu().clone()
    return TextTable(
        texts, offsets, out_labels, out_features, out_resid if resid_site else None, resid_layer,
        neurons, position, max_tokens, time.perf_counter() - start,
    )  # fmt: skip


def _table_tensors(table: TextTable) -> dict[str, torch.Tensor]:
    out = {"offsets": table.offsets}
    if table.labels is not None:
        out["labels"] = table.labels
    if table.features is not None:
        out["features"] = table.features
    if table.resid is not None:
        out["resid"] = torch.cat(table.resid)
        out["resid_lengths"] = torch.tensor([r.shape[0] for r in table.resid], dtype=torch.long)
    return out


def _rows_per_text(chunks: Sequence[Chunk], n_texts: int) -> torch.Tensor:
    counts = torch.zeros(n_texts, dtype=torch.long)
    for chunk in chunks:
        counts[chunk.ids] = chunk.counts
    return counts
