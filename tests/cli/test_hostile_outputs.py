"""Hostile output paths: folders mechcheck did not write, --overwrite, changed experiments, symbolic
links planted in a run directory, unwritable paths, a full disk, and refusals that must leave
nothing behind. Every refusal is one line (exit 2; exit 1 for a full disk) and no file outside
mechcheck's own is touched."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
from pathlib import Path

import pytest
from hostile_kit import checkpoint, fails, listing, mechcheck_process, with_setting, world

import mechcheck.outputs
from mechcheck.cli import main
from mechcheck.errors import EnvironmentFault, UserError, classify
from mechcheck.outputs import held, write_json
from mechcheck.testing import save_tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A world and one finished run of its experiment (copied by the tests that change it)."""
    w = world(tmp_path_factory.mktemp("outputs"))
    w["run"] = w["root"] / "runs" / "hostile"
    assert main(["run", str(w["experiment"]), "--out", str(w["run"]), "-q"]) == 0
    w["checkpoint"] = checkpoint(w["root"] / "ck", w["model"], "frozen")
    return w


@pytest.fixture
def run_copy(tiny, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(tiny["run"], out, symlinks=True)
    return out


def stages(out: Path) -> dict[str, str]:
    return {
        str(p.parent.relative_to(out)): json.loads(p.read_text())["status"] for p in out.rglob("stage.json")
    }


def command(kind: str, tiny: dict[str, Path], out: Path, *extra: str) -> list[str]:
    if kind == "test":
        corpus = ["--corpus", str(tiny["corpus"]), "--probes", "collapse"]
        return ["test", str(tiny["checkpoint"]), *corpus, "--out", str(out), *extra]
    return [kind, str(tiny["experiment"]), "--out", str(out), *extra]


# --- folders mechcheck did not write --------------------------------------------------------
@pytest.mark.parametrize("kind", ["run", "train", "test"])
@pytest.mark.parametrize(
    "plant",
    ["notes", "forged_record", "forged_hash", "empty_folder", "hidden_file"],
)
def test_a_foreign_folder_is_never_written_nor_deleted(tiny, tmp_path, capsys, kind, plant):
    out = tmp_path / "mine"
    out.mkdir()
    if plant == "notes":
        (out / "notes.txt").write_text("keep me")
    elif plant == "forged_record":  # the case: any JSON object used to pass as a run
        (out / "experiment.json").write_text('{"lr": 0.1}')
        (out / "notes.txt").write_text("keep me")
    elif plant == "forged_hash":  # the right shape, but not a record mechcheck wrote
        (out / "experiment.json").write_text('{"identity": "hostile", "config": {}, "hash": "0"}')
    elif plant == "empty_folder":
        (out / "corpus").mkdir()
    else:
        (out / ".bashrc").write_text("keep me")
    before = listing(out)
    for extra in ((), ("--overwrite",)):
        fails(capsys, command(kind, tiny, out, *extra), "holds no mechcheck output")
        assert listing(out) == before


def test_overwrite_removes_only_what_mechcheck_wrote(tiny, run_copy, capsys):
    (run_copy / "notes.txt").write_text("mine")
    (run_copy / "data").mkdir()
    (run_copy / "data" / "x.csv").write_text("1,2")
    old = json.loads((run_copy / ".mechcheck.json").read_text())["run_id"]
    assert main(["run", str(tiny["experiment"]), "--out", str(run_copy), "--overwrite", "-q"]) == 0
    assert (run_copy / "notes.txt").read_text() == "mine" and (run_copy / "data" / "x.csv").is_file()
    marker = json.loads((run_copy / ".mechcheck.json").read_text())
    assert marker["run_id"] != old and marker["kind"] == "run" and "train" in marker["entries"]
    assert set(stages(run_copy).values()) == {"done"}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [(("", "seed", 3), "seed: 0 -> 3"), (("train", "lr", 1e-3), "train.lr"),
     (("battery", "n_bootstrap", 60), "battery.n_bootstrap")],
    ids=["seed", "lr", "battery"],
)  # fmt: skip
def test_a_changed_experiment_needs_overwrite(tiny, run_copy, tmp_path, capsys, change, fragment):
    before = listing(run_copy)
    changed = with_setting(tiny["experiment"], tmp_path / "hostile.toml", *change)
    fails(capsys, ["run", str(changed), "--out", str(run_copy)], "another configuration", fragment)
    assert listing(run_copy) == before
    fails(capsys, ["run", str(tiny["experiment"]), "--out", str(run_copy), "--seed", "3"], "seed: 0 -> 3")
    assert listing(run_copy) == before


@pytest.mark.parametrize("kind", ["train", "test"])
def test_another_commands_output_is_refused(tiny, run_copy, capsys, kind):
    before = listing(run_copy)
    fails(capsys, command(kind, tiny, run_copy), "holds the output of `mechcheck run`")
    assert listing(run_copy) == before


