"""The one training loop every condition runs through.

AdamW with a learning rate per parameter group (model weights, readout), linear warm-up then
cosine decay (or a constant rate: `lr_schedule = "constant"`, the study's in effect), gradient
clipping, evaluation every `eval_every` steps (and at step 0, before any update), early stopping
on the task's validation monitor (MSE; cross-entropy for token readouts) with `patience`, and the
best-on-validation parameters restored at the end. With `drift_cap`, an evaluation whose
KL(original ‖ current) on the held-out drift texts exceeds the cap can never be the best state
(it counts as an evaluation without improvement). The data order is a
seeded permutation per epoch, so step k always sees the same batch; with a `StateStore` the loop
saves its whole state at each evaluation and on SIGINT/SIGTERM (after finishing the current
step), and resumes exactly.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from mechcheck.experiment import TrainConfig
from mechcheck.train.state import LoopState, StateStore, load_optimizer


@dataclass
class Task:
    """What the loop trains: named parameters per group with their learning rates, a loss per
    training batch (index into this epoch's order), and an evaluation returning at least `monitor`,
    the validation number early stopping and the best-state choice minimise (val_mse for the linear
    head; val_ce, the training objective, for token readouts)."""

    groups: dict[str, tuple[dict[str, nn.Parameter], float]]
    n_batches: int
    batch_loss: Callable[[int], torch.Tensor]
    evaluate: Callable[[], dict[str, Any]]
    monitor: str = "val_mse"
    initial: Callable[[], dict[str, Any]] | None = None  # step 0's evaluation without a forward pass

    def named(self) -> dict[str, nn.Parameter]:
        return {name: p for params, _ in self.groups.values() for name, p in params.items()}


@dataclass
class LoopResult:
    curves: list[dict[str, Any]]
    steps: int
    total_steps: int
    best_step: int
    best_val_mse: float  # the best value of the task's monitor (val_mse unless it says otherwise)
    stopped_early: bool
    resumed_from: int | None
    seconds: float


def adamw(groups: list[dict[str, Any]], weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all tensors) where torch has it for the parameters' device and
    dtype: on this CPU the fused step over SmolLM2's 135M parameters took 0.36 s against 2.3 s for
    the default per-tensor loop (the same update up to float rounding)."""
    try:
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, weight_decay=weight_decay)


def total_steps(cfg: TrainConfig, n_batches: int) -> int:
    steps = cfg.epochs * n_batches
    return min(steps, cfg.max_steps) if cfg.max_steps is not None else steps


