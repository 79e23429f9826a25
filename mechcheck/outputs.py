"""Output files: refuse to clobber earlier results; write atomically, never through a symbolic link.

Every write goes to a fresh temporary file beside its target (created exclusively, so a planted
link in its place is refused, not followed) and is renamed over the target: a kill never leaves
half a file, and a link at the target's name is replaced, never written through. While a command
holds an output directory (`mechcheck.ownership.claim_output`), every write below it is refused
when its folder resolves outside that directory (a linked `figures/` or `train/`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mechcheck.errors import UserError

MARKER_NAME = ".mechcheck.json"  # mechcheck's own record of an output directory (ownership.py)
LOCK_NAME = ".mechcheck.lock"  # the one-writer lock (lock.py)
BOOKKEEPING = (MARKER_NAME, LOCK_NAME)  # present in every claimed directory; not results

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_ROOTS: list[tuple[str, str]] = []  # (absolute, resolved) path of each directory this process holds


def claim_file(path: str | Path, overwrite: bool) -> Path:
    """A file we are about to write: refused if it exists, unless `overwrite`."""
    path = Path(path)
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; mechcheck never writes through links")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a file")
    make_dirs(path.parent)
    return path


def holds_results(path: Path) -> bool:
    """Whether directory `path` holds anything but mechcheck's bookkeeping files."""
    return any(p.name not in BOOKKEEPING for p in path.iterdir())


def claim_dir(path: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """A directory we are about to fill: a non-empty one is refused unless `overwrite` or `resume`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a directory")
    if path.is_dir() and holds_results(path) and not (overwrite or resume):
        raise UserError(f"{path} already holds results; pass --overwrite to replace them (or --resume)")
    make_dirs(path)
    return path


def make_dirs(folder: Path) -> None:
    """`mkdir -p` that refuses to create anything through a link out of a held directory."""
    guard(folder / "_")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise UserError(f"cannot create folder {folder}: a file of that name is in the way") from err


def remove_path(path: Path) -> None:
    """Delete a file, a folder (links inside it unlinked, never followed) or a link itself."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


# --- atomic writes ------------------------------------------------------------------------
def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file + rename), never following a link."""
    path = Path(path)
    guard(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, compact: bool = False) -> Path:
    """Write JSON via a temporary file and an atomic rename, so a kill never leaves half a file.
    Arrays (numpy, torch) are written as lists, paths as strings. Indented with a final newline;
    `compact`: one line, no final newline (large arrays: predictions.json)."""
    text = (
        json.dumps(data, default=_default) if compact else json.dumps(data, indent=2, default=_default) + "\n"
    )
    return write_text(path, text)


def canonical_json(data: Any) -> str:
    """The one JSON text of `data` that hashes are taken over: keys sorted, unknown values as `str`.
    Changing it changes every stage digest, config hash and cache key already on disk."""
    return json.dumps(data, sort_keys=True, default=str)


def save_figure(fig: Any, path: str | Path, **savefig: Any) -> Path:
    """A matplotlib figure as PNG at `path`, written like every other file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig)
    return write_bytes(path, buffer.getvalue())


def _default(value: Any) -> Any:
    """JSON for what `json` does not know: arrays and tensors as lists, paths as strings."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


# --- links --------------------------------------------------------------------------------
def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def guard(path: str | Path) -> None:
    """Refuse a write to `path` whose folder, below a held output directory, resolves outside it."""
    folder = os.path.abspath(os.path.dirname(os.path.abspath(path)))
    for root_abs, root_real in _ROOTS:
        if _inside(folder, root_abs) and not _inside(os.path.realpath(folder), root_real):
            raise UserError(
                f"{path}: a folder on the way is a symbolic link out of {root_abs}; mechcheck never writes "
                "through links out of its output directory — remove the link"
            )


@contextlib.contextmanager
def held(root: Path) -> Iterator[None]:
    """While inside, every write below `root` is guarded against links out of it."""
    entry = (os.path.abspath(root), os.path.realpath(root))
    _ROOTS.append(entry)
    try:
        yield
    finally:
        _ROOTS.remove(entry)


def links_out_of(root: Path) -> list[tuple[Path, str]]:
    """Every symbolic link below `root` whose target lies outside it: (link, target)."""
    root_real = os.path.realpath(root)
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            if os.path.islink(path) and not _inside(os.path.realpath(path), root_real):
                found.append((Path(path), os.readlink(path)))
    return found


def refuse_links_out(root: Path) -> None:
    """One line naming the first link below `root` that leads out of it."""
    links = links_out_of(root)
    if links:
        link, target = links[0]
        more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
        raise UserError(
            f"{link} is a symbolic link to {target}, outside {root}{more}; mechcheck never writes through "
            "links out of its output directory — remove it or choose another --out"
        )


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
