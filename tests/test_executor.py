"""Cell executors: the train and test stages of `mechcheck run` as a graph of cells.

One tiny experiment — two seeds × two conditions (`frozen`, `after_target`), the whole battery —
runs once with the local executor. The cell graph must give the same results.json files, every
metric equal (results_compare.py says what is left out: timing and where caches were read from):
in this process (always), after a failed cell and a rerun; and as Ray tasks on a local Ray
cluster of 2 CPUs (where Ray is installed: `pip install -e ".[ray]"`; CI installs it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from results_compare import run_results
from run_kit import tiny_data, write_experiment

from mechcheck import executor
from mechcheck.cli import main
from mechcheck.errors import UserError
from mechcheck.executor import Cell, InProcessExecutor
from mechcheck.experiment import load_experiment
from mechcheck.pipeline import run_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
FAILING = ("after_target", "fixed", 1)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[Path, Path]:
    """The experiment file and its run with the local executor."""
    folder = tiny_data(tmp_path_factory.mktemp("cells"), n_texts=340)
    toml = write_experiment(folder, folder, name="cells", n_bootstrap=20)
    text = toml.read_text().replace("seeds = [0]", "seeds = [0, 1]").replace('probes = ["variance"]\n', "")
    text = text.replace("max_texts = 300", "max_texts = 340")  # each seed's own split: >= 20 test texts
    toml.write_text(text.replace("max_eval = 30", "max_eval = 20"))  # no probe list: every probe runs
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MECHCHECK_CACHE", str(folder / "cache"))
        assert main(["run", str(toml), "--out", str(folder / "local" / "cells"), "-q"]) == 0
    return toml, folder / "local" / "cells"


def statuses(out: Path) -> dict[str, str]:
    return {c["name"]: c["status"] for c in json.loads((out / "cells.json").read_text())["cells"]}


def test_a_failed_cell_stops_only_what_needs_it() -> None:
    def boom() -> None:
        raise RuntimeError("boom\nsecond line")

    cells = [Cell("a", lambda: None), Cell("b", boom, ("a",)), Cell("c", lambda: None, ("b",))]
    cells += [Cell("d", lambda: None, ("a", "not-in-this-graph"))]
    outcomes = InProcessExecutor().run(cells)
    assert {n: o.status for n, o in outcomes.items()} == {
        "a": "done", "b": "failed", "c": "not_run", "d": "done"
    }  # fmt: skip
    assert outcomes["b"].error == "RuntimeError: boom" and "Traceback" in outcomes["b"].detail
    assert outcomes["c"].detail == "needs b"


def test_bad_executors_are_one_line_before_anything_is_written(local_run, tmp_path, monkeypatch, capsys):
    toml, _ = local_run
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    for spec, said in (("ray", "needs Ray, which is not installed: pip install -e '.[ray]'"),
                       ("spark", "--executor 'spark': choose local, ray, or ray://HOST:PORT")):  # fmt: skip
        assert main(["run", str(toml), "--out", str(tmp_path / spec), "-q", "--executor", spec]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0], err
        assert not (tmp_path / spec).exists()


def test_a_run_whose_cell_failed_keeps_the_finished_cells(local_run, tmp_path, capsys, monkeypatch) -> None:
    """`mechcheck run` into a fresh directory, one cell failing: the one-line refusal keeps every
    finished cell (its message says a rerun retries only the failed ones), and the rerun does that."""
    toml, _ = local_run
    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(executor, "make_executor", lambda *a: InProcessExecutor())
    train_cell, out = executor.train_cell, tmp_path / "fresh"

    def flaky(experiment, folder, runs, shared, **given) -> None:
        if FAILING in runs:
            raise RuntimeError("simulated failure")
        train_cell(experiment, folder, runs, shared, **given)

    monkeypatch.setattr(executor, "train_cell", flaky)
    assert main(["run", str(toml), "--out", str(out), "--executor", "ray", "-q"]) == 2
    assert "2 of 7 cells did not finish" in capsys.readouterr().err
    finished = {p: p.stat().st_mtime_ns for p in out.glob("train/*/seed-*/run.json")}
    assert len(finished) == 3 and (out / ".mechcheck.json").is_file()
    monkeypatch.setattr(executor, "train_cell", train_cell)
    assert main(["run", str(toml), "--out", str(out), "--executor", "ray", "-q"]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()) and (out / "report.md").is_file()


def test_failed_cell_then_rerun_in_process_equals_local(local_run, tmp_path, monkeypatch) -> None:
    """A failing training cell: the others finish, what needs it does not start, one line says so;
    the rerun runs only those cells, and the results equal the local executor's."""
    toml, local = local_run
    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))
    experiment, out = load_experiment(toml), tmp_path / "cells"
    train_cell = executor.train_cell

    def flaky(experiment, folder, runs, shared, **given) -> None:
        if FAILING in runs:
            raise RuntimeError("simulated failure")
        train_cell(experiment, folder, runs, shared, **given)

    monkeypatch.setattr(executor, "train_cell", flaky)
    with pytest.raises(UserError, match=r"^2 of 7 cells did not finish .*train/after_target-fixed/seed-1: "
                                        r"RuntimeError: simulated failure; test/after_target-fixed: not run, "
                                        r"needs train/after_target-fixed/seed-1$"):  # fmt: skip
        run_pipeline(experiment, out, executor=InProcessExecutor())
    assert statuses(out) == {
        "train/prepare": "done", "train/frozen-fixed/seed-0": "done", "train/frozen-fixed/seed-1": "done",
        "train/after_target-fixed/seed-0": "done", "train/after_target-fixed/seed-1": "failed",
        "test/frozen-fixed": "done", "test/after_target-fixed": "not_run",
    }  # fmt: skip
    assert sorted(p.name for p in (out / "cache").iterdir()) == ["tables"]  # one table, read by every cell
    assert not (out / "report.md").exists()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("train/*/seed-*/run.json")}
    frozen_test = (out / "test/frozen-fixed/stage.json").read_text()

    monkeypatch.setattr(executor, "train_cell", train_cell)
    run_pipeline(experiment, out, executor=InProcessExecutor())
    assert statuses(out) == {
        "train/prepare": "done", "train/after_target-fixed/seed-1": "done", "test/after_target-fixed": "done"
    }  # fmt: skip
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())
    assert (out / "test/frozen-fixed/stage.json").read_text() == frozen_test
    assert run_results(out) == run_results(local)

    records = {p: p.read_text() for p in out.rglob("stage.json")}
    run_pipeline(experiment, out, executor=InProcessExecutor())  # all done: nothing runs again
    assert statuses(out) == {} and {p: p.read_text() for p in out.rglob("stage.json")} == records


