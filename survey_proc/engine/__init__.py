"""The engine: template -> setup -> one task per region -> verification (xarray-beam style)."""

from survey_proc.engine._region import RegionOptions, RegionResult, estimate_region, process_region, region_checksum
from survey_proc.engine._run import RunConfig, RunInterrupted, RunSummary, default_output, run, verify
from survey_proc.engine._template import Region, make_regions, maps_template, output_variables, spatial_chunks

__all__ = [
    "Region", "RegionOptions", "RegionResult", "RunConfig", "RunInterrupted", "RunSummary", "default_output",
    "estimate_region", "make_regions", "maps_template", "output_variables", "process_region",
    "region_checksum", "run", "spatial_chunks", "verify",
]
