"""What a probe is given: the subjects, the evaluation texts and one clean pass over them, cached.

The clean pass of each batch runs once and keeps what every test reuses: every layer's keys and
values (so an edited pass continues from the cache instead of recomputing the prefix), the
residual entering every layer and every neuron at the *label position* p, the final residual and
the readout's features at the *report position* r (p = r for a linear readout at the last token;
for a prompted token-space readout r is the answer position after the prompt), the residual and
the layer-L neurons at every position (for all-position edits), and the attention sinks.

Attention sinks are position 0 (SmolLM2 adds no BOS, yet its first token takes a residual norm ~8×
the rest) and any position whose residual norm at layer L's MLP input exceeds SINK_FACTOR × the
median norm of that text's other positions. All-position edits leave them alone; their own effect
is measured separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mechcheck.batching import length_order
from mechcheck.battery.options import BatteryOptions
from mechcheck.errors import UserError
from mechcheck.readout import Neuron, Readout
from mechcheck.subject import Site, Subject, last_index

SINK_FACTOR = 4.0  # residual norm over the text's median (other positions) that marks a sink
POSITION_CLASSES = ("label", "rest", "sink")  # per-class means for all-position edits


@dataclass
class Batch:
    """Texts of similar length and their clean pass. `texts` indexes the eval-order arrays."""

    enc: dict[str, torch.Tensor]  # what the trained model sees (the readout's prompt, if any)
    texts: slice
    label_pos: torch.Tensor  # [B] p, in `enc` coordinates
    report_pos: torch.Tensor  # [B] r
    sinks: torch.Tensor  # [B, T] bool
    keys: list[torch.Tensor] = field(default_factory=list)  # per layer [B, heads, T, d_head]
    values: list[torch.Tensor] = field(default_factory=list)
    tail: torch.Tensor | None = None  # [B, W, n_layers, d_model] resid_pre of every layer at p..p+W-1
    resid_pre: torch.Tensor | None = None  # [B, T, d_model] entering layer L, every position
    mlp_in: torch.Tensor | None = None  # [B, T, d_model] layer L's MLP input, every position
    units: torch.Tensor | None = None  # [B, T, d_mlp] layer L's neurons, every position

    @property
    def real(self) -> torch.Tensor:
        return self.enc["attention_mask"].bool()

    def classes(self) -> torch.Tensor:
        """Position class per token: 0 label position, 1 rest, 2 sink (-1 padding). [B, T]"""
        out = torch.full(self.real.shape, 1, dtype=torch.long)
        out[self.sinks] = 2
        out[torch.arange(len(out)), self.label_pos] = 0
        out[~self.real] = -1
        return out

    def edited(self, where: str) -> torch.Tensor:
        """Which positions an edit touches: `label` (p), `non_sink` (every real non-sink position up
        to the report position), `sink` (the sinks). [B, T] bool"""
        pos = torch.arange(self.real.shape[1])[None]
        upto = self.real & (pos <= self.report_pos[:, None])
        if where == "label":
            return pos == self.label_pos[:, None]
        if where == "non_sink":
            return upto & ~self.sinks
        if where == "sink":
            return upto & self.sinks
        raise ValueError(f"unknown edit positions {where!r}")


@dataclass
class EvalSet:
    """Evaluation texts (length-sorted) with their labels and the clean pass, per text."""

    texts: tuple[str, ...]
    groups: np.ndarray  # [n] article (bootstrap cluster) of each text
    batches: list[Batch]
    labels: np.ndarray  # [n] the base model's neuron at `position` (the fixed label)
    n_tokens: np.ndarray  # [n] tokens of the bare text
    x_final: torch.Tensor  # [n, d] residual before the final norm at r
    features: torch.Tensor  # [n, d] final norm at r (what a linear readout reads)
    report: np.ndarray  # [n] the clean report in the neuron's units
    units_p: torch.Tensor  # [n, n_layers, d_mlp] trained model, every neuron at p
    resid_p: torch.Tensor  # [n, n_layers, d] residual entering each layer at p
    mlp_in_p: torch.Tensor  # [n, d] layer L's MLP input at p
    base_units_p: torch.Tensor  # [n, d_mlp] base model, layer L's neurons at p
    width: int  # T_max over the batches (dense per-position edit values use it)

    @property
    def n(self) -> int:
        return len(self.labels)


def is_prompted(readout: Readout) -> bool:
    return readout.format_text("\x00") != "\x00"


@dataclass
class Context:
    """Everything a probe may use; built by `build_context`."""

    trained: Subject
    base: Subject
    readout: Readout
    neuron: Neuron
    position: str
    eval: EvalSet
    options: BatteryOptions
    run: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)  # earlier probes' results in this battery
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    probe: str = ""
    audit: bool = False
    interventions: list[dict[str, Any]] = field(default_factory=list)
    targets: tuple[Neuron, ...] = ()
    shared: dict[str, Any] = field(default_factory=dict)  # heads, nulls, donors: built once, reused

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets) or (self.neuron,)

    def start_probe(self, name: str) -> None:
        """Each probe gets its own seeded generator, so a subset of probes gives the same numbers."""
        import zlib

        self.probe = name
        self.rng = np.random.default_rng([self.options.seed, zlib.crc32(name.encode())])

    @property
    def base_is_trained(self) -> bool:
        return self.base is self.trained

    @property
    def layer(self) -> int:
        return self.neuron.layer

    @property
    def labels(self) -> np.ndarray:
        return self.eval.labels

    @property
    def label_std(self) -> float:
        return float(self.eval.labels.std())

    def once(self, key: str, build):
        """A shared object (heads, null draws, donors) built on first use with its own generator."""
        if key not in self.shared:
            import zlib

            rng = np.random.default_rng([self.options.seed, zlib.crc32(key.encode())])
            self.shared[key] = build(rng)
        return self.shared[key]


# --- building the evaluation set -----------------------------------------------------------
def find_sinks(mlp_in: torch.Tensor, real: torch.Tensor, factor: float = SINK_FACTOR) -> torch.Tensor:
    """Position 0 and every position whose residual norm exceeds `factor` × the text's median norm
    over its other real positions. [B, T] bool"""
    norms = mlp_in.norm(dim=-1).masked_fill(~real, float("nan"))  # [B, T]
    median = torch.nanmedian(norms[:, 1:], dim=1).values
    median = torch.where(torch.isnan(median), norms[:, 0], median)
    sinks = (norms > factor * median[:, None]) & real
    sinks[:, 0] = real[:, 0]
    return sinks


def clean_batch(trained: Subject, batch: Batch, layer: int) -> dict[str, torch.Tensor]:
    """The trained model's clean pass over one batch: fills the batch's cache and per-position
    tensors, returns per-row tensors at p (every layer) and r (the final residual)."""
    from transformers.cache_utils import DynamicCache

    n_layers, rows = trained.n_layers, torch.arange(len(batch.label_pos))
    resid_sites = [Site("resid_post", i) for i in range(n_layers)]
    unit_sites = [Site("mlp_post", i) for i in range(n_layers)]
    reads = [Site("resid_pre", 0), *resid_sites, Site("mlp_in", layer), *unit_sites]
    cache = DynamicCache(config=trained.model.config)
    got = trained.run({**batch.enc, "cache": cache, "use_cache": True}, reads=reads)
    entering = [got[Site("resid_pre", 0)], *(got[s] for s in resid_sites[:-1])]  # resid_pre of each layer
    p, r = batch.label_pos, batch.report_pos
    width = int((r - p).max()) + 1
    offsets = (p[:, None] + torch.arange(width)[None]).clamp(max=batch.real.shape[1] - 1)  # [B, W]
    batch.tail = torch.stack([x[rows[:, None], offsets] for x in entering], dim=2)  # [B, W, layers, d]
    batch.keys = [layer_cache.keys for layer_cache in cache.layers]
    batch.values = [layer_cache.values for layer_cache in cache.layers]
    batch.resid_pre = entering[layer]
    batch.mlp_in = got[Site("mlp_in", layer)].clone()
    batch.units = got[unit_sites[layer]]
    return {
        "x_final": got[resid_sites[-1]][rows, r],
        "units_p": torch.stack([got[s][rows, p] for s in unit_sites], dim=1),
        "resid_p": torch.stack([x[rows, p] for x in entering], dim=1),
        "mlp_in_p": batch.mlp_in[rows, p],
    }


def _bare_lengths(subject: Subject, texts: Sequence[str], readout: Readout, max_tokens: int) -> np.ndarray:
    """Token count of each bare text (truncated), checking that a prompt keeps them as its prefix."""
    bare = subject.tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
    if is_prompted(readout):
        seen = subject.tokenizer([readout.format_text(t) for t in texts])["input_ids"]
        if any(s[: len(b)] != b for b, s in zip(bare, seen, strict=True)):
            raise UserError(
                "the readout's prompt changes how the texts themselves are tokenised (the bare tokens are "
                "not a prefix of the prompted ones), so the label position cannot be located"
            )
    return np.array([len(b) for b in bare])


def _base_labels(base: Subject, texts, layer: int, index: int, position: str, max_tokens: int):
    """The base model's layer-L neurons on the bare texts: every neuron at the label position, the
    label (the neuron at `last`, its max, or its mean over real tokens) and the label position
    (`max`: the argmax; otherwise the last real token). ([B, d_mlp], [B], [B])"""
    enc = base.encode(texts, max_length=max_tokens)
    site = Site("mlp_post", layer)
    acts = base.run(enc, reads=[site])[site]
    mask, rows = enc["attention_mask"].bool(), torch.arange(len(texts))
    column = acts[..., index]
    pos = last_index(enc["attention_mask"])
    if position == "max":
        pos = column.masked_fill(~mask, float("-inf")).argmax(1)
    label = (column * mask).sum(1) / mask.sum(1) if position == "mean" else column[rows, pos]
    return acts[rows, pos], label, pos


def report_of(trained: Subject, readout: Readout, x_final: torch.Tensor) -> torch.Tensor:
    """The readout's report in the neuron's units from the final residual at r. [N]"""
    features = trained.final_norm(x_final)
    if readout.site.kind == "logits":  # token readouts: only the answer tokens' logits are needed
        answers = trained.logits_from_normed(features, readout.answer_ids)
        return readout.probs_of_answers(answers) @ readout.values.to(answers)
    return readout(features)


def make_batches(
    trained: Subject, texts: Sequence[str], readout: Readout, options: BatteryOptions
) -> tuple[tuple[str, ...], np.ndarray, list[Batch]]:
    """Sort texts by token count (stable), encode them in batches, locate p and r in each.

    A prompted readout sees the whole text followed by its prompt, so texts longer than
    `max_tokens` (whose label was measured on a truncated text) are refused for it."""
    lengths = _bare_lengths(trained, texts, readout, options.max_tokens)
    prompted = is_prompted(readout)
    if prompted:
        full = np.array([len(x) for x in trained.tokenizer(list(texts))["input_ids"]])
        if (full > options.max_tokens).any():
            raise UserError(
                f"{int((full > options.max_tokens).sum())} evaluation texts are longer than max_tokens "
                f"({options.max_tokens}) and a prompted readout cannot see them truncated"
            )
    if (lengths < 2).any():
        raise UserError("every evaluation text needs at least two tokens (position 0 is an attention sink)")
    order = length_order(lengths)
    ordered = tuple(texts[i] for i in order)
    batches = []
    for start in range(0, len(ordered), options.batch_size):
        chunk = ordered[start : start + options.batch_size]
        seen = [readout.format_text(t) for t in chunk] if prompted else list(chunk)
        enc = trained.encode(seen, max_length=None if prompted else options.max_tokens)
        n = torch.as_tensor(lengths[order[start : start + len(chunk)]])
        report_pos = last_index(enc["attention_mask"]).cpu()
        batches.append(Batch(enc, slice(start, start + len(chunk)), n - 1, report_pos, torch.zeros(0)))
    return ordered, lengths[order], batches


def _fill(trained: Subject, base: Subject, batch: Batch, ordered, neuron: Neuron, position: str, options):
    """Labels from the base model (and, for `max`, the label position), then the trained clean pass.
    A frozen checkpoint at the last token needs no separate label pass: its clean pass has them."""
    if base is trained and position == "last":
        got = clean_batch(trained, batch, neuron.layer)
        base_p = got["units_p"][:, neuron.layer]
        label = base_p[:, neuron.index]
    else:
        chunk = list(ordered[batch.texts])
        base_p, label, pos = _base_labels(
            base, chunk, neuron.layer, neuron.index, position, options.max_tokens
        )
        batch.label_pos = pos.cpu()
        got = clean_batch(trained, batch, neuron.layer)
    batch.sinks = find_sinks(batch.mlp_in, batch.real)
    batch.sinks[torch.arange(len(batch.label_pos)), batch.label_pos] = False  # p is never a sink (len ≥ 2)
    return got | {"base_units_p": base_p, "labels": label}


def build_context(
    trained: Subject,
    base: Subject,
    readout: Readout,
    neuron: Neuron,
    position: str,
    texts: Sequence[str],
    groups: Sequence[Any] | None,
    options: BatteryOptions,
    run: dict[str, Any] | None = None,
    progress: bool = False,
    targets: Sequence[Neuron] = (),
) -> Context:
    """Encode the texts, run the clean passes (base for the labels, trained for everything else)."""
    if position == "all":
        raise UserError(
            "the battery's causal tests need one label per text: position 'all' (a label per token) is not "
            "supported; test a checkpoint trained with position last, max or mean"
        )
    texts = list(texts)
    group_of = dict(zip(texts, groups if groups is not None else texts, strict=True))
    ordered, lengths, batches = make_batches(trained, texts, readout, options)
    per_batch = [
        _fill(trained, base, b, ordered, neuron, position, options)
        for b in tqdm(batches, desc="clean passes", disable=not progress, leave=False)
    ]

    def cat(key: str) -> torch.Tensor:
        return torch.cat([got[key] for got in per_batch]).detach()

    x_final = cat("x_final")
    with torch.no_grad():
        features = trained.final_norm(x_final)
        report = report_of(trained, readout, x_final)
    eval_set = EvalSet(
        texts=ordered,
        groups=np.array([str(group_of[t]) for t in ordered]),
        batches=batches,
        labels=cat("labels").double().cpu().numpy(),
        n_tokens=lengths,
        x_final=x_final,
        features=features,
        report=report.double().cpu().numpy(),
        units_p=cat("units_p"),
        resid_p=cat("resid_p"),
        mlp_in_p=cat("mlp_in_p"),
        base_units_p=cat("base_units_p"),
        width=max(int(b.real.shape[1]) for b in batches),
    )
    return Context(
        trained,
        base,
        readout,
        neuron,
        position,
        eval_set,
        options,
        run=dict(run or {}),
        targets=tuple(targets),
    )
