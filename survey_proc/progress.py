"""Progress of long work: library code reports it, the caller decides whether it is shown.

Library code (the engine, ingest, mocks, training) never takes a ``progress`` flag: it wraps its
loops in :func:`bar` and logs its messages with :mod:`logging`. The command line turns bars on for
what it runs (``with progress.shown(): ...``); a Python caller does the same, or leaves them off
(the default), e.g. in a notebook that logs instead.

    from survey_proc import progress

    with progress.bar(total=len(regions), desc="regions", unit="region") as advance:
        for region in regions:
            ...
            advance(1)

    with progress.shown():          # the CLI
        engine.run(config)
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_SHOWN: contextvars.ContextVar[bool] = contextvars.ContextVar("survey_proc_progress_shown", default=False)


def enabled() -> bool:
    """Whether bars are shown in this context."""
    return _SHOWN.get()


@contextlib.contextmanager
def shown(on: bool = True) -> Iterator[None]:
    """Show (or, with ``on=False``, hide) progress bars for the work done inside."""
    token = _SHOWN.set(bool(on))
    try:
        yield
    finally:
        _SHOWN.reset(token)


@contextlib.contextmanager
def bar(total: int | None, desc: str, unit: str = "it", **options) -> Iterator[Callable[[int], None]]:
    """A progress bar of ``total`` steps (tqdm, where shown); yields ``advance(n)``.

    ``options`` go to tqdm (``leave``, ``smoothing``, ...). Where bars are hidden, ``advance`` does
    nothing and tqdm is not imported.
    """
    if not enabled():
        yield lambda n=1: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, **options) as t:
        yield t.update


def track(items: Iterable[T], desc: str, unit: str = "it", total: int | None = None, **options) -> Iterator[T]:
    """``items``, one at a time, advancing a bar (where shown) as each is taken."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, unit, **options) as advance:
        for item in items:
            yield item
            advance(1)


def write(message: str) -> None:
    """A line printed above the bars where they are shown (tqdm.write), else nothing: use logging for
    what must be recorded."""
    if enabled():
        from tqdm import tqdm

        tqdm.write(message)
