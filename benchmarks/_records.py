"""The record a benchmark script writes: its command, date and torch version beside its result, as
JSON with a Markdown report and a PNG of the same name."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def record(name: str, argv: list[str] | None, **fields) -> dict:
    """The report of ``python -m benchmarks.<name>`` run with ``argv`` (None: this process's), ``fields`` added."""
    return {
        "benchmark": name,
        "command": " ".join([f"python -m benchmarks.{name}", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        **fields,
    }


def write_record(
    report: dict, path: Path, markdown: Callable[[dict], str], figure: Callable[[dict, Path], None], indent: int = 1
) -> None:
    """``report`` as JSON at ``path``, its Markdown and its figure beside it (``.md``, ``.png``); the
    Markdown printed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=indent))
    path.with_suffix(".md").write_text(markdown(report))
    figure(report, path.with_suffix(".png"))
    print(markdown(report))
