"""Where the report is computed from: the input of the readout, per chunk of texts.

Every source returns, for one chunk, the readout's input at the report positions `[N, d]` (the
readout's site: the final normed residual for the linear head, the logits for token readouts;
rows in the chunk's label order) and, when the model can move the neuron, the neuron's live
activation `[N]` read in the SAME forward pass (so gradient can flow through it). For prompted
(token) readouts the chunks hold the prompted texts, so that pass does not see the raw text the
label is defined on: `read_neuron=False` and the live neuron is read elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from mechcheck.readout import Neuron, readout_positions, target_columns
from mechcheck.subject import Site, Subject, gather_position
from mechcheck.targets import Chunk, n_rows

FINAL_NORM = Site("final_norm")
LOGITS = Site("logits")
Chunks = dict[str, list[Chunk]]


class Source(ABC):
    """Base: `chunks[split]` and `forward(split, i, grad) -> (x [N, d_model], live [N] | None)`."""

    def __init__(self, chunks: Chunks):
        self.chunks = chunks

    @abstractmethod
    def forward(self, split: str, i: int, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The readout's input for chunk `i` of `split`, and the live neuron when it can move."""

    def _report_rows(self, got: torch.Tensor, chunk: Chunk, position: str) -> torch.Tensor:
        return gather_position(got, chunk.enc["attention_mask"], readout_positions(chunk.enc, position))

    def _site_rows(self, subject: Subject, got: dict[Site, torch.Tensor], chunk: Chunk, site: Site):
        """The readout's site at the report positions; logits are computed from the final norm there
        only (the LM head on `[N, d_model]`, not on every position of the batch)."""
        if site == LOGITS:
            return head_logits(subject, self._report_rows(got[FINAL_NORM], chunk, self.position))
        return self._report_rows(got[site], chunk, self.position)


class FeatureSource(Source):
    """Cached readout-site features of the original model (the `frozen` condition, and every condition's
    untrained step 0); `transform` maps them to the readout's input (the LM head, for token readouts)."""

    def __init__(
        self,
        chunks: Chunks,
        features: dict[str, torch.Tensor],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__(chunks)
        self.features = features  # split -> [n_rows, d_model]
        self.transform = transform

    def forward(self, split: str, i: int, grad: bool) -> tuple[torch.Tensor, None]:
        x = self.features[split][self.chunks[split][i].rows]
        return (x if self.transform is None else self.transform(x)), None


class ResumeSource(Source):
    """Runs only the layers after `layer`, from the cached residual leaving it (`after_target`)."""

    def __init__(
        self,
        subject: Subject,
        layer: int,
        position: str,
        chunks: Chunks,
        resid: dict[str, list],
        site: Site = FINAL_NORM,
    ):
        super().__init__(chunks)
        self.subject, self.layer, self.position, self.resid = subject, layer, position, resid
        self.site = site

    def forward(self, split: str, i: int, grad: bool) -> tuple[torch.Tensor, None]:
        chunk = self.chunks[split][i]
        resume = (self.layer, self.resid[split][i])
        got = self.subject.run(chunk.enc, reads=[read_site(self.site)], grad=grad, resume=resume)
        return self._site_rows(self.subject, got, chunk, self.site), None


class FullSource(Source):
    """A full forward pass of the current model, reading the neuron on the way (`unfrozen`); with
    several neurons (a sequence) the live values are `[N, k]`."""

    def __init__(
        self,
        subject: Subject,
        neuron: Neuron | Sequence[Neuron],
        position: str,
        chunks: Chunks,
        site: Site = FINAL_NORM,
        read_neuron: bool = True,
    ):
        super().__init__(chunks)
        self.subject, self.neuron, self.position = subject, neuron, position
        self.neurons = [neuron] if isinstance(neuron, Neuron) else list(neuron)
        self.neuron_sites = list(dict.fromkeys(n.site for n in self.neurons))
        self.site, self.read_neuron = site, read_neuron

    def forward(self, split: str, i: int, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        chunk = self.chunks[split][i]
        reads = [read_site(self.site)]
        got = self.subject.run(
            chunk.enc, reads=[*self.neuron_sites, *reads] if self.read_neuron else reads, grad=grad
        )
        x = self._site_rows(self.subject, got, chunk, self.site)
        if not self.read_neuron:
            return x, None
        live = gather_position(target_columns(got, self.neurons), chunk.enc["attention_mask"], self.position)
        return x, live[:, 0] if isinstance(self.neuron, Neuron) else live


def read_site(site: Site) -> Site:
    """What a source reads for `site`: the final norm when the readout wants logits (see `head_logits`)."""
    return FINAL_NORM if site == LOGITS else site


def head_logits(subject: Subject, final_norm: torch.Tensor) -> torch.Tensor:
    """The model's next-token logits from its final normed residual rows `[N, d_model]` → `[N, vocab]`
    (the output embedding, then Gemma's final logit soft-capping where the config sets it)."""
    logits = subject.model.get_output_embeddings()(final_norm)
    cap = getattr(subject.model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def cache_sites(
    subject: Subject,
    chunks: Sequence[Chunk],
    site: Site,
    position: str,
    progress: bool = False,
    desc: str = "",
) -> list[torch.Tensor]:
    """One no-grad pass of `subject` per chunk; the site's value per chunk (resid: `[B, T, d]`)."""
    out = []
    for chunk in tqdm(chunks, desc=desc or f"cache {site.kind}", disable=not progress, leave=False):
        out.append(subject.run(chunk.enc, reads=[site])[site].detach())
    return out


def final_norm_features(
    subject: Subject, chunks: Sequence[Chunk], position: str, progress: bool = False, desc: str = "features"
) -> torch.Tensor:
    """The final normed residual at the report positions, rows in label order. [n_rows, d_model]"""
    features = torch.empty(n_rows(chunks), subject.d_model, dtype=torch.float32)
    for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        got = subject.run(chunk.enc, reads=[FINAL_NORM])[FINAL_NORM]
        rows = gather_position(got, chunk.enc["attention_mask"], readout_positions(chunk.enc, position))
        features[chunk.rows] = rows.float().cpu()
    return features
