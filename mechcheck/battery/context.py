"""What a probe is given: subjects, readout, evaluation set, one cached clean pass per batch.

The clean pass of each batch is computed once and shared by every probe: the clean report, the
readout's input features, the neuron (and the random neurons of its layer) at every position,
the residual after layers L-1 and L, and every layer's residual at the report positions.
`Context.report(b, edits)` runs an intervention on batch `b` through `Subject.run`, resuming from
the cached residual so the prefix before the first edited layer is never recomputed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mechcheck.battery.base import BatteryOptions
from mechcheck.errors import UserError
from mechcheck.readout import Neuron, Readout, report_positions
from mechcheck.subject import Edit, Site, Subject, gather_position

EditsFor = Callable[[int], Sequence[Edit]]


@dataclass
class Batch:
    """Texts of similar length, encoded once; `rows`/`texts` index the eval-order arrays.

    `enc` is what the model sees (the readout's prompt around each text, if it has one); `raw` is
    the bare texts' encoding when that differs (labels are always measured on the bare texts)."""

    enc: dict[str, torch.Tensor]
    rows: slice
    texts: slice
    raw: dict[str, torch.Tensor] | None = None

    @property
    def label_enc(self) -> dict[str, torch.Tensor]:
        return self.enc if self.raw is None else self.raw


@dataclass
class EvalSet:
    """Evaluation texts (length-sorted), their batches and the fixed labels from the base model."""

    texts: tuple[str, ...]
    batches: list[Batch]
    labels: np.ndarray  # [n] the base model's neuron at `position`
    text_of: np.ndarray  # [n] the text each label row belongs to
    token_of: np.ndarray  # [n] token id at each label position (last token of the bare text)
    source: str
    columns_before: np.ndarray  # [n, 1 + n_random] neuron and random neurons at the label position, base
    columns_after: np.ndarray  # [n, 1 + n_random] the same in the trained model

    @property
    def n(self) -> int:
        return len(self.labels)


@dataclass
class CleanPass:
    """One batch's clean forward pass, kept for every probe."""

    neurons: torch.Tensor  # [batch, pos, 1 + n_random] mlp_post at L: the neuron, then random neurons
    resid_prev: torch.Tensor | None  # [batch, pos, d_model] resid_post at L-1 (None when L = 0)
    resid: torch.Tensor  # [batch, pos, d_model] resid_post at L
    layers: torch.Tensor  # [rows, n_layers, d_model] every layer's resid_post at the report positions
    features: torch.Tensor | None = None  # [rows, d_model] final_norm at the report positions
    report: torch.Tensor | None = None  # [rows] in the neuron's units
    sums: dict[Site, torch.Tensor] = field(default_factory=dict)  # per site: sum over real tokens [d_model]
    n_tokens: int = 0


def is_prompted(readout: Readout) -> bool:
    return readout.format_text("\x00") != "\x00"


def report_value(readout: Readout, x: torch.Tensor) -> torch.Tensor:
    """The report in the neuron's units (token readouts: the expected value over answer classes)."""
    in_units = getattr(readout, "in_units", None)
    return in_units(x) if in_units is not None else readout(x)


def make_batches(
    subject: Subject, texts: Sequence[str], readout: Readout, options: BatteryOptions, position: str
) -> tuple[tuple[str, ...], list[Batch]]:
    """Sort texts by token count (stable) and encode them in batches of `options.batch_size`."""
    prompted, max_tokens = is_prompted(readout), options.max_tokens
    seen = [readout.format_text(t) for t in texts] if prompted else list(texts)
    ids = subject.tokenizer(seen, truncation=True, max_length=max_tokens)["input_ids"]
    order = np.argsort([len(x) for x in ids], kind="stable")
    ordered = tuple(texts[i] for i in order)
    batches, row = [], 0
    for start in range(0, len(ordered), options.batch_size):
        chunk = ordered[start : start + options.batch_size]
        raw = subject.encode(chunk, max_length=max_tokens)
        enc = (
            subject.encode([readout.format_text(t) for t in chunk], max_length=max_tokens)
            if prompted
            else raw
        )
        n_rows = int(enc["attention_mask"].sum()) if position == "all" else len(chunk)
        batches.append(
            Batch(enc, slice(row, row + n_rows), slice(start, start + len(chunk)), raw if prompted else None)
        )
        row += n_rows
    return ordered, batches


def label_columns(
    subject: Subject, batch: Batch, neuron: Neuron, columns: list[int], position: str
) -> torch.Tensor:
    """The cached columns at the label position of the bare texts (an early-stopped pass). [rows, k]"""
    site = Site("mlp_post", neuron.layer)
    acts = subject.run(batch.label_enc, reads=[site])[site][..., columns]
    return gather_position(acts, batch.label_enc["attention_mask"], position)


def clean_pass(
    subject: Subject, batch: Batch, neuron: Neuron, columns: list[int], position: str, readout: Readout | None
) -> CleanPass:
    """Read everything the probes reuse in one forward pass (to the readout's site, if given)."""
    n_layers, layer, final = subject.n_layers, neuron.layer, Site("final_norm")
    resid_sites = [Site("resid_post", i) for i in range(n_layers)]
    mlp_in = Site("mlp_in", layer)
    reads = [
        *resid_sites,
        mlp_in,
        Site("mlp_post", layer),
        *([final, readout.site] if readout is not None else []),
    ]
    got = subject.run(batch.enc, reads=list(dict.fromkeys(reads)))
    mask, where = batch.enc["attention_mask"], report_positions(batch.enc, position)
    layers = torch.stack([gather_position(got[s], mask, where) for s in resid_sites], dim=1)
    real = mask.bool()
    out = CleanPass(
        neurons=got[Site("mlp_post", layer)][..., columns].clone(),
        resid_prev=got[resid_sites[layer - 1]] if layer > 0 else None,
        resid=got[resid_sites[layer]],
        layers=layers,
        sums={s: got[s][real].double().sum(0) for s in [mlp_in, *resid_sites[layer:]]},
        n_tokens=int(real.sum()),
    )
    if readout is not None:
        out.features = gather_position(got[final], mask, where)
        out.report = report_value(readout, gather_position(got[readout.site], mask, where)).detach()
    return out


@dataclass
class Context:
    """Everything a probe may use. Build it with `build_context`."""

    trained: Subject
    base: Subject
    readout: Readout
    neuron: Neuron
    position: str
    eval: EvalSet
    options: BatteryOptions
    clean: list[CleanPass]
    base_clean: list[CleanPass]
    random_neurons: np.ndarray  # indices of random neurons of the neuron's layer (never the neuron)
    null_batches: list[int]  # the batches the nulls are measured on
    run: dict[str, Any] = field(default_factory=dict)  # the checkpoint's run.json
    results: dict[str, Any] = field(default_factory=dict)  # earlier probes' results in this battery
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    probe: str = ""
    audit: bool = False  # record every edit and check its value is present in the activations
    interventions: list[dict[str, Any]] = field(default_factory=list)
    targets: tuple[Neuron, ...] = ()  # every neuron the checkpoint reports (one: (neuron,)); see cross_talk

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets) or (self.neuron,)

    # --- bookkeeping -------------------------------------------------------------------------
    def start_probe(self, name: str) -> None:
        """Each probe gets its own seeded generator, so a subset of probes gives the same numbers."""
        self.probe = name
        self.rng = np.random.default_rng([self.options.seed, zlib.crc32(name.encode())])

    def seed(self) -> int:
        """A fresh integer seed from the probe's generator (for bootstraps)."""
        return int(self.rng.integers(2**31))

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

    @property
    def clean_report(self) -> np.ndarray:
        return torch.cat([c.report for c in self.clean]).double().cpu().numpy()

    @property
    def groups(self) -> np.ndarray | None:
        """Bootstrap units: texts (only differs from rows for position `all`)."""
        return self.eval.text_of if self.position == "all" else None

    def rows(self, batches: Sequence[int] | None = None) -> np.ndarray:
        """Label rows (eval order) of the given batches (default: all)."""
        picked = range(len(self.eval.batches)) if batches is None else batches
        return np.concatenate([np.arange(self.eval.n)[self.eval.batches[b].rows] for b in picked])

    def token_values(self, base: bool = False) -> np.ndarray:
        """The cached neuron columns at every real token. [n_tokens, 1 + n_random]"""
        passes = self.base_clean if base else self.clean
        out = [
            c.neurons[b.enc["attention_mask"].bool()] for c, b in zip(passes, self.eval.batches, strict=True)
        ]
        return torch.cat(out).double().cpu().numpy()

    def site_mean(self, site: Site) -> torch.Tensor:
        """Mean of the (trained) clean residual at `site` over every real token (mlp_in at L,
        resid_post at L and later). [d_model]"""
        total = sum(c.sums[site] for c in self.clean)
        return (total / sum(c.n_tokens for c in self.clean)).float()

    def text_values(self, i: int, column: int = 0) -> torch.Tensor:
        """Cached (trained) neuron column at the real tokens of eval text `i`. [its tokens]"""
        starts = [batch.texts.start for batch in self.eval.batches]
        b = int(np.searchsorted(starts, i, side="right")) - 1
        row = i - starts[b]
        mask = self.eval.batches[b].enc["attention_mask"][row].bool()
        return self.clean[b].neurons[row, mask, column]

    # --- interventions -----------------------------------------------------------------------
    def report(self, b: int, edits: Sequence[Edit] = (), grad: bool = False) -> torch.Tensor:
        """The report on batch `b` with `edits` applied, resuming from the cached residual. [rows]"""
        batch, readout = self.eval.batches[b], self.readout
        edits, resume = self._plan(b, list(edits))
        log: list[tuple[Site, torch.Tensor, float]] = []
        if self.audit:
            edits = [(site, self._audited(site, fn, log)) for site, fn in edits]
        reads = [readout.site, *([s for s, _ in edits] if self.audit else [])]
        got = self.trained.run(batch.enc, reads=reads, edits=edits, grad=grad, resume=resume)
        if self.audit:
            self._record(log, got)
        x = gather_position(
            got[readout.site], batch.enc["attention_mask"], report_positions(batch.enc, self.position)
        )
        return report_value(readout, x)

    def reports(self, edits_for: EditsFor, batches: Sequence[int] | None = None) -> np.ndarray:
        """Reports over several batches (default: all), concatenated in eval order."""
        picked = range(len(self.eval.batches)) if batches is None else batches
        return np.concatenate([self.report(b, edits_for(b)).detach().double().cpu().numpy() for b in picked])

    def _plan(self, b: int, edits: list[Edit]) -> tuple[list[Edit], tuple[int, torch.Tensor] | None]:
        """Where to resume: after L when every edit is later; edits at resid_post L are applied to
        the cached residual directly (not in audit mode); edits inside layer L resume after L-1."""
        clean, layer = self.clean[b], self.layer
        first = min(
            (s.layer if s.layer is not None else self.trained.n_layers for s, _ in edits), default=None
        )
        if first is None or first > layer:
            return edits, (layer, clean.resid.clone())
        at_layer = [e for e in edits if e[0].layer == layer]
        if first == layer and not self.audit and all(s.kind == "resid_post" for s, _ in at_layer):
            resid = clean.resid.clone()
            for _, fn in at_layer:
                resid = fn(resid)
            return [e for e in edits if e[0].layer != layer], (layer, resid)
        if first == layer and clean.resid_prev is not None:
            return edits, (layer - 1, clean.resid_prev.clone())
        return edits, None

    @staticmethod
    def _audited(site: Site, fn: Callable[[torch.Tensor], torch.Tensor], log: list) -> Callable:
        def wrapped(x: torch.Tensor) -> torch.Tensor:
            y = fn(x)
            log.append((site, y, float((y.detach() - x.detach()).abs().max())))
            return y

        return wrapped

    def _record(self, log: list[tuple[Site, torch.Tensor, float]], got: dict[Site, torch.Tensor]) -> None:
        last = {site: (y, changed) for site, y, changed in log}
        for site, (y, changed) in last.items():
            present = bool(torch.allclose(got[site].detach(), y.detach(), atol=1e-5, rtol=1e-5))
            self.interventions.append(
                {
                    "probe": self.probe,
                    "site": f"{site.kind}@{site.layer}",
                    "changed": changed,
                    "present": present,
                }
            )