def test_a_run_written_before_the_marker_is_adopted(tiny, run_copy, capsys):
    (run_copy / ".mechcheck.json").unlink()
    assert main(["run", str(tiny["experiment"]), "--out", str(run_copy), "-q"]) == 0
    assert json.loads((run_copy / ".mechcheck.json").read_text())["kind"] == "run"
    (run_copy / ".mechcheck.json").unlink()
    (run_copy / "notes.txt").write_text("not mechcheck's")  # then the folder is not all mechcheck's
    fails(capsys, ["run", str(tiny["experiment"]), "--out", str(run_copy), "--overwrite"], "no mechcheck")


# --- symbolic links -------------------------------------------------------------------------
LINKS = {  # name in the run directory -> what the link points at (outside it)
    "experiment.json.tmp": "victim.txt",
    ".experiment.json.abcd1234.tmp": "victim.txt",
    "report.md": "victim.txt",
    "results.json": "victim.txt",
    "figures": "victim_dir",
    "train": "victim_dir",
    "test/frozen-fixed/predictions": "victim_dir",
    "train/frozen-fixed/seed-0.state": "victim_dir",
    ".mechcheck.lock": "victim.txt",
    ".mechcheck.json": "victim.txt",
    "dangling": "absent",
}


@pytest.mark.parametrize("name", sorted(LINKS))
@pytest.mark.parametrize("kind", ["run", "report"])
def test_a_link_out_of_the_run_directory_is_refused_and_never_followed(
    tiny, run_copy, tmp_path, capsys, name, kind
):
    outside = tmp_path / "outside"
    (outside / "victim_dir").mkdir(parents=True)
    (outside / "victim.txt").write_text("victim")
    link = run_copy / name
    if link.is_dir():
        shutil.rmtree(link)
    link.unlink(missing_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside / LINKS[name])
    before, victims = listing(run_copy), listing(outside)
    argv = (
        ["run", str(tiny["experiment"]), "--out", str(run_copy)]
        if kind == "run"
        else ["report", str(run_copy)]
    )
    for extra in ((), ("--overwrite",)) if kind == "run" else ((),):
        fails(capsys, [*argv, *extra], "symbolic link")
        assert listing(outside) == victims and listing(run_copy) == before


def test_a_link_inside_the_run_directory_is_allowed(tiny, run_copy):
    (run_copy / "corpus-alias").symlink_to(run_copy / "corpus")
    assert main(["run", str(tiny["experiment"]), "--out", str(run_copy), "-q"]) == 0


def test_a_link_planted_while_a_directory_is_held_is_not_written_through(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "sub").symlink_to(outside)
    with held(root):
        for write in (
            lambda: write_json(root / "sub" / "x.json", {}),
            lambda: write_json(root / "sub" / "a" / "y.json", {}),
        ):
            with pytest.raises(UserError, match="symbolic link out of"):
                write()
    assert not any(outside.iterdir())
    write_json(root / "file.json", {"a": 1})
    (root / "final").symlink_to(outside / "target.json")
    write_json(root / "final", {"b": 2})  # a link at the target's name is replaced, not written through
    assert not (outside / "target.json").exists() and json.loads((root / "final").read_text()) == {"b": 2}


@pytest.mark.parametrize("kind", ["select", "compare"])
def test_a_file_output_that_is_a_link_is_refused(tiny, tmp_path, capsys, kind):
    victim = tmp_path / "victim.json"
    victim.write_text("victim")
    link = tmp_path / "neurons.json"
    link.symlink_to(victim)
    if kind == "select":
        argv = ["select", "--model", str(tiny["model"]), "--corpus", str(tiny["corpus"]), "--out", str(link),
                "--overwrite", "-q"]  # fmt: skip
    else:
        argv = ["compare", str(tiny["run"]), "--out", str(link), "--overwrite"]
    capsys.readouterr()
    assert main(argv) == 2 and "symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "victim"


# --- unwritable paths -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["run", "train", "test"])
@pytest.mark.parametrize("where", ["under_a_file", "is_a_file", "in_proc", "permission", "read_only"])
def test_an_unwritable_output_is_one_line(tiny, tmp_path, capsys, monkeypatch, kind, where):
    out = tmp_path / "out"
    if where == "under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    elif where == "is_a_file":
        out.write_text("x")
    elif where == "in_proc":
        out = Path("/proc/mechcheck-hostile/out")
    elif where == "permission":  # the tests run as root: refuse the way a read-only parent would
        real = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if self == out:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    else:
        real_open = os.open

        def ro_open(path, flags, *args, **kwargs):
            if str(path).startswith(str(out)) and flags & os.O_CREAT:
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", ro_open)
    fails(capsys, command(kind, tiny, out))
    if where not in ("is_a_file", "under_a_file"):
        assert not out.exists()


