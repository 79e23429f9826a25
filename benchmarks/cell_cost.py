"""What one training cell of an experiment costs on this machine, measured on a few steps and extrapolated.

For the experiment (or one `[[variant]]` of it) on a subsample of its corpus: the one pass over every
text (`mechcheck.train.table`), the drift reference, then for every (condition, label regime) a few
optimiser steps, one evaluation and one test-split prediction, and a bare `transformers` forward
(with LM head) over the test texts in the same process — the unit the battery's budget is counted in.
Extrapolated to the experiment's own size: corpus texts, steps (epochs × batches, capped by
max_steps), evaluations (every eval_every steps, step 0 free) and test texts. Every figure is wall
seconds; `cpu` repeats the cell figures in this process's CPU seconds (`time.process_time`), which
a machine shared with other jobs inflates far less than wall time.

    OMP_NUM_THREADS=1 python benchmarks/cell_cost.py experiments/default.toml [--variant NAME]
        [--texts 400] [--steps 3] [--layer L] [--json out.json]

`--layer` fixes the neuron's layer when the experiment selects it (the cost depends on the layer only).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import replace

import torch

from mechcheck.corpus import experiment_splits
from mechcheck.experiment import load_experiment, variants
from mechcheck.readout import Neuron
from mechcheck.subject import load_subject
from mechcheck.targets import SPLITS
from mechcheck.train.bench import Bench
from mechcheck.train.cell import build_task
from mechcheck.train.conditions import plan
from mechcheck.train.loop import Loop, total_steps
from mechcheck.train.monitors import predict_split
from mechcheck.train.plan import build_tables
from mechcheck.train.readouts import fit_token_readout, is_token


def subsample(splits, n: int):
    """The first `n` texts of the corpus, split as the experiment splits them."""
    total = sum(len(getattr(splits, s)) for s in SPLITS)
    keep = {s: list(getattr(splits, s))[: max(8, round(n * len(getattr(splits, s)) / total))] for s in SPLITS}
    return keep, {s: len(getattr(splits, s)) for s in SPLITS}


class Clock:
    """Wall and CPU seconds of a block: `with Clock() as c: ...; c.wall, c.cpu`."""

    def __enter__(self) -> Clock:
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def bare_forward(subject, chunks) -> Clock:
    with Clock() as clock, torch.inference_mode():
        for chunk in chunks:
            subject.model(**chunk.enc)
    return clock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment")
    ap.add_argument("--variant", default=None)
    ap.add_argument("--texts", type=int, default=400, help="corpus texts to measure on")
    ap.add_argument("--steps", type=int, default=3, help="timed optimiser steps per condition")
    ap.add_argument("--layer", type=int, default=None, help="neuron layer when the experiment selects it")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    e = load_experiment(args.experiment)
    if args.variant:
        e = variants(e, args.experiment)[args.variant]
    n = e.neuron
    layer = n.layer if n.layer is not None else args.layer
    if layer is None:
        raise SystemExit("the experiment selects its neuron: give --layer")
    neuron = Neuron(layer, n.index or 0, n.target)
    e = replace(e, neuron=replace(n, layer=layer, index=neuron.index, bands=(), band=None))
    seed = e.train.seeds[0]
    start = time.perf_counter()
    subject = load_subject(e.subject.model)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    splits = experiment_splits(e, [seed])[1][seed]
    corpus_s = time.perf_counter() - start
    small, full = subsample(splits, args.texts)
    pairs = plan(e.train.conditions, e.train.target_modes)
    texts = [t for s in SPLITS for t in small[s]]
    with Clock() as tables:
        labels, table = build_tables(e, subject, (neuron,), texts, pairs, len(e.train.seeds), False)
    targets = labels.targets(small)
    prompt = fit_token_readout(e.train.readout, subject, targets) if is_token(e.train.readout) else None
    start = time.perf_counter()
    bench = Bench(
        subject, targets, e.train.batch_size, e.train.drift_texts, None, False, prompt, table,
        layer=targets.layer,
    )  # fmt: skip
    bench_s = time.perf_counter() - start
    test_chunks = bench.chunks["test"]
    bare = bare_forward(subject, test_chunks)
    per_text_bare, per_text_bare_cpu = bare.wall / len(small["test"]), bare.cpu / len(small["test"])
    rows = []
    for condition, mode in pairs:
        cfg = e.train.for_condition(condition.name)
        setup = build_task(bench, condition, mode, seed, cfg)
        loop = Loop(setup.task, cfg, seed, None, "")
        n_chunks = len(bench.chunks["train"])
        clocks = []
        for i in range(args.steps + 1):  # the first step warms up
            with Clock() as clock:
                loop.update(
                    (n_chunks // 2 + i) % n_chunks
                )  # typical lengths: the middle of the sorted chunks
            clocks.append(clock)
        with Clock() as evaluation:
            setup.task.evaluate()
        with Clock() as val:  # the part of an evaluation that grows with the val split
            predict_split(setup.source, setup.readout, targets, "val", standardised=setup.standardised)
        with Clock() as test:
            predict_split(setup.source, setup.readout, targets, "test", standardised=setup.standardised)
        bench.restore()
        n_batches = math.ceil(full["train"] / e.train.batch_size)
        steps = total_steps(cfg, n_batches)
        evals = math.ceil(steps / cfg.eval_every) + (
            0 if bench.has_features() else 1
        )  # step 0 from the table
        scale_val = full["val"] / len(small["val"])
        scale_test = full["test"] / len(small["test"])
        trains = bool(condition.trainable(subject, layer))
        runs = (len(cfg.lr_grid) or 1) if trains else 1  # a learning-rate choice trains once per rate
        row = {
            "cell": f"{condition.name}-{mode}",
            "steps": steps,
            "evals": evals if trains else 0,
            "lr_runs": runs,
        }
        for kind in ("wall", "cpu"):
            times = [getattr(c, kind) for c in clocks]
            step = statistics.median(times[1:]) if len(times) > 1 else times[0]
            # the train-eval texts and the drift texts of an evaluation do not scale with the val split
            eval_full = getattr(evaluation, kind) + getattr(val, kind) * (scale_val - 1)
            test_s = getattr(test, kind) * scale_test
            cell = runs * (steps * step + (evals * eval_full if trains else 0)) + test_s
            suffix = "" if kind == "wall" else "_cpu"
            row |= {f"step_s{suffix}": step, f"eval_s{suffix}": eval_full, f"test_predict_s{suffix}": test_s}
            row[f"cell_s{suffix}"] = cell
        rows.append(row)
    table_s = tables.wall * sum(full.values()) / len(texts)
    table_s_cpu = tables.cpu * sum(full.values()) / len(texts)
    report = {
        "experiment": args.experiment, "variant": args.variant, "layer": layer, "readout": e.train.readout,
        "threads": torch.get_num_threads(), "measured_texts": {s: len(small[s]) for s in SPLITS},
        "full_texts": full, "load_model_s": load_s, "corpus_s": corpus_s, "table_s": table_s,
        "table_s_cpu": table_s_cpu,
        "bench_s": bench_s, "bare_forward_test_s": per_text_bare * full["test"],
        "bare_forward_per_text_s": per_text_bare, "bare_forward_test_s_cpu": per_text_bare_cpu * full["test"],
        "cells": rows,
    }  # fmt: skip
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
