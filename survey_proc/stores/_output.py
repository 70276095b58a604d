"""Where survey-proc may write: one policy for every writer (mock, ingest, photometry, bin, run).

- **Only its own stores.** An existing output is replaced (or resumed) only when it is a
  survey-proc store: its attributes carry :data:`STORE_MARKER` (written first, when a store is set
  up), or, for stores written before the marker, ``software`` starting with ``survey-proc`` or a
  ``run_signature``. Anything else (a folder of files, another tool's Zarr store, a file) is
  refused, ``--overwrite`` or not; an empty folder is used.
- **Never over an input.** An output equal to an input, inside one, or holding one is refused.
- **Whole stores appear complete or not at all** (:func:`staged_output`): they are written into a
  hidden sibling, ``.<name>.incomplete``, and renamed into place once verified; the previous store
  at the path is removed only after that. A write that fails leaves the user's path as it was; the
  sibling is kept for the rerun to resume when it holds finished regions, else removed.
- **One writer at a time**: the output is locked (:mod:`._lock`) while it is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import zarr

from survey_proc.stores._lock import OutputPathError, locked

log = logging.getLogger(__name__)

#: attribute naming the kind of a survey-proc store ("cube", "maps", ...): written first at setup
STORE_MARKER = "survey_proc_store"
#: attributes that name a store written by survey-proc before the marker existed
_LEGACY_SIGNS = ("run_signature",)


def store_attrs(path: str | os.PathLike) -> dict | None:
    """The root attributes of a Zarr store (v2 or v3), or None if ``path`` is not one."""
    path = Path(path)
    if not ((path / "zarr.json").is_file() or (path / ".zgroup").is_file()):
        return None
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # unreadable metadata: not a store survey-proc may replace
        return None


def is_survey_proc_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a store survey-proc wrote (and may therefore replace or resume)."""
    attrs = store_attrs(path)
    if attrs is None:
        return False
    return (
        STORE_MARKER in attrs
        or str(attrs.get("software", "")).startswith("survey-proc")
        or any(k in attrs for k in _LEGACY_SIGNS)
    )


def check_output(
    out: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (), *, replace: bool = True, what: str = "store"
) -> Path:
    """Refuse an output survey-proc must not write; returns it resolved.

    Refused: an output that is, lies inside or holds one of ``inputs``; an existing path that is
    not a survey-proc store (whatever the options); an existing store when ``replace`` is False.
    """
    path = Path(out).resolve()
    for given in inputs:
        _check_apart(out, path, given, what)
    if path.is_symlink() or path.exists():
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            return path  # an empty folder: nothing to lose
        if not is_survey_proc_store(path):
            raise OutputPathError(
                f"{out} exists and is not a survey-proc store ({_describe(path)}); survey-proc writes only "
                f"into stores it made and never deletes other files, --overwrite or not: choose another "
                f"output path for the {what}"
            )
        if not replace:
            raise OutputPathError(f"{out} exists; pass --overwrite to replace it, or choose another output path")
    return path


def _check_apart(out: str | os.PathLike, path: Path, given: str | os.PathLike, what: str) -> None:
    source = Path(given).resolve()
    if path == source:
        why = "is the input"
    elif source in path.parents:
        why = "lies inside the input"
    elif path in source.parents:
        why = "holds the input"
    else:
        return
    raise OutputPathError(
        f"the output {out} {why} {given}: writing the {what} there would destroy the input; choose "
        "an output path outside it"
    )


def _describe(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return "a broken link"
    if not path.is_dir():
        return "a file"
    if store_attrs(path) is not None:
        return "a Zarr store another tool wrote"
    count = sum(1 for _ in path.iterdir())
    return f"a folder of {count} entr{'y' if count == 1 else 'ies'}"


def staging_path(out: str | os.PathLike) -> Path:
    """Where a whole store is written before it is renamed to ``out``: ``.<name>.incomplete`` beside it."""
    path = Path(out).resolve()
    return path.parent / f".{path.name}.incomplete"


@contextlib.contextmanager
def staged_output(
    out: str | os.PathLike, *, inputs: Sequence[str | os.PathLike] = (), replace: bool = True, what: str = "store"
) -> Iterator[Path]:
    """Check and lock ``out``, yield the path to write the whole store into; rename it into place
    when the block ends without error. On error, ``out`` is untouched and the staged store is kept
    for a rerun to resume if it holds finished regions, else removed."""
    check_output(out, inputs, replace=replace, what=what)
    with locked(out):
        staging = staging_path(out)
        if staging.exists() and not is_survey_proc_store(staging):
            _remove(staging)  # ours by its name, cut short before its setup began: nothing to resume
        try:
            yield staging
        except BaseException:
            _keep_or_remove(staging, out)
            raise
        publish(staging, out)


def publish(staging: Path, out: str | os.PathLike) -> None:
    """Put the finished store ``staging`` at ``out``; a previous store there is removed only after."""
    path = Path(out).resolve()
    if path.is_dir() and any(path.iterdir()):
        old = path.parent / f".{path.name}.replaced-{os.getpid()}"
        _remove(old)
        os.rename(path, old)
        os.rename(staging, path)
        _remove(old)
    else:
        if path.is_dir():
            path.rmdir()
        os.rename(staging, path)


def _keep_or_remove(staging: Path, out: str | os.PathLike) -> None:
    if _finished_regions(staging):
        log.warning(
            f"the unfinished {out} is kept in {staging}: run the same command again to resume it (or delete it)"
        )
    else:
        _remove(staging)


def _finished_regions(staging: Path) -> int:
    try:
        return int(np.asarray(zarr.open_group(str(staging), mode="r")["region_done"][...]).sum())
    except Exception:
        return 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