LR_SCHEDULES = ("cosine", "constant")


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine") -> float:
    """Linear warm-up over `warmup` updates, then cosine decay to 0 at `total` (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def batch_order(seed: int, epoch: int, n_batches: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1_000_003 * seed + epoch)
    return torch.randperm(n_batches, generator=gen)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set a flag (the loop saves and stops after the step); a second one aborts."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            err = KeyboardInterrupt()
            err.hard = True  # type: ignore[attr-defined]
            raise err
        flag.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Loop:
    """The loop's state and its steps; `train_loop` drives it."""

    def __init__(self, task: Task, cfg: TrainConfig, seed: int, store: StateStore | None, config_hash: str):
        self.task, self.cfg, self.seed, self.store = task, cfg, seed, store
        self.params = task.named()
        groups = [
            {"params": list(params.values()), "lr": lr, "name": name}
            for name, (params, lr) in task.groups.items()
            if params
        ]
        self.optimizer = adamw(groups, cfg.weight_decay)
        self.total = total_steps(cfg, task.n_batches)
        warmup, total, kind = cfg.warmup_steps, self.total, cfg.lr_schedule
        if kind not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {kind!r}; known: {', '.join(LR_SCHEDULES)}")
        schedule = lambda s: lr_factor(s, warmup, total, kind)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.state = LoopState(config_hash)
        self.best: dict[str, torch.Tensor] | None = None
        self.resumed_from: int | None = None

    # --- state ---------------------------------------------------------------------------
    def resume(self) -> None:
        self.state, saved = self.store.load(self.state.config_hash)
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(saved["params"][name])
        load_optimizer(self.optimizer, saved["optimizer"], saved["optimizer_meta"])
        lambdas = [None] * len(self.optimizer.param_groups)  # plain functions: not part of the state
        self.scheduler.load_state_dict({**saved["scheduler"], "lr_lambdas": lambdas})
        torch.set_rng_state(saved["rng"]["torch"])
        self.best = saved["best"]
        self.resumed_from = self.state.step

    def save(self) -> None:
        if self.store is not None:
            self.store.save(self.state, dict(self.params), self.optimizer, self.scheduler, self.best)

    # --- steps ---------------------------------------------------------------------------
    def update(self, batch: int | None = None) -> None:
        """One optimiser step on the scheduled batch (or on `batch`, for benchmarks)."""
        step = self.state.step
        if batch is None:
            epoch, index = divmod(step, self.task.n_batches)
            batch = int(batch_order(self.seed, epoch, self.task.n_batches)[index])
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task.batch_loss(batch)
        loss.backward()
        if self.cfg.grad_clip and self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.state.step = step + 1

    def evaluate(self) -> None:
        s = self.state
        row = {"step": s.step, "epoch": s.step / self.task.n_batches}
        row["lr"] = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        initial = s.step == 0 and self.task.initial is not None
        start = time.perf_counter()
        row.update(self.task.initial() if initial else self.task.evaluate())
        row["eval_seconds"] = time.perf_counter() - start
        cap, kl = self.cfg.drift_cap, row.get("kl")
        eligible = cap is None or kl is None or kl <= cap
        if not eligible:
            row["over_drift_cap"] = True
        s.curves.append(row)
        value = row[self.task.monitor]
        if eligible and (s.best_val is None or value < s.best_val):
            s.best_val, s.best_step, s.bad_evals = value, s.step, 0
            self.best = {name: p.detach().clone() for name, p in self.params.items()}
        else:
            s.bad_evals += 1
        self.save()

    def due(self) -> bool:
        s = self.state
        evaluated = bool(s.curves) and s.curves[-1]["step"] == s.step
        return not evaluated and (s.step % self.cfg.eval_every == 0 or s.step >= self.total)

    def done(self) -> bool:
        return self.state.step >= self.total or self.state.bad_evals >= self.cfg.patience

    def restore_best(self) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.best[name])


def train_loop(
    task: Task,
    cfg: TrainConfig,
    seed: int,
    store: StateStore | None = None,
    config_hash: str = "",
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
    resume: bool = False,
) -> LoopResult:
    """Train `task`; returns the curves and leaves the best-on-validation parameters in place."""
    if cfg.eval_every < 1 or cfg.patience < 1:
        raise ValueError("eval_every and patience must be positive")
    start = time.perf_counter()
    loop = Loop(task, cfg, seed, store, config_hash)
    if resume and store is not None and store.exists():
        loop.resume()
    bar = tqdm(total=loop.total, initial=loop.state.step, desc="train", disable=not progress, leave=False)
    with stop_on_signals() as stop:
        try:
            while True:
                if loop.due():
                    loop.evaluate()
                    bar.set_postfix({task.monitor: f"{loop.state.curves[-1][task.monitor]:.4g}"})
                if loop.done():
                    break
                loop.update()
                bar.update(1)
                if on_step is not None:
                    on_step(loop.state.step)
                if stop.is_set():
                    raise KeyboardInterrupt
        except KeyboardInterrupt as err:
            if not getattr(err, "hard", False) and loop.best is not None:
                loop.save()
            raise
        finally:
            bar.close()
    loop.restore_best()
    s = loop.state
    return LoopResult(
        curves=s.curves,
        steps=s.step,
        total_steps=loop.total,
        best_step=s.best_step,
        best_val_mse=s.best_val,
        stopped_early=s.step < loop.total,
        resumed_from=loop.resumed_from,
        seconds=time.perf_counter() - start,
    )
