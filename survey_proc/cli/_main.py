"""The ``survey-proc`` parser, made of every verb group's subparsers, and ``main``: run a verb, map
user errors to one line and exit 2, an interruption to exit 130."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from survey_proc.cli import _analysis, _bench, _cluster, _data, _maps, _models, _run
from survey_proc.cli._common import reporting, shows_progress
from survey_proc.errors import SurveyProcError

DESCRIPTION = (
    "Maps of stellar-population properties (log age, [M/H], A_V, velocity dispersion, each "
    "with an uncertainty and a quality flag) from IFU cubes, spectra catalogues and photometry: "
    "trained estimators (or pPXF) run over every spectrum with Dask, Zarr in and out."
)

#: every verb's subparser, in the order ``survey-proc --help`` lists them
VERBS = (
    _data.add_mock,
    _data.add_photometry,
    _data.add_resample,
    _data.add_ingest,
    _data.add_ingest_spectra,
    _data.add_example,
    _run.add_run,
    _maps.add_plot,
    _maps.add_export,
    _data.add_bin,
    _cluster.add_cluster,
    _data.add_validate,
    _analysis.add_demo,
    _analysis.add_compare,
    _bench.add_bench,
    _models.add_train,
    _models.add_trainset,
    _models.add_evaluate,
    _analysis.add_gradients,
    _models.add_evaluate_bins,
    _models.add_models,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every verb; each subparser's ``func`` runs its verb."""
    from survey_proc import __version__

    p = argparse.ArgumentParser(prog="survey-proc", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"survey-proc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in VERBS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the verb of ``argv`` (default: the command line); returns the exit status."""
    args = build_parser().parse_args(argv)
    from survey_proc.engine import RunInterrupted  # after parsing: --help need not load the engine

    t0 = time.perf_counter()
    try:
        with reporting(shows_progress(args)):
            _warn_unknown_settings()
            return int(args.func(args) or 0)
    except RunInterrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        return 130
    except SurveyProcError as exc:
        print(f"survey-proc {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _warn_unknown_settings() -> None:
    """Name every ``survey-proc`` setting the package does not know: a misspelled key is otherwise ignored."""
    from survey_proc import config

    for key in config.unknown_keys():
        logging.getLogger("survey_proc.cli").warning(
            f"warning: unknown setting {key} is ignored (set in ~/.config/dask/, a DASK_SURVEY_PROC__... "
            "variable or dask.config.set)"
        )
