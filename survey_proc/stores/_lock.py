"""A lock on an output path, so that two runs never write the same store at once.

The lock is a small file beside the output (``.<name>.lock``), created atomically
(``O_CREAT | O_EXCL``) and holding who took it: process id, host, since when, the command. A lock
whose process is gone (same host, no such pid) is stale and taken over; a live one (or one taken on
another host, which cannot be checked from here) refuses the second run with a message naming the
first. A process may take a lock it holds again (the engine prepares, then runs, then finishes a
store): locks count their holders and go when the last lets go, or when the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from survey_proc.errors import SurveyProcError

log = logging.getLogger(__name__)

#: lock files this process holds -> how many times it took each
_HELD: dict[Path, int] = {}


class StoreLockedError(SurveyProcError):
    """Another run (alive, or on another host) is writing the same output."""


class OutputPathError(SurveyProcError):
    """An output path survey-proc must not write: not its own store, over an input, not writable."""


def lock_file(out: str | os.PathLike) -> Path:
    """The lock file of an output path: ``.<name>.lock`` beside it."""
    path = Path(out).resolve()
    return path.parent / f".{path.name}.lock"


def acquire(out: str | os.PathLike) -> Path:
    """Take the lock of ``out`` for this process (again, if it holds it already); returns the lock file.

    Raises :class:`StoreLockedError` naming the holder when another live run holds it, and
    :class:`OutputPathError` when the folder cannot be written.
    """
    lock = lock_file(out)
    if lock in _HELD:
        _HELD[lock] += 1
        return lock
    for _ in range(3):  # a stale lock removed by two runs at once: one of them wins the retry
        if _create(lock, out):
            _HELD[lock] = 1
            return lock
        holder = _holder(lock)
        if holder is None or not _is_stale(holder):
            raise StoreLockedError(_locked_message(out, lock, holder))
        log.warning(f"taking over the lock of {out}: {_describe(holder)} is gone")
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    raise StoreLockedError(_locked_message(out, lock, _holder(lock)))


def release(out: str | os.PathLike) -> None:
    """Let go of the lock of ``out`` (removed when this process's last hold ends)."""
    lock = lock_file(out)
    count = _HELD.get(lock, 0)
    if count > 1:
        _HELD[lock] = count - 1
        return
    _HELD.pop(lock, None)
    if count:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def locked(out: str | os.PathLike) -> Iterator[Path]:
    """The lock of ``out``, held for the block."""
    lock = acquire(out)
    try:
        yield lock
    finally:
        release(out)


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD):
        with contextlib.suppress(OSError):
            lock.unlink()
    _HELD.clear()


def _create(lock: Path, out: str | os.PathLike) -> bool:
    """Create the lock file with this process's record; False if it exists."""
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv[:6]),
    }
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {out}: {lock.parent} is not writable ({exc.strerror}); choose an output in a "
            "folder you can write to"
        ) from None
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return True


def _holder(lock: Path) -> dict | None:
    """The record in a lock file (None if unreadable; ``{}`` if it went away meanwhile)."""
    try:
        return json.loads(lock.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return None


def _is_stale(holder: dict) -> bool:
    """A lock whose process is gone: taken on this host by a pid that no longer exists."""
    if not holder:
        return True  # removed meanwhile
    if holder.get("host") != socket.gethostname():
        return False  # cannot tell from here
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def _describe(holder: dict | None) -> str:
    if not holder:
        return "an unknown run (the lock file cannot be read)"
    command = f": {holder['command']}" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}{command}"


def _locked_message(out: str | os.PathLike, lock: Path, holder: dict | None) -> str:
    elsewhere = (
        " (on another host: survey-proc cannot tell from here whether it still runs)"
        if holder and holder.get("host") != socket.gethostname()
        else ""
    )
    return (
        f"{out} is being written by another survey-proc run ({_describe(holder)}){elsewhere}; wait for it "
        f"to finish, or write elsewhere. If that run is gone, delete {lock} and run again"
    )
