"""Scan a corpus for per-neuron activation statistics and rank neurons (`mechcheck select`).

**Streaming.** Texts are tokenised once to learn their lengths, sorted by token count and cut
into batches of `batch_size`, so a batch pads to a length close to its own texts (random
batches of Wikipedia sentences pad ~45 % of computed tokens, sorted ones ~1 %). Each batch is
one `Subject.mlp_post` pass, which stops right after the deepest scanned layer's neuron
activations and never runs the LM head. Activations are reduced at the label position (`last`,
`max`, `mean`, or `all` real tokens) and folded into running statistics; throughput is reported
in *real* (non-padding) tokens per second.

**Target kinds.** `kind = "neuron"` (default) scans MLP neurons (the down projection's input,
`[d_mlp]` per layer); `kind = "mlp_out_coordinate"` scans the original study's target instead: the
coordinates of each layer's MLP output in the residual basis, centred over d_model (`[d_model]`).

**Statistics, memory flat in corpus size** (`mechcheck.running_stats`): per layer and neuron,
count, mean, M2, M3, M4 (float64, Chan/Pébay parallel update), min, max, and a seeded reservoir
of `RESERVOIR_ROWS` = 4096 label rows shared by all layers, for quantiles (exact up to 4096 rows;
beyond, the rank error of a p-quantile is sqrt(p (1 - p) / 4096): ±0.16 points at p01/p99) and
the chosen neuron's histogram.

**Ranking criteria** (`CRITERIA`; higher is better):

- `std` (default): sample standard deviation (unbiased variance) — a robust spread;
- `quantile_span`: p99 − p01, spread that ignores the outer 1 % on each side;
- `range`: max − min, the study's "wide range" (outlier-driven: a few spikes win);
- `study`: the original study's score, unbiased variance × log1p(max − min);
- `bimodality`: Sarle's bimodality coefficient (G1² + 1) / (G2 + 3 (n−1)² / ((n−2)(n−3))) from
  the sample skewness G1 and excess kurtosis G2 (> 5/9 suggests two modes). Neurons whose std,
  or whose p99 − p01 span, is below `BIMODALITY_FLOOR` × its median over all scanned neurons
  are excluded: near-silent neurons have no usable modes, and a lone spike (n − 1 equal values
  and one outlier) has skewness² ≈ kurtosis ≈ n, so a coefficient near 1 without two real modes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mechcheck.batching import length_sorted_batches
from mechcheck.errors import UserError
from mechcheck.lock import OutputLock
from mechcheck.outputs import claim_file, make_dirs, save_figure, write_json
from mechcheck.readout import NEURON, TARGET_KINDS, Neuron, site_values
from mechcheck.running_stats import RESERVOIR_ROWS, LayerStats, ReservoirSampler
from mechcheck.subject import POSITIONS, Subject, gather_position

CRITERIA = ("std", "quantile_span", "range", "study", "bimodality")
BIMODALITY_FLOOR = 0.5


# --- the scan ----------------------------------------------------------------------------
@dataclass
class ScanResult:
    """Per-layer statistics of a scan, and what it cost."""

    layers: dict[int, LayerStats]
    position: str
    n_texts: int
    n_tokens: int  # real tokens run through the model
    n_computed: int  # tokens including padding
    n_truncated: int  # texts cut to max_tokens
    seconds: float
    kind: str = NEURON  # what was scanned: MLP neurons, or (the study's) mlp_out coordinates

    @property
    def n_rows(self) -> int:
        return next(iter(self.layers.values())).n

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def padding_fraction(self) -> float:
        return 1 - self.n_tokens / self.n_computed if self.n_computed else 0.0

    def values(self, layer: int, index: int) -> np.ndarray:
        """The neuron's label values kept in the reservoir (all of them for small corpora)."""
        stats = self.layers[layer]
        return stats.reservoir[: stats.filled, index].numpy().copy()


def token_lengths(subject: Subject, texts: Sequence[str]) -> list[int]:
    """Token count of each text, uncut, with the tokenizer's own special tokens."""
    return [len(ids) for ids in subject.tokenizer(list(texts))["input_ids"]]


