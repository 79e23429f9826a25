"""Hostile checkpoints and models: pickle-only weights, a `model/` of another architecture or size,
frozen parameters that were changed, readouts of the wrong width or with NaN, neuron indices that
are fractional or out of range, and one checkpoint given twice. Each is one line, exit 2, before
any probe runs; nothing is unpickled, ever."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hostile_kit import checkpoint, edit_json, fails, world
from safetensors.torch import load_file, save_file

from mechcheck.checkpoint import read_checkpoint, verify_base
from mechcheck.subject import load_subject
from mechcheck.testing import save_tiny

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this writes a file: proof that a pickle was loaded."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "pwned"))


def pickle_only(folder: Path, target: Path) -> Path:
    """A model folder whose weights are a malicious pickle (pytorch_model.bin) and no safetensors."""
    for f in folder.glob("*.safetensors"):
        f.unlink()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump(Payload(target), f)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    w = world(tmp_path_factory.mktemp("ckpts"))
    root = w["root"]
    w["frozen"] = checkpoint(root / "frozen", w["model"], "frozen")
    w["after"] = checkpoint(root / "after", w["model"], "after_target", seed=1)
    return w


@pytest.fixture
def copy(tiny, tmp_path):
    def make(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(tiny[name], dest)
        return dest

    return make


def refused(capsys, tmp_path: Path, *checkpoints: Path, fragment: str = "") -> str:
    out = tmp_path / "out"
    err = fails(capsys, ["test", *map(str, checkpoints), "--out", str(out)], fragment)
    assert not out.exists()
    return err


def test_hand_made_checkpoints_pass_verification(tiny):
    """The control: exact hashes, the right architecture — accepted."""
    base = load_subject(str(tiny["model"]))
    for name in ("frozen", "after"):
        verify_base(read_checkpoint(tiny[name]), base)


# --- pickle ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["select", "run", "test"])
def test_a_pickle_only_base_model_is_refused_and_never_unpickled(tiny, tmp_path, capsys, command):
    bad = pickle_only(save_tiny(tmp_path / "pickled", "llama", seed=0), tmp_path / "pwned.txt")
    out = tmp_path / "out"
    if command == "select":
        argv = ["select", "--model", str(bad), "--corpus", str(tiny["corpus"]), "--out", str(out / "n.json")]
    elif command == "run":
        toml = tmp_path / "p.toml"
        toml.write_text(tiny["experiment"].read_text().replace(str(tiny["model"]), str(bad)))
        argv = ["run", str(toml), "--out", str(out)]
    else:
        ck = checkpoint(tmp_path / "ck", tiny["model"], "frozen")
        edit_json(ck / "run.json", lambda r: r.__setitem__("base_model", str(bad)))
        argv = ["test", str(ck), "--out", str(out)]
    fails(capsys, argv, "only pickle weights", "pytorch_model.bin")
    assert not (tmp_path / "pwned.txt").exists() and not out.exists()


def test_a_pickle_only_trained_model_is_refused_and_never_unpickled(copy, tmp_path, capsys):
    ck = copy("after")
    pickle_only(ck / "model", tmp_path / "pwned.txt")
    refused(capsys, tmp_path, ck, fragment="only pickle weights")
    assert not (tmp_path / "pwned.txt").exists()


def test_a_pickle_beside_safetensors_is_ignored(copy, tiny, tmp_path):
    ck = copy("after")
    with open(ck / "model" / "pytorch_model.bin", "wb") as f:
        pickle.dump(Payload(tmp_path / "pwned.txt"), f)
    verify_base(read_checkpoint(ck), load_subject(str(tiny["model"])))  # the safetensors are read
    assert not (tmp_path / "pwned.txt").exists()


# --- a model/ that is not the base model's ----------------------------------------------------
@pytest.mark.parametrize(
    ("family", "sizes", "fragment"),
    [
        ("gpt2", {}, "holds a 'gpt2' model"),
        ("gpt_neox", {}, "holds a 'gpt_neox' model"),
        ("llama", {"d_mlp": 128}, "not the base model's architecture"),
        ("llama", {"n_layers": 2}, "not the base model's architecture"),
        ("llama", {"n_layers": 6}, "not the base model's architecture"),
        ("llama", {"d_model": 64}, "not the base model's architecture"),
        ("llama", {}, "frozen_params_sha256"),
    ],
    ids=["gpt2", "neox", "wider_mlp", "fewer_layers", "more_layers", "wider_residual", "other_weights"],
)
def test_a_foreign_trained_model_is_refused(copy, tmp_path, capsys, family, sizes, fragment):
    ck = copy("after")
    shutil.rmtree(ck / "model")
    save_tiny(ck / "model", family, seed=5, **sizes)
    refused(capsys, tmp_path, ck, fragment=fragment)


@pytest.mark.parametrize(
    "damage",
    [
        "no_config",
        "config_not_json",
        "config_list",
        "weights_truncated",
        "weights_misfit_config",
        "param_missing",
    ],
)
def test_a_damaged_trained_model_is_refused(copy, tmp_path, capsys, damage):
    ck = copy("after")
    model = ck / "model"
    weights = model / "model.safetensors"
    if damage == "no_config":
        (model / "config.json").unlink()
    elif damage == "config_not_json":
        (model / "config.json").write_text("{ nope")
    elif damage == "config_list":
        (model / "config.json").write_text("[]")
    elif damage == "weights_truncated":
        weights.write_bytes(weights.read_bytes()[:300])
    elif damage == "weights_misfit_config":
        edit_json(model / "config.json", lambda c: c.__setitem__("intermediate_size", 48))
    else:
        tensors = load_file(weights)
        tensors.pop(sorted(k for k in tensors if "mlp.up_proj" in k)[-1])
        save_file(tensors, weights, metadata={"format": "pt"})
    refused(capsys, tmp_path, ck)


def test_frozen_parameters_changed_after_training_are_refused(copy, tmp_path, capsys):
    """A prefix layer of model/ edited: its condition says it stayed frozen."""
    ck = copy("after")
    weights = ck / "model" / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in tensors if k.startswith("model.layers.0.mlp"))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    refused(capsys, tmp_path, ck, fragment="frozen_params_sha256")


@pytest.mark.parametrize("condition", ["frozen", "after"])
def test_a_different_base_model_is_refused(tiny, copy, tmp_path, capsys, condition):
    ck = copy(condition)
    other = save_tiny(tmp_path / "other_base", "llama", seed=9)
    edit_json(ck / "run.json", lambda r: r.__setitem__("base_model", str(other)))
    refused(capsys, tmp_path, ck, fragment="different")


# --- readouts ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tensors", "fragment"),
    [
        ({"weight": torch.randn(1, 16), "bias": torch.zeros(1)}, "reads 16 features"),
        ({"weight": torch.randn(1, 64), "bias": torch.zeros(1)}, "reads 64 features"),
        ({"weight": torch.randn(2, 2, 32), "bias": torch.zeros(1)}, "readout"),
        ({"weight": torch.randn(1, 32), "bias": torch.zeros(3)}, "readout"),
        ({"weight": torch.randn(1, 32)}, "readout"),
        ({"weight": torch.randn(1, 32), "bias": torch.zeros(1), "extra": torch.zeros(2)}, "readout"),
        ({"weight": torch.full((1, 32), float("nan")), "bias": torch.zeros(1)}, "NaN or infinite"),
        ({"weight": torch.randn(1, 32), "bias": torch.tensor([float("inf")])}, "NaN or infinite"),
        ({"weight": torch.randn(2, 32), "bias": torch.zeros(2)}, "2 outputs for 1 neurons"),
        ({}, "readout"),
    ],
    ids=["narrow", "wide", "three_d", "bias_size", "no_bias", "extra", "nan", "inf", "two_outputs", "empty"],
)
def test_a_readout_that_does_not_fit_is_refused(copy, tmp_path, capsys, tensors, fragment):
    ck = copy("frozen")
    save_file(tensors, ck / "readout.safetensors")
    refused(capsys, tmp_path, ck, fragment=fragment)


@pytest.mark.parametrize("content", [b"", b"not safetensors", b"\x00" * 8, b"\xff" * 64])
def test_a_corrupt_readout_file_is_refused(copy, tmp_path, capsys, content):
    ck = copy("frozen")
    (ck / "readout.safetensors").write_bytes(content)
    refused(capsys, tmp_path, ck, fragment="readout.safetensors")


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        ({"prompt": "{0} {text}"}, "not a valid prompt"),
        ({"prompt": "{text.x}"}, "not a valid prompt"),
        ({"prompt": "{"}, "not a valid prompt"),
        ({"answers": "0123456789"}, "answers"),
    ],
    ids=["positional", "attribute", "brace", "answers_str"],
)
def test_a_token_readout_with_a_hostile_prompt_is_refused(copy, tmp_path, capsys, meta, fragment):
    ck = copy("frozen")
    save_file(
        {"answer_ids": torch.arange(3, 13), "edges": torch.linspace(0, 1, 9), "values": torch.arange(10.0)},
        ck / "readout.safetensors",
    )
    edit_json(
        ck / "run.json", lambda r: r.__setitem__("readout", {"kind": "digit", "prompt": "{text}?", **meta})
    )
    refused(capsys, tmp_path, ck, fragment=fragment)


def test_a_token_readout_answering_outside_the_vocabulary_is_refused(copy, tmp_path, capsys):
    ck = copy("frozen")
    ids = torch.arange(10) + 10_000
    save_file(
        {"answer_ids": ids, "edges": torch.linspace(0, 1, 9), "values": torch.arange(10.0)},
        ck / "readout.safetensors",
    )
    edit_json(ck / "run.json", lambda r: r.__setitem__("readout", {"kind": "digit"}))
    refused(capsys, tmp_path, ck, fragment="outside the vocabulary")


# --- neurons ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("neuron", "fragment"),
    [
        ({"layer": 1, "index": 2.5}, "expected a non-negative integer"),
        ({"layer": 1.0, "index": 2}, "expected"),
        ({"layer": 1, "index": -2}, "expected a non-negative integer"),
        ({"layer": 1, "index": "2"}, "expected"),
        ({"layer": 9, "index": 2}, "layer 9 is out of range"),
        ({"layer": 1, "index": 999}, "index 999 is out of range"),
    ],
    ids=["fractional", "float_layer", "negative", "string", "layer_range", "index_range"],
)
def test_a_neuron_that_is_not_one_is_refused(copy, tmp_path, capsys, neuron, fragment):
    ck = copy("frozen")
    edit_json(ck / "run.json", lambda r: r.__setitem__("neuron", neuron))
    refused(capsys, tmp_path, ck, fragment=fragment)


# --- one checkpoint counted twice -------------------------------------------------------------
@pytest.mark.parametrize("how", ["same_path", "trailing_slash", "relative", "symlink", "copy", "same_seed"])
def test_the_same_checkpoint_twice_is_refused(tiny, tmp_path, capsys, how, monkeypatch):
    ck = tiny["frozen"]
    if how == "same_path":
        other = str(ck)
    elif how == "trailing_slash":
        other = f"{ck}/"
    elif how == "relative":
        monkeypatch.chdir(ck.parent)
        other = ck.name
    elif how == "symlink":
        other = tmp_path / "link"
        other.symlink_to(ck)
    elif how == "copy":
        other = tmp_path / "copy"
        shutil.copytree(ck, other)
    else:
        other = checkpoint(tmp_path / "again", tiny["model"], "frozen", seed=0)
        edit_json(Path(other) / "run.json", lambda r: r.__setitem__("note", "another run, same seed"))
    err = refused(capsys, tmp_path, ck, Path(other), fragment="counted once")
    assert ("the same seed" in err) == (how == "same_seed")


def test_a_checkpoint_given_as_a_file_or_absent_is_refused(tiny, tmp_path, capsys):
    for bad in (tiny["corpus"], tmp_path / "absent"):
        refused(capsys, tmp_path, Path(bad))
    assert json.loads((tiny["frozen"] / "run.json").read_text())["seed"] == 0
