"""Where the cells of `mechcheck run` execute: one after another here, or as Ray tasks.

`--executor local` (the default) runs the pipeline's stages in this process, as always. A cell
executor (`--executor ray`: a local Ray instance; `--executor ray://HOST:PORT`: an existing Ray
cluster) runs the train and test stages as a graph of cells instead, each in its own process:

    train/prepare                       target.json, and the caches the runs read: the labels, the
                                        frozen features, the after-target residual (`DIR/cache/`)
    train/<condition>-<mode>/seed-<k>   one training run                   (needs train/prepare)
    test/<condition>-<mode>             the battery over the run's seeds   (needs their training)

Every cell writes into the run directory (shared storage on a cluster) exactly what the local
executor writes there, and asks Ray for `--cell-cpus` CPUs (it then computes with that many
threads) and `--cell-gpus` GPUs (it then loads its models on CUDA). A cell starts once the cells
it needs have finished; a cell that fails is recorded with its error in `DIR/cells.json`, the
cells that need it are not started, every other one goes on, and the run then stops with one line
naming what failed. A rerun skips what finished, as the local executor does: the train stage when
its record is done, each run whose checkpoint is written, each battery whose stage is done.
"""

from __future__ import annotations

import functools
import os
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mechcheck.errors import UserError
from mechcheck.outputs import write_json
from mechcheck.stages import Stage, run_stage

CELLS_FILE = "cells.json"
CACHE_DIR = "cache"
RAY_EXTRA = "pip install -e '.[ray]' -c constraints.txt"


@dataclass(frozen=True)
class Cell:
    """One unit of work: `fn()` (picklable), started once every cell named in `needs` has finished."""

    name: str
    fn: Callable[[], Any]
    needs: tuple[str, ...] = ()


@dataclass
class Outcome:
    name: str
    status: str  # done | failed | not_run
    error: str | None = None  # one line
    detail: str | None = None  # the traceback, or which needed cell failed
    seconds: float = 0.0


def run_cell(name: str, fn: Callable[[], Any], threads: int | None, device: str | None, cwd: str) -> Outcome:
    """Run one cell where it was sent; any exception becomes a failed outcome."""
    start = time.perf_counter()
    try:
        if os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths in the experiment mean what they meant to the driver
        if device is not None:
            from mechcheck.subject import DEVICE_ENV

            os.environ[DEVICE_ENV] = device
        if threads is not None:
            import torch
            from threadpoolctl import threadpool_limits

            torch.set_num_threads(threads)
            with threadpool_limits(threads):
                fn()
        else:
            fn()
    except Exception as err:  # noqa: BLE001 - reported with the cell, the others go on
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        error = f"{type(err).__name__}: {first}" if first else type(err).__name__
        return Outcome(name, "failed", error, traceback.format_exc(), time.perf_counter() - start)
    return Outcome(name, "done", seconds=time.perf_counter() - start)


class CellExecutor(ABC):
    """Runs a graph of cells: each as soon as what it needs has finished, the rest past failures."""

    cpus: float = 1.0
    gpus: float = 0.0

    @abstractmethod
    def _start(self, cell: Cell) -> Any:
        """Send `cell` off; returns a handle for `_wait`."""

    @abstractmethod
    def _wait(self, handles: list[Any]) -> list[tuple[Any, Outcome]]:
        """Block until at least one of `handles` has finished; their outcomes."""

    def close(self) -> None:  # noqa: B027 - most executors hold nothing
        """Release what the executor started."""

    def run_cells(self, pipeline: Any, corpus: Stage, select: Stage) -> tuple[Stage, list[Stage]]:
        """A pipeline's train and test stages as cells here (`run_cells`); returns those stages."""
        return run_cells(pipeline, corpus, select, self)

    def run(self, cells: Sequence[Cell], progress: bool = False) -> dict[str, Outcome]:
        from tqdm import tqdm

        names = {cell.name for cell in cells}
        waiting, running, outcomes = list(cells), {}, {}
        with tqdm(total=len(cells), desc="cells", disable=not progress, leave=True) as bar:
            while waiting or running:
                for cell in list(waiting):
                    needed = [outcomes.get(n) for n in cell.needs if n in names]
                    if any(o is None for o in needed):
                        continue
                    waiting.remove(cell)
                    broken = [o.name for o in needed if o.status != "done"]
                    if broken:
                        outcomes[cell.name] = Outcome(
                            cell.name, "not_run", detail="needs " + ", ".join(broken)
                        )
                        bar.update(1)
                    else:
                        running[self._start(cell)] = cell.name
                for handle, outcome in self._wait(list(running)) if running else ():
                    del running[handle]
                    outcomes[outcome.name] = outcome
                    bar.update(1)
        return outcomes


