"""Benchmark scripts of the repository (not installed).

``survey-proc bench`` is the installed package's (:mod:`survey_proc.bench`); ``python -m
benchmarks.bench`` runs it from here. The repository's results are in ``benchmarks/results/``
(written with ``--json benchmarks/results/bench.json``); ``benchmarks/gpu/`` runs it on a GPU node.
"""
