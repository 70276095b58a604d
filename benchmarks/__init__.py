"""Benchmarks of survey-proc: the neural model and pPXF through the same engine, in one run.

Run with ``survey-proc bench`` (or ``python -m benchmarks.bench`` from the repository root); results
go to ``benchmarks/results/`` as JSON, a Markdown report and PNG plots.
"""
