"""The log file of a run: ``<maps>.log`` beside each maps store (``c.maps.zarr`` -> ``c.maps.log``).

It opens with what the run uses and where each value came from (model, redshift, S/N threshold,
the run's options, every ``survey-proc`` setting and those changed from the defaults, notes on
settings a manifest fixes, unknown keys), then holds the library's log records (``logging``,
INFO and above) while the run lasts, and ends with the run's summary. A rerun appends to it. It
is written only once the maps store is known to be the run's own, and never into a file that is
not a survey-proc log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from survey_proc import __version__, config
from survey_proc.engine._jobs import CubeJob

log = logging.getLogger(__name__)

_FIRST_WORDS = "survey-proc run"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_path(out: str | os.PathLike) -> Path:
    """``<maps>.log`` beside the maps store (``.zarr`` dropped)."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".zarr") + ".log")


def _ours(path: Path) -> bool:
    """A log file may be appended to only when it is absent or a survey-proc run's log."""
    if not path.exists():
        return True
    try:
        with open(path) as f:
            return f.read(len(_FIRST_WORDS)) == _FIRST_WORDS
    except (OSError, UnicodeDecodeError):
        return False


def header(job: CubeJob) -> str:
    """The opening lines of a run's log: where, when, what it uses and why."""
    rc = job.rc
    lines = [
        f"{_FIRST_WORDS} of {rc.cube} -> {rc.out}: survey-proc {__version__}, "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {platform.node()} (pid {os.getpid()}), "
        f"Python {sys.version.split()[0]}",
        "settings:",
    ]
    for key, value in job.settings.items():
        if key != "notes":
            lines.append(f"  {key}: {value}")
    lines += [f"  note: {note}" for note in job.settings.get("notes", [])]
    changed = config.overrides()
    lines.append("  survey-proc settings changed from the defaults: " + (_listed(changed) or "none"))
    unknown = config.unknown_keys()
    if unknown:
        lines.append(f"  unknown survey-proc settings (ignored): {', '.join(unknown)}")
    lines.append("  every survey-proc setting (dask.config):")
    lines += [f"    {k} = {v!r}" for k, v in sorted(config.effective().items())]
    lines.append(f"  regions: {len(job.regions)}, of which {len(job.regions) - len(job.pending)} already done")
    return "\n".join(lines) + "\n"


def _listed(values: dict) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in sorted(values.items()))


@contextlib.contextmanager
def run_logs(jobs: list[CubeJob]) -> Iterator[dict[str, logging.FileHandler]]:
    """Each job's log file open (its header written) for the library's records while the run lasts;
    yields maps path -> handler (see :func:`append`). The ``survey_proc`` logger passes INFO records
    meanwhile (handlers that show them, such as the command line's, keep their own levels)."""
    logger = logging.getLogger("survey_proc")
    shown = _warnings_shown(logger)
    handlers: dict[str, logging.FileHandler] = {}
    for job in jobs:
        path = log_path(job.rc.out)
        if not _ours(path):
            log.warning(f"{path} exists and is not a survey-proc log: this run writes no log file")
            continue
        with open(path, "a") as f:
            f.write(header(job))
        handler = logging.FileHandler(path, mode="a")
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.setLevel(logging.INFO)
        logger.addHandler(handler)
        handlers[job.rc.out] = handler
    level = logger.level
    if handlers and (level == logging.NOTSET or level > logging.INFO):
        logger.setLevel(logging.INFO)
    try:
        yield handlers
    finally:
        logger.setLevel(level)
        for handler in handlers.values():
            logger.removeHandler(handler)
            handler.close()
        if shown is not None:
            logger.removeHandler(shown)


def _warnings_shown(logger: logging.Logger) -> logging.Handler | None:
    """Where no handler shows the library's records (a script that configured no logging), warnings
    reach stderr through Python's last resort; a log file's handler would end that, so a stderr
    handler for warnings takes its place while the run lasts (returned, to be removed)."""
    if logger.hasHandlers():
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    logger.addHandler(handler)
    return handler


def append(handlers: dict[str, logging.FileHandler], out: str, text: str) -> None:
    """Lines written straight into the log of the maps at ``out`` (the run's summary): not shown elsewhere."""
    handler = handlers.get(out)
    if handler is not None and handler.stream is not None:
        handler.acquire()
        try:
            handler.stream.write(text.rstrip("\n") + "\n\n")
            handler.flush()
        finally:
            handler.release()