def _pick_null_batches(batches: list[Batch], n_texts: int, rng: np.random.Generator) -> list[int]:
    picked, count = [], 0
    for b in rng.permutation(len(batches)):
        if count >= n_texts:
            break
        picked.append(int(b))
        count += batches[b].texts.stop - batches[b].texts.start
    return sorted(picked)


def _eval_set(
    ordered: tuple[str, ...], batches: list[Batch], passes: tuple[list[CleanPass], list[CleanPass]],
    subjects: tuple[Subject, Subject], neuron: Neuron, columns: list[int], position: str, source: str,
) -> EvalSet:  # fmt: skip
    """Labels and the cached columns at the label positions (base, trained), text and token ids."""
    (base_clean, clean), (base, trained) = passes, subjects
    before, after, text_of, token_of = [], [], [], []
    for batch, b_pass, t_pass in zip(batches, base_clean, clean, strict=True):
        enc = batch.label_enc
        mask, where = enc["attention_mask"], report_positions(enc, position)
        if batch.raw is None:
            before.append(gather_position(b_pass.neurons, mask, position))
            after.append(gather_position(t_pass.neurons, mask, position))
        else:
            before.append(label_columns(base, batch, neuron, columns, position))
            same = base is trained
            after.append(before[-1] if same else label_columns(trained, batch, neuron, columns, position))
        token_of.append(gather_position(enc["input_ids"][..., None], mask, where)[:, 0])
        rows = torch.arange(mask.shape[0])[:, None, None].expand(*mask.shape, 1)
        text_of.append(gather_position(rows, mask, where)[:, 0] + batch.texts.start)
    before_np = torch.cat(before).double().cpu().numpy()
    return EvalSet(
        ordered, batches, before_np[:, 0].copy(), torch.cat(text_of).numpy(),
        torch.cat(token_of).cpu().numpy(), source, before_np, torch.cat(after).double().cpu().numpy(),
    )  # fmt: skip


