"""Output files: refuse to clobber earlier results, write JSON atomically."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

from mechcheck.errors import UserError


def claim_file(path: str | Path, overwrite: bool) -> Path:
    """A file we are about to write: refused if it exists, unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def claim_dir(path: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """A directory we are about to fill: a non-empty one is refused unless `overwrite` or `resume`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        raise UserError(f"{path} already holds results; pass --overwrite to replace them (or --resume)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON via a temporary file and an atomic rename, so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_default) + "\n")
    os.replace(tmp, path)
    return path


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def versions() -> dict[str, str]:
    """Library versions for provenance (by package metadata: nothing heavy is imported)."""
    from mechcheck import __version__

    out = {"python": platform.python_version(), "mechcheck": __version__}
    for package in ("torch", "transformers", "nnsight", "numpy", "scipy", "scikit-learn"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out
