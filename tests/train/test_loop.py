"""The one loop: schedule, deterministic order, exact resume after an interrupt, refused config changes."""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mechcheck.errors import UserError
from mechcheck.experiment import CorpusConfig, Experiment, NeuronConfig, TrainConfig
from mechcheck.testing import tiny_subject
from mechcheck.train.loop import batch_order, lr_factor, total_steps
from mechcheck.train.plan import run_dir
from mechcheck.train_command import train_chain

# wall-clock seconds, where a run was resumed, and whether the feature cache was already filled
VOLATILE = ("timing", "seconds", "eval_seconds", "resumed_from_step", "cached")


pytestmark = pytest.mark.usefixtures("one_thread")


def experiment(corpus_file: Path, conditions=("unfrozen",), **train) -> Experiment:
    settings = dict(
        conditions=conditions, epochs=2, eval_every=4, patience=10, lr=3e-3, readout_lr=1e-2,
        warmup_steps=2, drift_texts=4, eval_train_texts=16, batch_size=8,
    )  # fmt: skip
    return Experiment(
        corpus=CorpusConfig(source=str(corpus_file), max_texts=None, max_tokens=32),
        neuron=NeuronConfig(layer=1, index=3, position="last"),
        train=TrainConfig(**(settings | train)),
    )


def train(exp: Experiment, out: Path, **kw) -> list[dict]:
    """The run.json of every trained run (what each RunRecord writes)."""
    runs = train_chain(exp, out, subject=tiny_subject("llama", seed=2), cache_dir=out.parent / "cache", **kw)
    return [run.to_json() for run in runs]


def stable(value):
    """A run.json without the entries that legitimately differ between identical runs."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def test_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, 4, 20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[3:], factors[4:], strict=False))
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert lr_factor(20, 4, 20) == pytest.approx(0.0)
    assert (
        total_steps(TrainConfig(epochs=3), 7) == 21
        and total_steps(TrainConfig(epochs=3, max_steps=5), 7) == 5
    )


def test_batch_order_is_a_seeded_permutation_per_epoch():
    a, b = batch_order(0, 0, 10), batch_order(0, 0, 10)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(10))
    assert not torch.equal(a, batch_order(0, 1, 10)) and not torch.equal(a, batch_order(1, 0, 10))


def test_same_seed_gives_identical_numbers(corpus_file, tmp_path):
    exp = experiment(corpus_file, conditions=("frozen", "unfrozen"))
    first = train(exp, tmp_path / "a")
    second = train(exp, tmp_path / "b")
    assert [stable(r) for r in first] == [stable(r) for r in second]
    other = train(exp, tmp_path / "c", seeds=(1,))
    assert other[1]["metrics"]["test"]["mse"] != first[1]["metrics"]["test"]["mse"]


def _interrupt_at(step: int, how: str):
    def on_step(k: int) -> None:
        if k == step:
            if how == "signal":
                os.kill(os.getpid(), signal.SIGTERM)  # the loop finishes the step, saves, then stops
            else:
                raise KeyboardInterrupt

    return on_step


@pytest.mark.parametrize(("step", "how"), [(6, "raise"), (8, "raise"), (5, "signal")])
def test_interrupted_run_resumes_to_the_same_result(corpus_file, tmp_path, step, how):
    exp = experiment(corpus_file, conditions=("unfrozen",), target_modes=("live",))
    reference = train(exp, tmp_path / "ref")[0]
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(exp, out, on_step=_interrupt_at(step, how))
    folder = run_dir(out, "unfrozen", "live", 0)
    state = json.loads((folder.with_name("seed-0.state") / "state.json").read_text())
    assert state["loop"]["step"] == step and not folder.exists()
    resumed = train(exp, out, resume=True)[0]
    assert resumed["resumed_from_step"] == step
    assert stable(resumed) == stable(reference)
    assert not folder.with_name("seed-0.state").exists()  # the state is removed once the checkpoint exists
    again = train(exp, out, resume=True)[0]  # a finished run is skipped, not retrained
    assert again["timing"] == resumed["timing"]


def test_resume_with_a_different_config_is_refused(corpus_file, tmp_path):
    exp = experiment(corpus_file, conditions=("unfrozen",))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(exp, out, on_step=_interrupt_at(3, "raise"))
    changed = replace(exp, train=replace(exp.train, lr=1e-2))
    with pytest.raises(UserError, match="--resume with a different configuration"):
        train(changed, out, resume=True)
    with pytest.raises(UserError, match="already holds results"):
        train(exp, out)
    train(changed, out, overwrite=True)


def test_best_validation_state_is_restored(corpus_file, tmp_path):
    exp = experiment(corpus_file, conditions=("unfrozen",), lr=0.3, readout_lr=0.3, patience=2)
    run = train(exp, tmp_path / "run")[0]
    curves = run["curves"]
    best = min(curves, key=lambda row: row["val_mse"])
    assert run["metrics"]["best_step"] == best["step"]
    assert curves[0]["step"] == 0 and run["metrics"]["stopped_early"] == (run["metrics"]["steps"] < 20)
    assert [row["step"] for row in curves] == sorted({row["step"] for row in curves})