class InProcessExecutor(CellExecutor):
    """The cell graph in this process, one cell at a time: what the Ray executor does, without Ray
    (the fast tests use it; it needs no cluster)."""

    def __init__(self) -> None:
        self.done: dict[int, Outcome] = {}

    def _start(self, cell: Cell) -> int:
        handle = len(self.done)
        self.done[handle] = run_cell(cell.name, cell.fn, None, None, os.getcwd())
        return handle

    def _wait(self, handles: list[Any]) -> list[tuple[Any, Outcome]]:
        return [(handles[0], self.done[handles[0]])]


class RayExecutor(CellExecutor):
    """Cells as Ray tasks: on a local Ray instance (`address=None`) or a cluster (`ray://HOST:PORT`)."""

    def __init__(self, address: str | None = None, cpus: float = 1.0, gpus: float = 0.0, **init: Any):
        try:
            import ray
        except ImportError:
            raise UserError(f"--executor ray needs Ray, which is not installed: {RAY_EXTRA}") from None
        self.ray, self.cpus, self.gpus = ray, cpus, gpus
        self.started = not ray.is_initialized()
        if self.started:
            options = {"log_to_driver": False, "configure_logging": True, "logging_level": "ERROR"}
            if address is None:
                options["include_dashboard"] = False
            try:
                ray.init(address=address, **options | init)
            except (ConnectionError, ValueError, RuntimeError) as err:
                where = address or "a local Ray instance"
                raise UserError(f"cannot start or reach {where}: {str(err).strip().splitlines()[0]}") from err
        self.task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_calls=1, max_retries=0)(run_cell)
        self.names: dict[Any, str] = {}

    def _start(self, cell: Cell) -> Any:
        threads = max(1, int(self.cpus))
        device = "cuda" if self.gpus > 0 else None
        handle = self.task.remote(cell.name, cell.fn, threads, device, os.getcwd())
        self.names[handle] = cell.name
        return handle

    def _wait(self, handles: list[Any]) -> list[tuple[Any, Outcome]]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        out = []
        for handle in ready:
            try:
                out.append((handle, self.ray.get(handle)))
            except self.ray.exceptions.RayError as err:  # the worker died: no outcome came back
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                out.append((handle, Outcome(self.names[handle], "failed", first, str(err))))
        return out

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def make_executor(spec: str, cpus: float = 1.0, gpus: float = 0.0) -> CellExecutor | None:
    """`local` → None (the pipeline's own in-process stages); `ray` or `ray://HOST:PORT` → Ray."""
    if cpus <= 0 or gpus < 0:
        raise UserError(f"--cell-cpus must be positive and --cell-gpus not negative, got {cpus}, {gpus}")
    if spec == "local":
        return None
    if spec == "ray" or spec.startswith("ray://"):
        return RayExecutor(None if spec == "ray" else spec, cpus, gpus)
    raise UserError(f"--executor {spec!r}: choose local, ray, or ray://HOST:PORT")


# --- the cells of a run ----------------------------------------------------------------------
def train_cell(
    experiment: Any, folder: Path, runs: frozenset, shared: Path, splits: Any, selection: Any
) -> None:
    """Train `runs` ((condition, mode, seed) triples; none: prepare) of the experiment into `folder`,
    on the corpus stage's `splits` with the select stage's `selection` record."""
    from mechcheck.train.plan import train_experiment

    train_experiment(
        experiment, folder, resume=True, cells=runs, shared_cache=shared, splits=splits, selection=selection
    )