def build_context(
    trained: Subject,
    base: Subject,
    readout: Readout,
    neuron: Neuron,
    position: str,
    texts: Sequence[str],
    options: BatteryOptions,
    source: str,
    run: dict[str, Any] | None = None,
    progress: bool = False,
    targets: Sequence[Neuron] = (),
) -> Context:
    """Encode the texts, run the clean passes (base and trained) and fix the random choices.
    `targets`: every neuron of a several-neuron checkpoint (`neuron` is the one this view reports)."""
    if position == "all" and is_prompted(readout):
        raise UserError(
            "position 'all' with a prompted (token-space) readout: the battery cannot line up "
            "the reports with the labels; use position last, max or mean"
        )
    rng = np.random.default_rng(options.seed)
    others = np.delete(np.arange(trained.d_mlp), neuron.index)
    random_neurons = np.sort(rng.choice(others, size=min(options.n_random, len(others)), replace=False))
    columns = [neuron.index, *random_neurons.tolist()]
    ordered, batches = make_batches(base, texts, readout, options, position)
    same = base is trained
    base_clean, clean = [], []
    for batch in tqdm(batches, desc="clean passes", disable=not progress, leave=False):
        base_clean.append(clean_pass(base, batch, neuron, columns, position, readout if same else None))
        clean.append(
            base_clean[-1] if same else clean_pass(trained, batch, neuron, columns, position, readout)
        )
    passes, subjects = (base_clean, clean), (base, trained)
    eval_set = _eval_set(ordered, batches, passes, subjects, neuron, columns, position, source)
    null_batches = _pick_null_batches(batches, options.n_null_texts, rng)
    return Context(
        trained, base, readout, neuron, position, eval_set, options, clean, base_clean, random_neurons,
        null_batches, run=dict(run or {}), targets=tuple(targets),
    )  # fmt: skip
