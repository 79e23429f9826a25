"""The bench: everything the runs of one experiment share, computed once from the ORIGINAL model.

The subject and its pristine weights (restored after every run that trains them), the target
set, the length-sorted training chunks of every split, the drift reference (original next-token
log-probs), and two lazily built caches: the frozen condition's final-norm features and the
after-target residual leaving `layer`.

`layer` is where every condition's frozen prefix ends (the resume layer): `after_target` trains the
layers after it, from its cached output. For a run on the bench's own neurons it is the deepest
neuron's layer (`targets.layer`); a cross-prediction reporter keeps its OWN neuron's layer whichever
model's labels a run trains on (`mechcheck.train.cell.train_run`'s `targets`), so the two cells of
its row train the same parameters and differ only in the labels.

With a `TextTable` of the texts the model reads (`mechcheck.train.table`: one pass over every text
of the experiment, shared by its seeds) both caches are slices of the table; without one they are
computed here (the features on disk, the residual on disk in `resid_dir` when given, for other
processes running cells of the same experiment).

With a prompted (token) readout the chunks hold the prompted texts — what the model reads and the
readout answers — while the target set's labels stay those of the raw texts (see
`mechcheck.train.readouts`); the caches are then of the prompted texts too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from mechcheck.checkpoint import base_weights_sha256
from mechcheck.readout import Readout
from mechcheck.subject import Site, Subject
from mechcheck.targets import SPLITS, TargetSet, make_chunks
from mechcheck.tensor_cache import content_key, load_or_compute, model_digest
from mechcheck.train.frozen_fit import cached_features
from mechcheck.train.monitors import Drift
from mechcheck.train.readouts import prompted_texts
from mechcheck.train.sources import Chunks, cache_sites
from mechcheck.train.table import TextTable

RESID_VERSION = "mechcheck-resid/1"


class Bench:
    def __init__(
        self,
        subject: Subject,
        targets: TargetSet,
        batch_size: int,
        drift_texts: int,
        cache_dir: Path | None = None,
        progress: bool = False,
        prompt: Readout | None = None,
        table: TextTable | None = None,
        original: dict[str, torch.Tensor] | None = None,
        resid_dir: Path | None = None,
        *,
        layer: int,
    ):
        start = time.perf_counter()
        subject.anatomy.check_neuron(layer)
        self.table, self.layer = table, layer
        self.subject, self.targets, self.cache_dir, self.progress = subject, targets, cache_dir, progress
        self.resid_dir = resid_dir
        self.batch_size, self.prompted = batch_size, prompt is not None
        t = targets
        self.texts = {s: list(t.texts(s)) for s in SPLITS}  # what the model reads
        self.max_tokens = t.max_tokens
        if prompt is not None:
            prompted = {s: prompted_texts(subject, t.texts(s), prompt, t.max_tokens) for s in SPLITS}
            self.texts = {s: texts for s, (texts, _) in prompted.items()}
            self.max_tokens = max(limit for _, limit in prompted.values())  # no prompt is ever cut
        self.chunks: Chunks = {
            s: make_chunks(subject, self.texts[s], batch_size, self.max_tokens, t.position) for s in SPLITS
        }
        if original is None:
            original = {k: v.detach().clone() for k, v in subject.model.state_dict().items()}
        self.original = original  # shared by the benches of one experiment's seeds
        self.base_weights_sha256 = base_weights_sha256(subject, targets.neurons)
        texts = targets.val_texts[:drift_texts]
        self.drift = Drift(subject, texts, targets.max_tokens, batch_size) if texts else None
        self._features: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
        self._resid: dict[str, list[torch.Tensor]] | None = None
        self.seconds = {"bench": time.perf_counter() - start}

    def features(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Final-norm features of the original model per split (disk cache)."""
        if self._features is None and self.table is not None and self.table.features is not None:
            features = {s: self.table.features_for(self.texts[s]) for s in SPLITS}
            self._features = features, {"table": True, "seconds": 0.0}
        if self._features is None:
            self.restore()
            args = (self.subject, self.targets, self.chunks, self.cache_dir, self.progress)
            self._features = cached_features(*args)
        return self._features

    def has_features(self) -> bool:
        """Whether the original model's features come without a pass (from the table)."""
        return self._features is not None or (self.table is not None and self.table.features is not None)

    def resid(self) -> dict[str, list[torch.Tensor]]:
        """The original model's residual leaving `layer`, per chunk of each split (a slice of the
        table when there is one; else kept in a file in `resid_dir` when given)."""
        if self._resid is None and self.table is not None and self.table.resid is not None:
            assert self.table.layer == self.layer, "the table's residual is of another layer"
            self._resid = {
                s: [self.table.resid_for(c, self.texts[s]) for c in self.chunks[s]] for s in SPLITS
            }
        if self._resid is None:
            self.restore()
            start = time.perf_counter()
            site = Site("resid_post", self.layer)
            position = self.targets.position

            def compute() -> dict[str, torch.Tensor]:
                return {
                    f"{s}/{i}": resid
                    for s in SPLITS
                    for i, resid in enumerate(
                        cache_sites(self.subject, self.chunks[s], site, position, self.progress, f"resid {s}")
                    )
                }

            def valid(flat: dict[str, torch.Tensor]) -> bool:
                return len(flat) == sum(len(self.chunks[s]) for s in SPLITS)

            flat, _ = load_or_compute(self._resid_file(site), compute, valid, {"format": RESID_VERSION})
            self._resid = {s: [flat[f"{s}/{i}"] for i in range(len(self.chunks[s]))] for s in SPLITS}
            self.seconds["resid_cache"] = time.perf_counter() - start
        return self._resid

    def _resid_file(self, site: Site) -> Path | None:
        if self.resid_dir is None:
            return None
        head = {"version": RESID_VERSION, "model": model_digest(self.subject.model), "layer": site.layer}
        head |= {"position": self.targets.position, "max_tokens": self.max_tokens}
        head["batch_size"] = self.batch_size
        return self.resid_dir / f"{content_key(head, *self.texts.items())}.safetensors"

    def restore(self) -> None:
        restore_weights(self.subject.model, self.original)


def restore_weights(model: torch.nn.Module, original: dict[str, torch.Tensor]) -> None:
    """Put the original weights back (exactly) and make every parameter trainable again."""
    current = model.state_dict()
    if any(not torch.equal(current[k], v) for k, v in original.items()):
        model.load_state_dict(original)
    for p in model.parameters():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    model.eval()