def _check_scan_args(
    subject: Subject, texts: Sequence[str], layers: Sequence[int], position: str, kind: str
) -> None:
    if kind not in TARGET_KINDS:
        raise UserError(f"unknown target kind {kind!r}; choose one of {', '.join(TARGET_KINDS)}")
    if not texts:
        raise UserError("no texts to scan")
    if not layers:
        raise UserError("no layers to scan")
    if position not in POSITIONS:
        raise UserError(f"unknown position {position!r}; choose one of {', '.join(POSITIONS)}")
    for layer in layers:
        subject.anatomy.check_neuron(layer)


def scan(
    subject: Subject,
    texts: Sequence[str],
    layers: Sequence[int],
    position: str,
    *,
    batch_size: int = 16,
    max_tokens: int = 128,
    seed: int = 0,
    progress: bool = False,
    kind: str = NEURON,
) -> ScanResult:
    """Running statistics of every neuron (or mlp_out coordinate, by `kind`) in `layers` over `texts`
    (each cut to `max_tokens`)."""
    from tqdm.auto import tqdm

    _check_scan_args(subject, texts, layers, position, kind)
    layers = sorted(set(layers))
    full_lengths = token_lengths(subject, texts)
    lengths = [min(length, max_tokens) for length in full_lengths]
    sites = [Neuron(layer, 0, kind).site for layer in layers]
    width = subject.d_mlp if kind == NEURON else subject.d_model
    stats = {layer: LayerStats.empty(width) for layer in layers}
    sampler = ReservoirSampler(RESERVOIR_ROWS, seed)
    n_tokens = n_computed = 0
    bar = tqdm(total=len(texts), unit="text", desc="scan", disable=not progress)
    start = time.perf_counter()
    for batch in length_sorted_batches(lengths, batch_size, longest_first=True):  # memory peaks first
        enc = subject.encode([texts[i] for i in batch], max_length=max_tokens)
        mask = enc["attention_mask"]
        got = subject.run(enc, reads=sites)  # {site: [batch, pos, width]}
        rows = {s.layer: gather_position(site_values(got[s], kind), mask, position) for s in sites}
        slots, picks = sampler.plan(rows[layers[0]].shape[0])
        for layer, value in rows.items():
            stats[layer].update(value, slots, picks)
        n_tokens += int(mask.sum())
        n_computed += mask.numel()
        bar.update(len(batch))
        bar.set_postfix(tok_s=f"{n_tokens / (time.perf_counter() - start):.0f}")
    seconds = time.perf_counter() - start
    bar.close()
    for layer_stats in stats.values():
        layer_stats.finish()
    n_truncated = sum(length > max_tokens for length in full_lengths)
    return ScanResult(stats, position, len(texts), n_tokens, n_computed, n_truncated, seconds, kind)