# --- a full disk ------------------------------------------------------------------------------
class _Disk:
    """`os` for mechcheck.outputs with a disk of `room` bytes: a write past it fails with ENOSPC."""

    def __init__(self, room: int):
        self.room = room

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, mode="r", *args, **kwargs):
        return _Limited(os.fdopen(fd, mode, *args, **kwargs), self)


class _Limited:
    """A file on a `_Disk`."""

    def __init__(self, file, disk: _Disk):
        self.file, self.disk = file, disk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def fileno(self):
        return self.file.fileno()

    def write(self, data):
        if len(data) > self.disk.room:
            raise OSError(errno.ENOSPC, "No space left on device", self.file.name)
        self.disk.room -= len(data)
        return self.file.write(data)


@pytest.mark.parametrize("room", [0, 3_000], ids=["no_room", "room_for_a_few_files"])
@pytest.mark.parametrize("kind", ["run", "train", "test", "select", "report"])
def test_a_full_disk_is_one_line_and_exit_1(tiny, run_copy, tmp_path, capsys, monkeypatch, room, kind):
    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mechcheck.outputs, "os", _Disk(room))
    out = tmp_path / "out"
    argv = {
        "select": [
            "select",
            "--model",
            str(tiny["model"]),
            "--corpus",
            str(tiny["corpus"]),
            "--out",
            str(out / "n.json"),
        ],
        "report": ["report", str(run_copy)],
    }.get(kind) or command(kind, tiny, out)
    fails(capsys, argv, "No space left on device", code=1)
    monkeypatch.setattr(mechcheck.outputs, "os", os)
    if kind in ("run", "train") and room:  # with room again, the same command resumes and finishes
        assert main([*argv, *(["--resume"] if kind == "train" else []), "-q"]) == 0


def test_a_full_disk_while_writing_weights_is_one_line(tiny, tmp_path):
    """A real process whose files may not grow past 20 kB (RLIMIT_FSIZE): safetensors fail to write
    (EFBIG), as they would on a full disk."""

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    toml = tmp_path / "after_target.toml"  # a trained condition writes the model's weights (> 20 kB)
    text = tiny["experiment"].read_text()
    toml.write_text(text.replace('conditions = ["frozen"]', 'conditions = ["after_target"]'))
    assert "after_target" in toml.read_text()
    proc = mechcheck_process("train", str(toml), "--out", str(tmp_path / "out"), preexec_fn=small_files,
                             env={"MECHCHECK_CACHE": str(tmp_path / "cache")})  # fmt: skip
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 1, err
    assert len(lines) == 1 and lines[0].startswith("mechcheck: error: ") and "too large" in lines[0], err


@pytest.mark.parametrize(
    ("err", "kind"),
    [(OSError(errno.ENOSPC, "No space left on device"), EnvironmentFault),
     (OSError(errno.EDQUOT, "Disk quota exceeded"), EnvironmentFault),
     (OSError(errno.EIO, "Input/output error"), EnvironmentFault), (MemoryError(), EnvironmentFault),
     (OSError(errno.EACCES, "Permission denied"), UserError), (OSError(errno.EROFS, "Read-only"), UserError),
     (RecursionError(), UserError), (ValueError("a bug"), type(None))],
    ids=["enospc", "edquot", "eio", "memory", "eacces", "erofs", "recursion", "bug"],
)  # fmt: skip
def test_faults_are_told_apart_from_bad_input_and_bugs(err, kind):
    assert isinstance(classify(err), kind)


def test_a_full_disk_inside_safetensors_is_an_environment_fault():
    from safetensors import SafetensorError

    fault = classify(
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    )
    assert isinstance(fault, EnvironmentFault)


# --- refusals leave nothing behind --------------------------------------------------------------
LATE = {  # refusals that come only once the run has started: (table, key, value)
    "neuron_index": ("neuron", "index", 999),
    "neuron_layer": ("neuron", "layer", 9),
    "missing_model": ("subject", "model", "/nonexistent/model"),
    "missing_corpus": ("corpus", "source", "/nonexistent/corpus.txt"),
    "tiny_corpus": ("corpus", "source", "TINY"),
    "binary_corpus": ("corpus", "source", "BINARY"),
    "pickle_model": ("subject", "model", "PICKLE"),
}


