"""``python -m benchmarks.bench``: ``survey-proc bench`` from the repository root, where its scripts and
docs call it. The code is the installed package's (:mod:`survey_proc.bench`), re-exported here.

    python -m benchmarks.bench --quick --json benchmarks/results/bench-quick.json
"""

from __future__ import annotations

import sys

from survey_proc.bench import BenchConfig, gpu_runs, mock_cube, run_bench, sample_cube

__all__ = ["BenchConfig", "gpu_runs", "main", "mock_cube", "run_bench", "sample_cube"]


def main(argv: list[str] | None = None) -> int:
    """``survey-proc bench`` with ``argv`` (default: the command line's arguments)."""
    from survey_proc.cli import main as cli

    return cli(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
