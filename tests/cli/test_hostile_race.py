"""Racing runs: one writer per output directory. Real processes race for one `--out`; the loser is
refused at once with one line naming the winner, the directory is never mixed, a lock left by a
killed run is taken over, and a run killed with SIGKILL resumes to exactly the numbers of a run that
was never interrupted."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_kit import ROOT, checkpoint, fails, mechcheck_process, with_setting, world

from mechcheck.cli import main
from mechcheck.errors import UserError
from mechcheck.lock import OutputLock

pytestmark = pytest.mark.usefixtures("one_thread")

HOLD = (
    "import sys, time\n"
    "from mechcheck.lock import OutputLock\n"
    "OutputLock(sys.argv[1], 'test').acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


def wait_for(condition, timeout: float = 300.0, what: str = "") -> None:
    end = time.time() + timeout
    while not condition():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mechcheck: error: ") and "Traceback" not in err, err
    return lines[0]


def statuses(out: Path) -> dict[str, str]:
    return {
        str(p.parent.relative_to(out)): json.loads(p.read_text())["status"] for p in out.rglob("stage.json")
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    w = world(tmp_path_factory.mktemp("race"))
    w["checkpoint"] = checkpoint(w["root"] / "ck", w["model"], "frozen")
    return w


@pytest.fixture(scope="module")
def raced(tiny, tmp_path_factory) -> dict[str, Path]:
    """Two real `mechcheck run` on one --out, the second (--seed 3) started while the first holds it."""
    out = tmp_path_factory.mktemp("raced") / "run"
    env = {"MECHCHECK_CACHE": str(out.parent / "cache")}
    first = mechcheck_process("run", str(tiny["experiment"]), "--out", str(out), env=env)
    wait_for(
        lambda: (out / ".mechcheck.lock").exists() or first.poll() is not None, what="the first run's lock"
    )
    os.kill(first.pid, signal.SIGSTOP)  # the first is surely still writing while the second starts
    try:
        second = mechcheck_process("run", str(tiny["experiment"]), "--out", str(out), "--seed", "3", env=env)
        _, second_err = second.communicate(timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, first_err = first.communicate(timeout=600)
    return {"out": out, "first": first, "first_err": first_err, "second": second, "second_err": second_err}


def test_the_second_run_is_refused_naming_the_first(raced):
    assert raced["second"].returncode == 2
    line = one_line(raced["second_err"])
    assert "is being written by another mechcheck run" in line
    assert f"pid {raced['first'].pid} on {socket.gethostname()}" in line and "mechcheck run" in line


def test_the_raced_directory_is_the_first_runs_alone(raced, tiny, capsys):
    out = raced["out"]
    assert raced["first"].returncode == 0, raced["first_err"]
    assert json.loads((out / "experiment.json").read_text())["config"]["seed"] == 0
    assert set(statuses(out).values()) == {"done"} and not (out / ".mechcheck.lock").exists()
    run = json.loads((out / "train" / "frozen-fixed" / "seed-0" / "run.json").read_text())
    assert run["seed"] == 0 and run["experiment"]["seed"] == 0
    before = statuses(out)
    assert main(["run", str(tiny["experiment"]), "--out", str(out), "-q"]) == 0  # up to date
    assert statuses(out) == before
    fails(capsys, ["run", str(tiny["experiment"]), "--out", str(out), "--seed", "3"], "seed: 0 -> 3")


@pytest.mark.parametrize("kind", ["run", "train", "test", "report"])
def test_a_held_directory_is_refused_by_every_command(tiny, raced, tmp_path, capsys, kind):
    out = raced["out"] if kind == "report" else tmp_path / "out"
    out.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out / ".mechcheck.lock")], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = {
            "run": ["run", str(tiny["experiment"]), "--out", str(out)],
            "train": ["train", str(tiny["experiment"]), "--out", str(out)],
            "test": ["test", str(tiny["checkpoint"]), "--out", str(out)],
            "report": ["report", str(out)],
        }[kind]
        before = sorted(p.name for p in out.iterdir())
        fails(capsys, argv, f"pid {holder.pid} on {socket.gethostname()}")
        assert sorted(p.name for p in out.iterdir()) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock file is left behind, and simply taken over
    assert (out / ".mechcheck.lock").exists()
    if kind == "report":
        assert main(["report", str(out)]) == 0
        assert not (out / ".mechcheck.lock").exists()


def test_a_killed_run_resumes_exactly(tiny, tmp_path, monkeypatch):
    """SIGKILL in the middle of training (its lock file left behind), then the same command again:
    it takes the lock over, resumes from the saved state and ends with exactly the numbers of a run
    that was never interrupted."""
    toml = with_setting(tiny["experiment"], tmp_path / "long.toml", "train", "conditions", ["after_target"])
    toml = with_setting(toml, toml, "train", "max_steps", 16)
    toml = with_setting(toml, toml, "train", "eval_every", 4)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = {"MECHCHECK_CACHE": str(tmp_path / "cache")}
    monkeypatch.setenv("MECHCHECK_CACHE", env["MECHCHECK_CACHE"])
    proc = mechcheck_process("run", str(toml), "--out", str(killed), env=env)
    state = killed / "train" / "after_target-fixed" / "seed-0.state"
    wait_for(lambda: state.exists() or proc.poll() is not None, what="a saved training state")
    proc.kill()
    proc.wait()
    assert (killed / ".mechcheck.lock").exists()
    assert main(["run", str(toml), "--out", str(killed), "-q"]) == 0  # the lock taken over, resumed
    assert main(["run", str(toml), "--out", str(whole), "-q"]) == 0
    checkpoint_dir = Path("train") / "after_target-fixed" / "seed-0"
    assert (killed / checkpoint_dir / "predictions.json").read_bytes() == (
        whole / checkpoint_dir / "predictions.json"
    ).read_bytes()
    a, b = (json.loads((o / checkpoint_dir / "run.json").read_text()) for o in (killed, whole))
    assert a["resumed_from_step"] is not None and b["resumed_from_step"] is None  # a was really cut off
    untimed = [[{k: v for k, v in row.items() if k != "eval_seconds"} for row in o["curves"]] for o in (a, b)]
    assert a["metrics"] == b["metrics"] and untimed[0] == untimed[1]
    results = [
        json.loads((o / "test" / "after_target-fixed" / "results.json").read_text()) for o in (killed, whole)
    ]
    assert results[0]["probes"] == results[1]["probes"] and results[0]["verdicts"] == results[1]["verdicts"]


# --- the lock itself --------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_file_of_a_dead_run_is_taken_over(tmp_path):
    path = tmp_path / ".mechcheck.lock"
    path.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "since": "long ago"}))
    with OutputLock(path, "out") as lock:
        assert json.loads(path.read_text())["pid"] == os.getpid() and lock.kernel
    assert not path.exists()


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    path = tmp_path / ".mechcheck.lock"
    with OutputLock(path, "out"), pytest.raises(UserError, match=f"pid {os.getpid()}"):
        OutputLock(path, "out").acquire()


def test_a_lock_file_that_is_a_link_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("victim")
    (tmp_path / ".mechcheck.lock").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        OutputLock(tmp_path / ".mechcheck.lock", "out").acquire()
    assert victim.read_text() == "victim"


@pytest.fixture
def no_kernel_locks(monkeypatch):
    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)


@pytest.mark.usefixtures("no_kernel_locks")
def test_without_kernel_locks_the_file_is_the_lock(tmp_path):
    path = tmp_path / ".mechcheck.lock"
    with OutputLock(path, "out") as lock:
        assert not lock.kernel
        with pytest.raises(UserError, match=f"pid {os.getpid()}.*delete"):
            OutputLock(path, "out").acquire()
    assert not path.exists()
    path.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "token": "old"}))
    with OutputLock(path, "out"):  # a dead holder on this host: taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()
    path.write_text(json.dumps({"pid": 1, "host": "another-host", "since": "now", "token": "x"}))
    with pytest.raises(UserError, match="pid 1 on another-host"):  # never presumed dead
        OutputLock(path, "out").acquire()
    assert json.loads(path.read_text())["host"] == "another-host"
