"""Who may write an output directory, and what `--overwrite` may delete.

A command that fills a directory (`mechcheck run|train|test --out DIR`) holds it first:

    with hold(out) as output:                     # lock, link check, cleanup on refusal
        output.claim("test", TEST_ENTRIES, overwrite=args.overwrite, resume=False)
        ...                                        # write

1. `hold` takes the directory's lock (`mechcheck.lock`): one writer at a time; a second command on
   it is refused at once, with the holder named. No symbolic link below it may lead out of it, and
   while it is held every write below it is checked for such links (`mechcheck.outputs.guard`).
2. `claim` accepts an empty or absent directory, or one carrying mechcheck's marker
   `.mechcheck.json` — written only here: `{"format": "mechcheck-output/1", "run_id": <random>,
   "kind": "run" | "train" | "test", "entries": [the top-level names mechcheck writes there]}`.
   Anything else is refused, with or without --overwrite: mechcheck never deletes what it did not
   write. (A directory an older mechcheck wrote, before the marker existed, is recognised by the
   caller's `legacy` rule and adopted, if every name in it is one mechcheck writes.)
3. With --overwrite exactly the marker's entries are removed — a link is unlinked, never followed;
   an entry's temporary file (`.NAME.*.tmp`, `NAME.tmp`) goes with it — and every other file stays.
4. A command refused with one line (`UserError`) before it did any costly work leaves the directory
   as it found it: what it created is removed, and a directory it created goes entirely. Once work
   worth resuming is done (`Output.keep`: e.g. `mechcheck run` after its first scan), a refusal
   keeps it, as an interrupted or crashed command keeps everything it wrote, so the next run resumes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechcheck.errors import UserError
from mechcheck.lock import OutputLock
from mechcheck.outputs import (
    BOOKKEEPING,
    LOCK_NAME,
    MARKER_NAME,
    held,
    refuse_links_out,
    remove_path,
    write_bytes,
    write_json,
)  # fmt: skip
from mechcheck.records import INDEX, STR, ListOf, Obj, check, read_json

FORMAT = "mechcheck-output/1"
MARKER = Obj(
    {"format": STR, "run_id": STR, "kind": STR, "entries": ListOf(STR), "created": STR, "commands": INDEX},
    required=("format", "run_id", "kind", "entries"),
)
_TEMPORARY = re.compile(r"\.(?P<entry>.+)\.[A-Za-z0-9_]+\.tmp|(?P<old>.+)\.tmp")


def owned(name: str, entries: Sequence[str]) -> bool:
    """Whether top-level `name` is one of `entries` or a temporary file of one."""
    if name in entries:
        return True
    match = _TEMPORARY.fullmatch(name)
    return bool(match) and (match["entry"] or match["old"]) in entries


def read_marker(out: Path) -> dict[str, Any] | None:
    """The marker of `out` (None when it has none); a corrupt one is refused, never trusted."""
    path = out / MARKER_NAME
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise UserError(f"{path} is not a file mechcheck wrote; choose another --out")
    data = read_json(path)
    check(data, MARKER, str(path))
    if data["format"] != FORMAT:
        raise UserError(
            f"{path}: unknown format {data['format']!r} (expected {FORMAT}); choose another --out"
        )
    return data


@dataclass
class Output:
    """A directory this process holds (see `hold`)."""

    out: Path
    created_dir: bool
    before: frozenset[str]  # top-level names present when it was taken (bookkeeping excluded)
    marker_existed: bool
    marker: dict[str, Any] | None = None
    state: str = ""  # after claim: fresh | resumed | replaced
    finished: bool = False  # the command's work returned
    _run_id: str = field(default="", repr=False)
    _saved: dict[str, bytes] = field(default_factory=dict, repr=False)  # restored on refusal

    def results(self) -> list[str]:
        return sorted(p.name for p in self.out.iterdir() if p.name not in BOOKKEEPING)

    def owner(
        self, kind: str, entries: Sequence[str], legacy: Callable[[Path], bool] | None = None
    ) -> dict[str, Any] | None:
        """The marker of the earlier output here (None when the directory is empty); a directory
        mechcheck did not write is refused. `legacy` recognises one an older mechcheck wrote."""
        marker, names = read_marker(self.out), self.results()
        if not names or marker is not None:
            return marker if names else None
        if legacy is not None and legacy(self.out) and all(owned(n, entries) for n in names):
            return {"kind": kind, "entries": names, "run_id": secrets.token_hex(8)}
        raise UserError(
            f"{self.out} is not empty and holds no mechcheck output (no {MARKER_NAME}); choose another "
            "--out (mechcheck never deletes what it did not write)"
        )

    def claim(
        self,
        kind: str,
        entries: Sequence[str],
        *,
        overwrite: bool,
        resume: bool,
        legacy: Callable[[Path], bool] | None = None,
    ) -> str:
        """Take the directory for a `kind` command writing `entries`: fresh, resumed or replaced."""
        marker, names = self.owner(kind, entries, legacy), self.results()
        if marker is None:
            return self._write(kind, entries, "fresh", None)
        if marker["kind"] != kind and not overwrite:
            raise UserError(
                f"{self.out} holds the output of `mechcheck {marker['kind']}`; pass --overwrite to replace "
                "it, or choose another --out"
            )
        if overwrite:
            for name in names:
                if owned(name, marker["entries"]):
                    remove_path(self.out / name)
            return self._write(kind, entries, "replaced", None)
        if not resume:
            more = " (or --resume)" if kind == "train" else ""
            raise UserError(f"{self.out} already holds results; pass --overwrite to replace them{more}")
        return self._write(kind, entries, "resumed", marker)

    def _write(self, kind: str, entries: Sequence[str], state: str, old: dict[str, Any] | None) -> str:
        old = old or {}
        self.marker = {
            "format": FORMAT,
            "run_id": old.get("run_id") or secrets.token_hex(16),
            "kind": kind,
            "entries": sorted({*old.get("entries", ()), *entries}),
            "created": old.get("created") or time.strftime("%Y-%m-%d %H:%M:%S"),
            "commands": int(old.get("commands", 0)) + 1,
        }
        write_json(self.out / MARKER_NAME, self.marker)
        self._run_id, self.state = self.marker["run_id"], state
        return state

    def check_still_ours(self) -> None:
        """Refuse to report success if another writer replaced the directory's marker meanwhile."""
        if not self._run_id:
            return
        marker = read_marker(self.out)
        if marker is None or marker["run_id"] != self._run_id:
            raise UserError(f"{self.out} was replaced by another run while this one was writing it")

    def preserve(self, name: str) -> None:
        """Keep top-level file `name` as it is now, to put back if the command is refused."""
        path = self.out / name
        if path.is_file() and not path.is_symlink() and name not in self._saved:
            self._saved[name] = path.read_bytes()

    def settle(self) -> None:
        """Count what the directory holds now as there before this command: a layout migration done
        under the lock, which a later refusal must not undo."""
        self.before = frozenset(self.results())

    def keep(self) -> None:
        """Count everything the directory holds now as results to keep: finished, resumable work (a
        scan, a trained cell), which a later refusal must not undo. The marker stays with it."""
        self.settle()
        self.created_dir, self.marker_existed = False, (self.out / MARKER_NAME).exists()
        self._saved.clear()

    def undo(self) -> None:
        """Remove what this command created (the whole directory, when it created that) and put back
        the files it preserved."""
        for name in self.results():
            if self.created_dir or name not in self.before:
                remove_path(self.out / name)
        if not self.marker_existed:
            (self.out / MARKER_NAME).unlink(missing_ok=True)
        for name, data in self._saved.items():
            write_bytes(self.out / name, data)


@contextlib.contextmanager
def hold(out: str | Path, create: bool = True) -> Iterator[Output]:
    """Lock `out` for this command (creating it when `create`); see the module docstring."""
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    if not create and not out.is_dir():
        raise UserError(f"{out} does not exist or is not a directory")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise UserError(f"cannot create output directory {out}: a file is in the way") from err
    except OSError as err:
        raise UserError(f"cannot create output directory {out}: {err.strerror or err}") from err
    try:
        lock = OutputLock(out / LOCK_NAME, str(out)).acquire()
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    output = None
    try:
        with held(out):
            refuse_links_out(out)
            names = frozenset(p.name for p in out.iterdir() if p.name not in BOOKKEEPING)
            output = Output(out, created, names, (out / MARKER_NAME).exists())
            output.preserve(MARKER_NAME)
            yield output
            output.finished = True
            output.check_still_ours()
    except UserError:
        if output is not None and not output.finished:
            output.undo()
        raise
    finally:
        lock.release()
        if created and not any(out.iterdir()):
            with contextlib.suppress(OSError):
                os.rmdir(out)