def battery_cell(experiment: Any, out: Path, stage: Stage) -> None:
    """One test stage, run (and recorded) as the pipeline runs it (`battery.runner.test_experiment`)."""
    from mechcheck.battery.runner import test_experiment

    def step(stage: Stage, previous: dict[str, Any]) -> None:
        test_experiment(experiment, stage.extra["checkpoints"], stage.folder)

    run_stage(stage, step)


def training_cells(pipeline: Any, train: Stage) -> list[Cell]:
    """The prepare cell and one cell per planned run that has no checkpoint yet."""
    experiment, folder, shared = pipeline.train_experiment(), train.folder, pipeline.out / CACHE_DIR
    todo = [run for run in train.extra["runs"] if not (folder / run / "run.json").is_file()]
    if not todo and (folder / "target.json").is_file():
        return []
    given = {"splits": pipeline.seed_splits(), "selection": pipeline.run_selection()}
    prepare = functools.partial(train_cell, experiment, folder, frozenset(), shared, **given)
    cells = [Cell("train/prepare", prepare)]
    for run in todo:
        key, seed = run.split("/")
        condition, mode = key.split("-", 1)
        triple = frozenset({(condition, mode, int(seed.removeprefix("seed-")))})
        fn = functools.partial(train_cell, experiment, folder, triple, shared, **given)
        cells.append(Cell(f"train/{run}", fn, needs=("train/prepare",)))
    return cells


def run_cells(
    pipeline: Any, corpus: Stage, select: Stage, executor: CellExecutor
) -> tuple[Stage, list[Stage]]:
    """The train and test stages of `pipeline` as cells on `executor`; returns those stages."""
    train = pipeline.train(corpus, select, run_now=False)
    tests = pipeline.test(train, run_now=False)
    pipeline._subject = None  # the cells load their own; free the driver's (the scan's) copy
    out, experiment = pipeline.out, pipeline.experiment
    test_cells = [
        Cell(t.name, functools.partial(battery_cell, experiment, out, t), needs=_trained_by(train, t))
        for t in tests
        if not t.is_done()
    ]
    outcomes: dict[str, Outcome] = {}

    def step(stage: Stage, previous: dict[str, Any]) -> None:
        pipeline.invalidate_train(stage, previous)
        outcomes.update(executor.run([*training_cells(pipeline, stage), *test_cells], pipeline.progress))
        _check(out, outcomes, pipeline.on_work)

    if train.is_done():
        outcomes.update(executor.run(test_cells, pipeline.progress))
        pipeline.records[train.name] = train.previous()
        _check(out, outcomes, pipeline.on_work)
    else:
        pipeline.execute(train, step)
    for t in tests:
        pipeline.records[t.name] = t.previous()
    return train, tests


def _trained_by(train: Stage, test: Stage) -> tuple[str, ...]:
    """The training cells whose checkpoints a test stage reads (those of its condition and mode)."""
    key = test.name.split("/", 1)[1]
    return tuple(f"train/{run}" for run in train.extra["runs"] if run.split("/")[0] == key)


def _check(out: Path, outcomes: dict[str, Outcome], on_work: Callable[[], None]) -> None:
    """Record every cell's outcome in DIR/cells.json; one line naming the failures, if any (the
    finished cells kept: `on_work`)."""
    write_json(out / CELLS_FILE, {"cells": [asdict(o) for o in outcomes.values()]})
    bad = [o for o in outcomes.values() if o.status != "done"]
    if bad:
        if len(bad) < len(outcomes):
            on_work()
        said = "; ".join(f"{o.name}: {o.error or 'not run, ' + (o.detail or '')}" for o in bad)
        raise UserError(
            f"{len(bad)} of {len(outcomes)} cells did not finish (the others did; a rerun retries only "
            f"these; tracebacks in {out / CELLS_FILE}): {said}"
        )
