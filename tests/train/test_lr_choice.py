"""A learning rate chosen on validation under a drift cap (issue 12, the second model fairly trained)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_seeds import tiny_run

from mechcheck.experiment import TrainConfig, load_experiment
from mechcheck.testing import random_texts, save_tiny
from mechcheck.train.loop import Task, train_loop
from mechcheck.train_command import train_chain

pytestmark = pytest.mark.usefixtures("one_thread")


def lr_run(model, corpus, cap: float, grid: str) -> str:
    """The pipeline tests' tiny experiment (fixed neuron), six steps per rate of `grid` under `cap`."""
    text = tiny_run(model, corpus, seeds="[0]").replace("max_steps = 2", "max_steps = 6")
    choice = f"eval_every = 3\npatience = 3\nlr_grid = {grid}\ndrift_cap = {cap}\n"
    choice += "readout_lr = 1e-2\nwarmup_steps = 0"
    return text.replace("eval_every = 2", choice).replace("drift_texts = 4", "drift_texts = 8")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("lr")
    corpus = folder / "texts.txt"
    corpus.write_text("\n".join(random_texts(300, seed=9, min_words=5, max_words=12)) + "\n")
    return save_tiny(folder / "llama", "llama", seed=1), corpus


def _train(tmp_path: Path, files, cap: float, grid: str = "[1e-5, 3e-3]") -> dict[str, dict]:
    model, corpus = files
    file = tmp_path / f"cap{cap}.toml"
    file.write_text(lr_run(model, corpus, cap, grid))
    runs = train_chain(load_experiment(file), tmp_path / f"out{cap}", cache_dir=tmp_path / "cache")
    return {r.condition: r.to_json() for r in runs}  # as written


def test_each_rate_trains_and_the_best_under_the_cap_is_kept(tmp_path, files) -> None:
    runs = _train(tmp_path, files, 10.0)
    choice = runs["after_target"]["lr_choice"]
    assert choice["grid"] == [1e-5, 3e-3] and choice["drift_cap"] == 10.0 and "drift_cap" in choice["rule"]
    candidates = {c["lr"]: c for c in choice["candidates"]}
    assert set(candidates) == {1e-5, 3e-3} and all(c["steps"] > 0 for c in candidates.values())
    best = min(candidates.values(), key=lambda c: c["value"])
    assert choice["chosen_lr"] == best["lr"] and choice["trained_within_cap"] == (best["best_step"] > 0)
    run = runs["after_target"]
    assert {row["lr"]["model"] for row in run["curves"] if row["step"] == 0} == {best["lr"]}  # its curves
    assert run["metrics"]["best_step"] == best["best_step"] and run["metrics"]["kl_after"] == best["kl"]
    assert runs["frozen"]["lr_choice"] is None  # nothing but the readout trains: no rate to choose
    assert not list((tmp_path / "out10.0").glob("**/*.state"))


def test_states_above_the_cap_never_win(tmp_path, files) -> None:
    runs = _train(tmp_path, files, 1e-7, "[3e-3, 1e-2]")  # both rates move the model by far more
    run = runs["after_target"]
    assert (
        run["lr_choice"]["trained_within_cap"] is False
        and run["metrics"]["trained_within_drift_cap"] is False
    )
    assert all(c["best_step"] == 0 for c in run["lr_choice"]["candidates"])
    assert all(row.get("over_drift_cap") for row in run["curves"] if row["step"] > 0)
    assert run["metrics"]["best_step"] == 0 and run["metrics"]["kl_after"] == 0.0


def test_the_loop_skips_evaluations_above_the_cap() -> None:
    import torch

    weight = torch.nn.Parameter(torch.zeros(1))
    kls = iter([0.0, 0.2, 0.9, 0.3, 0.8])
    vals = iter([5.0, 4.0, 1.0, 3.0, 0.5])

    def evaluate():
        return {"val_mse": next(vals), "kl": next(kls)}

    task = Task({"model": ({"w": weight}, 0.1)}, 1, lambda i: (weight - 1).pow(2).sum(), evaluate)
    cfg = TrainConfig(epochs=4, eval_every=1, patience=10, warmup_steps=0, drift_cap=0.5)
    result = train_loop(task, cfg, seed=0)
    assert result.best_step == 3 and result.best_val_mse == 3.0  # 1.0 (step 2) and 0.5 (step 4) are above
    assert [bool(r.get("over_drift_cap")) for r in result.curves] == [False, False, True, False, True]
    assert json.dumps(result.curves)  # the rows stay plain JSON