@pytest.mark.ray
def test_ray_on_two_cpus_equals_local(local_run, tmp_path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    toml, local = local_run
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        out = tmp_path / "ray" / "cells"
        assert main(["run", str(toml), "--out", str(out), "-q", "--executor", "ray"]) == 0
    finally:
        ray.shutdown()
    assert set(statuses(out).values()) == {"done"} and len(statuses(out)) == 7
    assert run_results(out) == run_results(local)


def test_variants_through_the_cell_executor_equal_the_local_run(local_run, tmp_path, monkeypatch) -> None:
    """An experiment with [[variant]] tables (as experiments/study.toml): each variant's cells run by
    the executor, beside the shared corpus and scan, give the local run's results."""
    from mechcheck.experiment import variants

    toml, _ = local_run
    text = toml.read_text() + '\n[[variant]]\nname = "one-seed"\ntrain = {seeds = [0]}\n'
    text += '\n[[variant]]\nname = "frozen-only"\ntrain = {conditions = ["frozen"]}\n'
    file = tmp_path / "variants.toml"
    file.write_text(text)
    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))
    local = tmp_path / "local"
    assert main(["run", str(file), "--out", str(local), "-q"]) == 0
    study = (local / "report.md").read_text()  # the variants side by side, each seed decided alone
    assert "Variants finished: 2 of 2." in study
    verdicts, rest = study.split("## Shares")
    numbers, training = rest.split("## What training did to the target")
    starts = ("| one-", "| frozen-")
    rows = {
        part: [line.split(" | ")[:6] for line in text.splitlines() if line.startswith(starts)]
        for part, text in (("verdicts", verdicts), ("numbers", numbers), ("training", training))
    }
    want = [["| one-seed", "after_target-fixed"], ["| one-seed", "frozen-fixed"]]
    want.append(["| frozen-only", "frozen-fixed"])
    assert [[r[0], r[2]] for r in rows["numbers"]] == [[r[0], r[2]] for r in rows["verdicts"]] == want
    assert [[r[0], r[2], r[3]] for r in rows["training"]] == [
        [*w, n] for w, n in zip(want, "112", strict=True)
    ]
    assert [r[3] for r in rows["verdicts"]] == ["1", "1", "2"]  # seeds per row
    assert ["/2)" in r[5] for r in rows["verdicts"]] == [False, False, True]  # two seeds: each decided alone
    (local / "report.md").unlink()
    assert main(["report", str(local), "-q"]) == 0 and (local / "report.md").read_text() == study
    out = tmp_path / "cells"
    for name, experiment in variants(load_experiment(file), str(file)).items():
        run_pipeline(experiment, out / name, executor=InProcessExecutor(), shared=out / "shared")
    for name in ("one-seed", "frozen-only"):
        assert run_results(out / name) == run_results(local / name), name
    # the corpus stage depends on the training seeds: one corpus and one scan per set of seeds
    shared = sorted(p.name.split("-")[0] for p in (out / "shared").iterdir())
    assert shared == sorted(p.name.split("-")[0] for p in (local / "shared").iterdir()) == [
        "corpus", "corpus", "select", "select"
    ]  # fmt: skip
