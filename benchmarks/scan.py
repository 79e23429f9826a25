"""Benchmark the neuron scan against bare `transformers` forward passes over the same tokens.

    python benchmarks/scan.py [--model smollm2-135m] [--layer 20] [--texts 128] [--rounds 5]

Conditions, timed round-robin in one process (one warm-up round, then `--rounds` rounds, each
running every condition once; medians reported), on the same texts in the same length-sorted
batches:

  (a) bare forward of the whole model (logits);
  (b) bare forward truncated after layer L: plain torch, an exception raised from a forward
      pre-hook on whatever runs right after layer L (layer L+1, or the final norm), so all of
      layer L runs and nothing after it;
  (c) `mechcheck.scan.scan` of layer L, last token: tokenisation, the nnsight pass (which stops
      after layer L's neuron activations), the position reduction and the statistics updates.

Targets: (c)/(b) <= 1.05; at L = 11 of SmolLM2's 30 layers, (c)/(a) well under 0.5.
Wall-clock and process CPU time are both reported: on a shared machine the wall-clock medians
swing with other people's load, while CPU time (exact with `--threads 1`) does not.
Also reports the fraction of computed tokens that are padding with length-sorted vs random batches.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mechcheck.batching import length_sorted_batches, padding_fraction  # noqa: E402
from mechcheck.corpus import load_corpus  # noqa: E402
from mechcheck.scan import scan, token_lengths  # noqa: E402
from mechcheck.subject import Subject, load_subject  # noqa: E402


class StopForwardError(Exception):
    """Raised from a hook to end a forward pass early."""


def _raise(*_) -> None:
    raise StopForwardError


def full_forward(subject: Subject, encs: list[dict]) -> None:
    with torch.no_grad():
        for enc in encs:
            subject.model(**enc)


def truncated_forward(subject: Subject, encs: list[dict], layer: int, store: list | None = None) -> None:
    """Everything up to and including layer `layer`, then stop (plain torch hooks)."""
    a = subject.anatomy
    after = a.module(a.layer_path(layer + 1)) if layer + 1 < subject.n_layers else a.final_norm()
    handles = [after.register_forward_pre_hook(_raise)]
    if store is not None:
        handles.append(a.down_proj(layer).register_forward_pre_hook(lambda m, args: store.append(args[0])))
    try:
        with torch.no_grad():
            for enc in encs:
                with contextlib.suppress(StopForwardError):
                    subject.model(**enc)
    finally:
        for handle in handles:
            handle.remove()


def check_same_activations(
    subject: Subject, texts: list[str], encs: list[dict], layer: int, bs: int
) -> float:
    """The scan's per-neuron mean equals the truncated forward's (last token), before any timing."""
    store: list[torch.Tensor] = []
    truncated_forward(subject, encs, layer, store)
    last = torch.cat([acts[torch.arange(len(e["attention_mask"])), e["attention_mask"].sum(1) - 1]
                      for acts, e in zip(store, encs, strict=True)])  # fmt: skip
    result = scan(subject, texts, [layer], "last", batch_size=bs)
    diff = float((result.layers[layer].mean - last.double().mean(0).cpu()).abs().max())
    assert diff < 1e-4 * max(1.0, float(last.abs().max())), diff
    return diff


def time_round_robin(conditions: dict[str, Callable[[], None]], rounds: int) -> dict[str, dict[str, list]]:
    """Wall-clock and process CPU seconds of each condition, one per timed round."""
    times: dict[str, dict[str, list]] = {name: {"wall": [], "cpu": []} for name in conditions}
    for round_ in range(rounds + 1):
        for name, run in conditions.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if round_ > 0:  # round 0 is the warm-up
                times[name]["wall"].append(time.perf_counter() - wall)
                times[name]["cpu"].append(time.process_time() - cpu)
        print(f"round {round_}/{rounds} done", file=sys.stderr, flush=True)
    return times


def print_report(times: dict[str, dict[str, list]], layers: list[int], real_tokens: int) -> None:
    med = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    print(f"\n{'condition':<18} {'median s':>9} {'min-max s':>16} {'CPU s':>8} {'real tok/s':>11}")
    for name, t in times.items():
        wall = t["wall"]
        print(
            f"{name:<18} {med[name]['wall']:>9.3f} {min(wall):>7.3f}-{max(wall):<8.3f} "
            f"{med[name]['cpu']:>8.3f} {real_tokens / med[name]['wall']:>11.0f}"
        )
    print()
    full = med["a full forward"]
    for layer in layers:
        c, b = med[f"c scan L{layer}"], med[f"b truncated L{layer}"]
        minima = min(times[f"c scan L{layer}"]["wall"]) / min(times[f"b truncated L{layer}"]["wall"])
        print(
            f"L{layer}: scan / truncated = {c['wall'] / b['wall']:.3f} wall (minima {minima:.3f}), "
            f"{c['cpu'] / b['cpu']:.3f} CPU (target <= 1.05); "
            f"scan / full = {c['wall'] / full['wall']:.3f} wall, {c['cpu'] / full['cpu']:.3f} CPU"
        )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=None, help="a layer besides 11 (default: 2/3 depth)")
    p.add_argument("--texts", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--corpus", default="default", help="corpus spec (default: Wikipedia summaries)")
    p.add_argument("--device", default=None, help="e.g. cuda (default: the model's, CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1: CPU time is exact)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    subject = load_subject(args.model, device=args.device)
    layers = sorted(
        {min(11, subject.n_layers - 1), args.layer if args.layer is not None else 2 * subject.n_layers // 3}
    )
    texts = list(load_corpus(args.corpus, max_texts=args.texts, seed=0).texts)
    lengths = [min(n, args.max_tokens) for n in token_lengths(subject, texts)]
    batches = length_sorted_batches(lengths, args.batch_size, longest_first=True)
    encs = [subject.encode([texts[i] for i in b], max_length=args.max_tokens) for b in batches]
    shuffled = np.random.default_rng(0).permutation(len(texts)).tolist()
    random_batches = [shuffled[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]

    print(f"model {args.model}: {subject.n_layers} layers, d_model {subject.d_model}, d_mlp {subject.d_mlp}")
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, device {subject.device}")
    print(f"{len(texts)} texts, {sum(lengths)} real tokens, batches of {args.batch_size}; padding: "
          f"{100 * padding_fraction(lengths, batches):.1f} % sorted by length, "
          f"{100 * padding_fraction(lengths, random_batches):.1f} % random order")  # fmt: skip
    for layer in layers:
        diff = check_same_activations(subject, texts, encs, layer, args.batch_size)
        print(f"check L{layer}: scan mean == truncated-forward mean (max |diff| {diff:.2e})")

    conditions = {"a full forward": lambda: full_forward(subject, encs)}
    for layer in layers:
        conditions[f"b truncated L{layer}"] = lambda layer=layer: truncated_forward(subject, encs, layer)
        conditions[f"c scan L{layer}"] = lambda layer=layer: scan(
            subject, texts, [layer], "last", batch_size=args.batch_size, max_tokens=args.max_tokens
        )
    print_report(time_round_robin(conditions, args.rounds), layers, sum(lengths))


if __name__ == "__main__":
    main()
