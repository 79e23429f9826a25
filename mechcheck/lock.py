"""One writer per output: an OS-level lock on a lock file that names its holder.

`OutputLock(path, what)` takes an exclusive `flock` on `path` (created if absent, never through a
link) and writes its holder into it: pid, host, start time, command line. A second process — on
this machine or another one sharing the storage (Linux NFS carries `flock` as a POSIX lock) —
fails at once with one line naming the holder. The kernel drops the lock when its holder dies,
however it dies, so the file a crashed or killed run leaves behind is simply taken over.

Where the file system has no locks at all (`flock` fails with ENOLCK or EOPNOTSUPP), the lock
file's existence is the lock: it is created exclusively, and one whose holder is dead on this host
(its pid gone, or reused by a process that started later) is taken over. A holder on another host
is never presumed dead: the message names it and the file to delete once that run is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

from mechcheck.errors import UserError

NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})
_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


class OutputLock:
    """An exclusive lock on `path` for the output `what` (named in messages); a context manager."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what = Path(path), what
        self.fd: int | None = None
        self.token = secrets.token_hex(8)
        self.kernel = True  # False: the file's existence is the lock

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> OutputLock:
        for _ in range(20):  # the file may vanish between open and lock when its holder releases it
            fd, created = self._open()
            if fd is None:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise UserError(self._held(holder)) from None
            except OSError as err:
                if err.errno not in NO_LOCKS:
                    os.close(fd)
                    raise
                return self._without_kernel_locks(fd, created)
            if _same_file(fd, self.path):
                self._own(fd)
                return self
            os.close(fd)
        raise UserError(f"cannot lock {self.what}: its lock file {self.path} keeps changing")

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if _same_file(fd, self.path) and _read(fd).get("token") == self.token:
                os.unlink(self.path)  # while still holding it: a waiter re-opens a fresh file
        finally:
            os.close(fd)

    # --- internals ----------------------------------------------------------------------
    def _open(self) -> tuple[int | None, bool]:
        try:
            return os.open(self.path, _FLAGS | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        except OSError as err:
            raise self._cannot(err) from err
        try:
            return os.open(self.path, _FLAGS), False
        except FileNotFoundError:
            return None, False  # released in between: try again
        except OSError as err:
            raise self._cannot(err) from err

    def _cannot(self, err: OSError) -> UserError:
        if err.errno == errno.ELOOP:
            return UserError(f"{self.path} is a symbolic link; mechcheck never writes through links")
        return UserError(f"cannot lock {self.what}: {self.path}: {err.strerror or err}")

    def _own(self, fd: int) -> None:
        record = json.dumps(holder_record() | {"token": self.token}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self.fd = fd

    def _without_kernel_locks(self, fd: int, created: bool) -> OutputLock:
        """No flock here: an exclusively created file is the lock; a dead local holder's is taken."""
        self.kernel = False
        if created:
            self._own(fd)
            return self
        holder = _read(fd)
        os.close(fd)
        if not _dead_here(holder, self.path):
            raise UserError(self._held(holder) + f" (this file system has no locks: once that run is "
                            f"gone, delete {self.path})")  # fmt: skip
        stale = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, stale)
            if _read_path(stale).get("token") != holder.get("token"):  # renamed a newer holder's file
                with contextlib.suppress(OSError):
                    os.link(stale, self.path)
                os.unlink(stale)
                raise UserError(self._held(_read_path(self.path)))
            os.unlink(stale)
        return self.acquire()

    def _held(self, holder: dict[str, Any]) -> str:
        if not holder.get("pid"):
            who = "a mechcheck run that is just starting"
        else:
            since, command = holder.get("since") or "?", holder.get("command", "?")
            who = f"pid {holder['pid']} on {holder.get('host', '?')}, since {since}: {command}"
        return (
            f"{self.what} is being written by another mechcheck run ({who}); wait for it or choose "
            "another --out"
        )


def holder_record() -> dict[str, Any]:
    """Who holds a lock: pid, host, when, the command line, and the process's start tick."""
    command = " ".join(["mechcheck", *sys.argv[1:]])[:300]
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "time": time.time(),
        "command": command,
        "start": _process_start(os.getpid()),
    }


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _dead_here(holder: dict[str, Any], path: Path) -> bool:
    """Whether the holder recorded in a lock file is certainly gone (only decidable on its own host)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):  # an empty record: stale once it is older than a start-up
        try:
            return time.time() - path.stat().st_mtime > 30
        except OSError:
            return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    started = holder.get("start")
    return started is not None and _process_start(pid) not in (None, started)


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_path(path: Path) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    try:
        return _read(fd)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (a releasing holder unlinks it)."""
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