def late_experiment(tiny: dict[str, Path], folder: Path, case: str) -> Path:
    table, key, value = LATE[case]
    if value == "TINY":
        value = str(folder / "tiny.txt")
        Path(value).write_text("a cat sat on the mat\nthe dog sat on the log\n")
    elif value == "BINARY":
        value = str(folder / "binary.txt")
        Path(value).write_bytes(b"\xff\xfe\x00" * 100)
    elif value == "PICKLE":
        model = save_tiny(folder / "pickled", "llama", seed=0)
        (model / "model.safetensors").rename(model / "pytorch_model.bin")
        value = str(model)
    return with_setting(tiny["experiment"], folder / "hostile.toml", table, key, value)


@pytest.mark.parametrize("kind", ["run", "train"])
@pytest.mark.parametrize("case", sorted(LATE))
def test_a_refused_run_leaves_nothing_behind(tiny, tmp_path, capsys, monkeypatch, kind, case):
    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))
    toml = late_experiment(tiny, tmp_path, case)
    fresh, empty = tmp_path / "fresh", tmp_path / "empty"
    empty.mkdir()
    for out in (fresh, empty):
        fails(capsys, [kind, str(toml), "--out", str(out)])
    assert not fresh.exists() and list(empty.iterdir()) == []


def test_a_refused_rerun_puts_its_records_back(tiny, run_copy, tmp_path, capsys):
    """An --overwrite run of a changed experiment refused mid-way: no new folder, the experiment record
    and the marker as they were, no stage left `running`; the original experiment still resumes."""
    before = {name: (run_copy / name).read_bytes() for name in ("experiment.json", ".mechcheck.json")}
    top = sorted(p.name for p in run_copy.iterdir())
    toml = late_experiment(tiny, tmp_path, "neuron_index")
    fails(capsys, ["run", str(toml), "--out", str(run_copy), "--overwrite"], "index 999 is out of range")
    assert {name: (run_copy / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in run_copy.iterdir()) == top and "running" not in stages(run_copy).values()
    assert main(["run", str(tiny["experiment"]), "--out", str(run_copy), "-q"]) == 0
    assert set(stages(run_copy).values()) == {"done"}


def test_a_refused_test_leaves_nothing_behind(tiny, tmp_path, capsys):
    ck = tmp_path / "ck"
    shutil.copytree(tiny["checkpoint"], ck)
    run = json.loads((ck / "run.json").read_text())
    (ck / "run.json").write_text(json.dumps({**run, "neuron": {"layer": 1, "index": 999}}))
    for out in (tmp_path / "fresh", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        fails(capsys, ["test", str(ck), "--out", str(out)], "index 999 is out of range")
    assert not (tmp_path / "fresh").exists() and list((tmp_path / "empty").iterdir()) == []


def test_a_refusal_after_training_keeps_the_work_and_resumes(tiny, tmp_path, capsys, monkeypatch):
    """A run refused once it has trained keeps what it trained (work worth resuming, `Output.keep`);
    the next run picks it up instead of training again."""
    import mechcheck.pipeline

    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"

    def refuse(self, stage, previous):
        raise UserError("a refusal planted in the battery")

    with monkeypatch.context() as patch:
        patch.setattr(mechcheck.pipeline.Pipeline, "_test", refuse)
        fails(capsys, ["run", str(tiny["experiment"]), "--out", str(out)], "planted in the battery")
    assert stages(out)["train"] == "done" and (out / ".mechcheck.json").is_file()
    trained = (out / "train" / "stage.json").read_bytes()
    assert main(["run", str(tiny["experiment"]), "--out", str(out), "-q"]) == 0
    assert set(stages(out).values()) == {"done"} and (out / "train" / "stage.json").read_bytes() == trained


def test_a_variant_with_too_small_a_test_split_is_refused_before_any_trains(
    tiny, tmp_path, capsys, monkeypatch
):
    """Every variant's test split is checked before the first variant scans or trains: a refusal
    after hours of the first variant's work would otherwise come at its end."""
    import mechcheck.pipeline

    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))
    toml = tmp_path / "variants.toml"
    toml.write_text(
        tiny["experiment"].read_text()
        + '\n[[variant]]\nname = "whole"\n\n[[variant]]\nname = "small"\ncorpus = { max_texts = 60 }\n'
    )
    scans = []
    monkeypatch.setattr(mechcheck.pipeline.Pipeline, "_select", lambda *a: scans.append(a))
    out = tmp_path / "run"
    fails(capsys, ["run", str(toml), "--out", str(out)], "at least 20 are needed")
    assert scans == [] and not out.exists()


def test_an_interrupt_keeps_what_was_written_and_releases_the_lock(tiny, tmp_path, monkeypatch):
    """Ctrl-C keeps what was written (to resume) but releases the lock."""
    import mechcheck.run_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mechcheck.run_command, "run_pipeline", interrupted)
    out = tmp_path / "out"
    assert main(["run", str(tiny["experiment"]), "--out", str(out), "-q"]) == 130
    assert (out / "experiment.json").is_file() and not (out / ".mechcheck.lock").exists()
