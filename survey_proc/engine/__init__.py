"""The engine: template -> setup -> one task per region -> verification (xarray-beam style), over one cube or many.

``run`` / ``run_many`` are the entry points; the rest is what they are made of: ``prepare_cube``
(setup or resume), ``process_region`` (one task), ``estimate_region`` (its pure part),
``finish_cube`` (verification and summary). The store machinery (regions, commit, verify) is
:mod:`survey_proc.stores`'s.
"""

from survey_proc.engine._bestfit import best_fit_path, write_best_fit
from survey_proc.engine._config import RunConfig, default_output
from survey_proc.engine._estimate import Estimates, estimate_region, rule_hits, stream_block
from survey_proc.engine._jobs import CubeJob
from survey_proc.engine._region import (
    RegionOptions,
    RegionResult,
    halo_window,
    limit_io_threads,
    process_region,
    read_feature_axis,
    setup_worker,
)
from survey_proc.engine._run import RunInterrupted, run, run_jobs, run_many
from survey_proc.engine._setup import prepare_cube
from survey_proc.engine._summary import CubeOutcome, RunSummary, finish_cube
from survey_proc.engine._survey import SurveyError, configs_for, format_table, read_survey
from survey_proc.engine._template import maps_template, output_variables, spatial_chunks

__all__ = [
    "CubeJob",
    "CubeOutcome",
    "Estimates",
    "RegionOptions",
    "RegionResult",
    "RunConfig",
    "RunInterrupted",
    "RunSummary",
    "SurveyError",
    "best_fit_path",
    "configs_for",
    "default_output",
    "estimate_region",
    "finish_cube",
    "format_table",
    "halo_window",
    "limit_io_threads",
    "maps_template",
    "output_variables",
    "prepare_cube",
    "process_region",
    "read_feature_axis",
    "read_survey",
    "rule_hits",
    "run",
    "run_jobs",
    "run_many",
    "setup_worker",
    "spatial_chunks",
    "stream_block",
    "write_best_fit",
]