# --- ranking -----------------------------------------------------------------------------
def check_criterion(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise UserError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    return criterion


def _layer_scores(stats: LayerStats, criterion: str) -> torch.Tensor:
    """One layer's `[d_mlp]` scores under `criterion`."""
    if criterion == "std":
        return stats.std
    if criterion == "quantile_span":
        return stats.quantiles["p99"] - stats.quantiles["p01"]
    if criterion == "range":
        return stats.max - stats.min
    if criterion == "study":
        return stats.var * torch.log1p(stats.max - stats.min)
    return stats.bimodality()


def criterion_scores(result: ScanResult, criterion: str) -> dict[int, torch.Tensor]:
    """Each layer's `[d_mlp]` scores under `criterion`; nan marks a neuron that cannot rank."""
    check_criterion(criterion)
    scores = {layer: _layer_scores(stats, criterion) for layer, stats in result.layers.items()}
    if criterion == "bimodality":  # near-silent neurons and lone spikes (coefficient ~1) drop out
        for name in ("std", "quantile_span"):
            spread = {layer: _layer_scores(stats, name) for layer, stats in result.layers.items()}
            floor = BIMODALITY_FLOOR * torch.cat(list(spread.values())).nanquantile(0.5)
            for layer, value in spread.items():
                scores[layer] = scores[layer].masked_fill(~(value >= floor), float("nan"))
    return scores


def neuron_summary(result: ScanResult, layer: int, index: int, score: float) -> dict:
    """DESIGN.md's neuron record: layer, index, mean, std, min, max, quantiles, score."""
    s = result.layers[layer]
    return {
        "layer": layer,
        "index": index,
        "mean": float(s.mean[index]),
        "std": float(s.std[index]),
        "min": float(s.min[index]),
        "max": float(s.max[index]),
        "quantiles": {name: float(q[index]) for name, q in s.quantiles.items()},
        "score": float(score),
    } | ({} if result.kind == NEURON else {"kind": result.kind})


def rank(
    result: ScanResult, criterion: str = "std", top: int = 20, layers: Sequence[int] | None = None
) -> list[dict]:
    """The `top` neurons under `criterion` (among `layers` only, when given), best first; ties go to the
    lower layer, then index."""
    scores = criterion_scores(result, criterion)
    if layers is not None:
        scores = {layer: v for layer, v in scores.items() if layer in set(layers)}
    layer_of = torch.cat([torch.full((len(v),), layer) for layer, v in scores.items()])
    index_of = torch.cat([torch.arange(len(v)) for v in scores.values()])
    flat = torch.cat(list(scores.values()))
    valid = ~flat.isnan()
    order = torch.sort(flat.masked_fill(~valid, float("-inf")), descending=True, stable=True).indices
    order = order[: min(top, int(valid.sum()))]
    return [neuron_summary(result, int(layer_of[i]), int(index_of[i]), float(flat[i])) for i in order]


def select_neuron(
    subject: Subject,
    texts: Sequence[str],
    layers: Sequence[int],
    position: str,
    criterion: str = "std",
    *,
    top: int = 20,
    batch_size: int = 16,
    max_tokens: int = 128,
    seed: int = 0,
    progress: bool = False,
    kind: str = NEURON,
) -> tuple[dict, list[dict], ScanResult]:
    """Scan and rank: (the best neuron's record, the top `top` records, the scan)."""
    check_criterion(criterion)
    result = scan(
        subject, texts, layers, position, batch_size=batch_size, max_tokens=max_tokens, seed=seed,
        progress=progress, kind=kind,
    )  # fmt: skip
    ranked = ranked_or_error(result, criterion, top)
    return ranked[0], ranked, result


def ranked_or_error(
    result: ScanResult, criterion: str, top: int, layers: Sequence[int] | None = None
) -> list[dict]:
    """`rank`, refusing a scan in which no neuron can be ranked."""
    ranked = rank(result, criterion, top, layers)
    if not ranked:
        raise UserError(
            f"no neuron can be ranked by {criterion!r} from {result.n_rows} label rows "
            f"(std needs 2 rows, bimodality 4 and a non-constant neuron)"
        )
    return ranked


def select_bands(
    subject: Subject,
    texts: Sequence[str],
    bands: Sequence[tuple[str, Sequence[int]]],
    position: str,
    criterion: str = "std",
    *,
    top: int = 10,
    max_tokens: int = 128,
    seed: int = 0,
    progress: bool = False,
    kind: str = NEURON,
) -> tuple[list[dict], ScanResult]:
    """One scan over every band's layers (stopped after the deepest), then the top neuron of each band
    `(name, layers)`: `[{band, layers, chosen, top}]` in band order, and the scan."""
    check_criterion(criterion)
    every = sorted({layer for _, layers in bands for layer in layers})
    result = scan(
        subject, texts, every, position, max_tokens=max_tokens, seed=seed, progress=progress, kind=kind
    )
    picks = []
    for name, layers in bands:
        ranked = ranked_or_error(result, criterion, top, layers)
        picks.append({"band": name, "layers": sorted(set(layers)), "chosen": ranked[0], "top": ranked})
    return picks, result


def neuron_histogram_png(values: np.ndarray | torch.Tensor, path: str | Path, title: str) -> Path:
    """A histogram of one neuron's values, written as PNG (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.asarray(values, dtype=np.float64)
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bins = min(60, max(10, len(values) // 20))
    ax.hist(values, bins=bins, color="#4c72b0", edgecolor="white", linewidth=0.3)
    for q in np.quantile(values, [0.01, 0.5, 0.99]):
        ax.axvline(q, color="#c44e52", linestyle="--", linewidth=0.8)
    ax.set(title=title, xlabel="activation (dashed: p01, p50, p99)", ylabel="count")
    return save_figure(fig, path, dpi=120)


# --- the `select` command ----------------------------------------------------------------
def _layers(subject: Subject, layers: Sequence[int] | None) -> list[int]:
    """The requested layers, checked; the middle layer when none are given."""
    if layers is None:
        return [subject.n_layers // 2]
    if not layers:
        raise UserError("--layers lists no layer")
    for layer in layers:
        subject.anatomy.check_neuron(layer)
    return sorted(set(layers))


def _outputs(out: str | Path) -> tuple[Path, Path, Path]:
    """neurons.json, its histogram and its corpus card, side by side."""
    out = Path(out)
    return out, out.with_name(f"{out.stem}_hist.png"), out.with_name(f"{out.stem}_corpus.json")


def _summary(ranked: list[dict], result: ScanResult, criterion: str, outputs: Sequence[Path]) -> str:
    best, layers = ranked[0], ",".join(map(str, result.layers))
    q = best["quantiles"]
    lines = [
        f"chosen neuron: layer {best['layer']}, index {best['index']} "
        f"(criterion {criterion}, score {best['score']:.4g}, position {result.position})",
        f"  mean {best['mean']:.4g}  std {best['std']:.4g}  min {best['min']:.4g}  max {best['max']:.4g}  "
        + "  ".join(f"{k} {v:.4g}" for k, v in q.items()),
        f"scanned layers {layers} over {result.n_texts} texts, {result.n_tokens} tokens "
        f"in {result.seconds:.1f} s: {result.tokens_per_s:.0f} tokens/s, "
        f"{100 * result.padding_fraction:.1f} % padding",
        "",
        f"{'rank':>4} {'layer':>5} {'index':>5} {'score':>10} {'mean':>9} {'std':>8} "
        f"{'min':>9} {'max':>9} {'p01':>9} {'p99':>9}",
    ]
    for i, r in enumerate(ranked[:5], start=1):
        lines.append(
            f"{i:>4} {r['layer']:>5} {r['index']:>5} {r['score']:>10.4g} {r['mean']:>9.4g} {r['std']:>8.4g} "
            f"{r['min']:>9.4g} {r['max']:>9.4g} {r['quantiles']['p01']:>9.4g} {r['quantiles']['p99']:>9.4g}"
        )
    lines.append("wrote " + ", ".join(map(str, outputs)))
    return "\n".join(lines)


def select_command(args: argparse.Namespace) -> int:
    """`mechcheck select`: scan the corpus's train split, rank, write neurons.json + figure + card."""
    from mechcheck.corpus import load_corpus, split_corpus
    from mechcheck.subject import load_subject

    criterion = check_criterion(args.criterion)  # the counts were checked by the parser
    seed = 0 if args.seed is None else args.seed
    outputs = _outputs(args.out)
    for path in outputs:  # refuse early; nothing is written until the scan has finished
        if path.exists():
            claim_file(path, args.overwrite)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    subject = load_subject(args.model)
    layers = _layers(subject, args.layers)
    splits = split_corpus(load_corpus(args.corpus, max_texts=args.max_texts, seed=seed), seed=seed)
    best, ranked, result = select_neuron(
        subject, splits.train, layers, args.position, criterion, top=args.top,
        batch_size=args.batch_size, seed=seed, progress=not args.quiet,
    )  # fmt: skip
    record = {
        "neurons": ranked, "criterion": criterion, "position": args.position, "corpus": splits.card,
        "model": args.model, "layers": layers, "tokens_per_s": result.tokens_per_s,
        "n_texts": result.n_texts, "n_tokens": result.n_tokens, "n_rows": result.n_rows,
        "padding_fraction": result.padding_fraction, "seed": seed, "split": "train",
    }  # fmt: skip
    title = f"{args.model} layer {best['layer']} neuron {best['index']} ({args.position}, n={result.n_rows})"
    make_dirs(outputs[0].parent)
    with OutputLock(outputs[0].parent / f".{outputs[0].name}.lock", str(outputs[0])):
        out, hist, card = (claim_file(path, args.overwrite) for path in outputs)  # again, under the lock
        write_json(out, record)
        neuron_histogram_png(result.values(best["layer"], best["index"]), hist, title)
        write_json(card, splits.card)
    print(_summary(ranked, result, criterion, outputs))
    return 0
