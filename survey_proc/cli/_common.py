"""What the verbs share: option types, and how the library's progress and log lines are shown.

Library code never prints: it reports progress through :mod:`survey_proc.progress` and its messages
through :mod:`logging` (loggers under ``survey_proc``). :func:`reporting` is the one place the command
line shows them, set up once by ``main`` around every verb: bars and INFO lines (printed above the
bars, on stdout) for the verbs that report progress, unless ``--quiet``; warnings and errors on stderr
always, as Python prints them where no logging is configured.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from survey_proc import progress


def positive_int(text: str) -> int:
    """An argparse type: an integer above zero."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def given(**options: Any) -> dict[str, Any]:
    """The options the user gave (not None): passed on, so that the library's defaults hold for the rest."""
    return {k: v for k, v in options.items() if v is not None}


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bars and no log lines (warnings and errors still go to stderr)."""
    parser.add_argument("--quiet", action="store_true")


def _to_stderr(message: str) -> None:
    if progress.enabled():  # above the bars, which tqdm draws on stderr
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


class _Lines(logging.Handler):
    """The library's log records as the command line shows them: INFO above the progress bars
    (``progress.write``: only where bars are shown), warnings and errors on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                _to_stderr(message)
            else:
                progress.write(message)
                sys.stdout.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def reporting(shown: bool) -> Iterator[None]:
    """Progress bars and the library's INFO log lines while a verb runs, where ``shown``; warnings
    and errors on stderr either way. Restores the ``survey_proc`` logger afterwards."""
    logger, handler = logging.getLogger("survey_proc"), _Lines()
    level = logger.level
    handler.setLevel(logging.INFO if shown else logging.WARNING)  # a run's log file may take INFO meanwhile
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if shown else logging.WARNING)
    try:
        with progress.shown(shown):
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def shows_progress(args: argparse.Namespace) -> bool:
    """Whether the verb of ``args`` shows the library's progress: verbs that report it (``reports``
    in their defaults) unless ``--quiet``."""
    return bool(getattr(args, "reports", False)) and not getattr(args, "quiet", False)
