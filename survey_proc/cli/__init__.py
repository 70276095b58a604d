"""``survey-proc``: verbs only — parse, call one function, print a summary.

One module per verb group, each adding its verbs' subparsers: ``_data`` (mock, photometry, ingest,
ingest-spectra, bin, validate, example), ``_run`` (run, one cube or a survey of many), ``_models``
(models, train, trainset, evaluate, evaluate-bins), ``_analysis`` (compare, gradients, demo),
``_cluster`` (cluster) and ``_bench`` (bench); ``_main`` puts them together. Each verb imports the
library it calls when it runs, so that ``survey-proc --help`` does not load the engine, torch and
pPXF (0.3 s against ~3 s).

Errors meant for the user (:class:`survey_proc.errors.SurveyProcError`) are printed as one message
without a traceback, with exit status 2; an interrupted run exits 130 and says how to resume. The
library's progress bars and log lines are shown by :func:`reporting`, set up once in :func:`main`
around every verb.
"""

from survey_proc.cli._common import reporting
from survey_proc.cli._main import build_parser, main

__all__ = ["build_parser", "main", "reporting"]
