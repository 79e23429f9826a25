"""Trainer speed on SmolLM2: seconds per training step per condition, and the frozen fit end to end.

Every condition steps on the SAME batches (batch 16 of real Wikipedia sentences from the default
corpus, length-sorted chunks from the middle of the length distribution), round robin, after
one warm-up round; the table shows the median, the ratio to a full `unfrozen` step and to a bare
`transformers` forward pass over the same tokens (measured in the same run). The `frozen` fit is
timed end to end without the disk cache: feature pass + closed-form ridge + SGD on the features.

    python benchmarks/train.py [--layer 15] [--index 0] [--rounds 5] [--texts 600]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mechcheck.corpus import load_corpus, split_corpus
from mechcheck.experiment import TrainConfig
from mechcheck.readout import Neuron
from mechcheck.subject import load_subject
from mechcheck.targets import build_targets
from mechcheck.train.bench import Bench
from mechcheck.train.cell import build_task
from mechcheck.train.conditions import CONDITIONS
from mechcheck.train.frozen_fit import cached_features, fit_ridge
from mechcheck.train.loop import Loop, train_loop

CONDITION_NAMES = ("unfrozen", "after_target", "frozen")


def bare_forward(bench: Bench, batches: list[int]) -> float:
    model, start = bench.subject.model, time.perf_counter()
    with torch.no_grad():
        for i in batches:
            model(**bench.chunks["train"][i].enc)
    return (time.perf_counter() - start) / len(batches)


def step_times(bench: Bench, cfg: TrainConfig, batches: list[int], rounds: int) -> dict[str, list[float]]:
    """Median-ready seconds per step of each condition, round robin over the same batches."""
    times: dict[str, list[float]] = {name: [] for name in (*CONDITION_NAMES, "bare_forward")}
    for r in range(rounds + 1):  # round 0 warms up
        for name in CONDITION_NAMES:
            setup = build_task(bench, CONDITIONS.get(name), "fixed", 0, cfg)
            loop = Loop(setup.task, cfg, 0, None, "")
            start = time.perf_counter()
            for i in batches:
                loop.update(i)
            if r:
                times[name].append((time.perf_counter() - start) / len(batches))
            bench.restore()
        forward = bare_forward(bench, batches)
        if r:
            times["bare_forward"].append(forward)
    return times


def frozen_fit(bench: Bench, cfg: TrainConfig) -> dict[str, float]:
    start = time.perf_counter()
    features, _ = cached_features(bench.subject, bench.targets, bench.chunks, cache_dir=None)
    t_features = time.perf_counter() - start
    _, ridge = fit_ridge(features, bench.targets, cfg.ridge_alpha)
    setup = build_task(bench, CONDITIONS.get("frozen"), "fixed", 0, cfg)
    result = train_loop(setup.task, cfg, 0)
    n_tokens = sum(c.n_tokens for chunks in bench.chunks.values() for c in chunks)
    return {
        "features_s": t_features, "tokens": n_tokens, "ridge_s": ridge["seconds"], "sgd_s": result.seconds,
        "sgd_steps": result.steps, "ridge_val_mse": ridge["val"]["mse"], "sgd_val_mse": result.best_val_mse,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps per condition per round")
    ap.add_argument("--texts", type=int, default=600)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    subject = load_subject("smollm2-135m")
    splits = split_corpus(load_corpus("default", max_texts=args.texts, seed=0), seed=0)
    targets = build_targets(subject, splits, Neuron(args.layer, args.index), "last", 128)
    cfg = TrainConfig(epochs=2, eval_every=50, drift_texts=0, lr=1e-4)
    bench = Bench(subject, targets, cfg.batch_size, cfg.drift_texts, layer=targets.layer)
    mid = len(bench.chunks["train"]) // 2
    batches = list(range(mid, mid + args.steps))
    tokens = sum(bench.chunks["train"][i].n_tokens for i in batches) / len(batches)
    bench.resid(), bench.features()  # caches built outside the timed steps (their cost is below)
    times = step_times(bench, cfg, batches, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    threads = torch.get_num_threads()
    print(f"SmolLM2-135M, neuron layer {args.layer}/{subject.n_layers}, batch 16, {tokens:.0f} tokens/step,")
    print(f"{threads} threads, median of {args.rounds} rounds after one warm-up round")
    print(f"{'condition':<14}{'s/step':>9}{'× unfrozen':>12}{'× bare fwd':>12}{'min-max s':>16}")
    for name in (*CONDITION_NAMES, "bare_forward"):
        lo, hi = min(times[name]), max(times[name])
        ratio_u, ratio_f = med[name] / med["unfrozen"], med[name] / med["bare_forward"]
        print(f"{name:<14}{med[name]:>9.3f}{ratio_u:>12.3f}{ratio_f:>12.2f}{f'{lo:.3f}-{hi:.3f}':>16}")
    cache = bench.seconds.get("resid_cache", 0)
    print(f"after_target cache (resid_post {args.layer}, all splits, once per experiment): {cache:.1f} s")
    fit = frozen_fit(bench, cfg)
    total = fit["features_s"] + fit["ridge_s"] + fit["sgd_s"]
    speed = fit["tokens"] / fit["features_s"]
    print(f"frozen fit end to end: {total:.1f} s = feature pass {fit['features_s']:.1f} s ", end="")
    print(f"({fit['tokens']} tokens, {speed:.0f} tok/s) + ridge {fit['ridge_s']:.2f} s ", end="")
    print(f"+ SGD {fit['sgd_s']:.2f} s ({fit['sgd_steps']} steps)")
    print(f"frozen val MSE: ridge {fit['ridge_val_mse']:.4g}, SGD {fit['sgd_val_mse']:.4g}")


if __name__ == "__main__":
    main()
