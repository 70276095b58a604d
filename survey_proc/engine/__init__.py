"""The engine: template -> setup -> one task per region -> verification (xarray-beam style), over one cube or many."""

from survey_proc.engine._region import RegionOptions, RegionResult, estimate_region, process_region, region_checksum
from survey_proc.engine._run import (
    CubeJob,
    CubeOutcome,
    RunConfig,
    RunInterrupted,
    RunSummary,
    default_output,
    finish_cube,
    prepare_cube,
    run,
    run_jobs,
    run_many,
    verify,
)
from survey_proc.engine._survey import SurveyError, configs_for, format_table, read_survey
from survey_proc.engine._template import Region, make_regions, maps_template, output_variables, spatial_chunks

__all__ = [
    "CubeJob",
    "CubeOutcome",
    "Region",
    "RegionOptions",
    "RegionResult",
    "RunConfig",
    "RunInterrupted",
    "RunSummary",
    "SurveyError",
    "configs_for",
    "default_output",
    "estimate_region",
    "finish_cube",
    "format_table",
    "make_regions",
    "maps_template",
    "output_variables",
    "prepare_cube",
    "process_region",
    "read_survey",
    "region_checksum",
    "run",
    "run_jobs",
    "run_many",
    "spatial_chunks",
    "verify",
]
