"""The exceptions that reach the user as one line: bad input (exit 2) and environment faults (exit 1)."""

from __future__ import annotations

import errno
import re

# Faults of the machine, not of the input: the same command succeeds once they are fixed.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE}
)


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits 2."""


class EnvironmentFault(Exception):  # noqa: N818 - a fault, not an error of the user
    """The machine failed us (full disk, quota, I/O error): one line, exit 1; rerunning resumes."""


def field_path(where: str, key: str) -> str:
    """`file: key.sub` — a file (or other source) named once, then the key's dotted path."""
    return f"{where}.{key}" if ": " in where else f"{where}: {key}"


def describe_os_error(err: OSError) -> str:
    """`path: reason` for an OSError, in one line."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    reason = err.strerror or str(err) or type(err).__name__
    return f"{where}: {reason}" if where else reason


def classify(err: BaseException) -> UserError | EnvironmentFault | None:
    """The one-line error an exception from the file system stands for, or None (a real bug).

    A full disk or quota is an environment fault; an unwritable, missing or linked path is the
    user's to fix. safetensors reports I/O failures as its own error type with the OS error in its
    message ("... File too large (os error 27)"); those are recognised by that errno."""
    if isinstance(err, OSError):
        cls = EnvironmentFault if err.errno in ENVIRONMENT_ERRNOS else UserError
        return cls(describe_os_error(err))
    if isinstance(err, MemoryError):
        return EnvironmentFault("out of memory")
    found = re.search(r"\(os error (\d+)\)", str(err))
    if type(err).__name__ == "SafetensorError" and found:
        cls = EnvironmentFault if int(found[1]) in ENVIRONMENT_ERRNOS else UserError
        return cls(f"writing tensors failed: {str(err).splitlines()[0][:200]}")
    if isinstance(err, RecursionError):
        return UserError("an input file is nested too deeply to read (a malformed or hostile record)")
    return None
