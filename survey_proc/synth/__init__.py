"""Synthetic data from the SSP library: composite populations, spectra, mock cubes with truth."""

from survey_proc.synth._mock import LIKE, GalaxyMaps, MockConfig, galaxy_maps, open_truth, truth_dataset, write_mock
from survey_proc.synth._populations import (
    age_bin_widths,
    light_weighted,
    mass_fractions,
    mass_weighted,
    metal_split,
    nearest_index,
    sample_cluster,
    sample_sfh_mixtures,
    sample_training_mixtures,
)
from survey_proc.synth._spectra import (
    EMISSION_LINES,
    EMISSION_LINES_OPTICAL,
    LINE_SETS,
    SKY_LINES,
    Synthesiser,
    emission_line_spectra,
    sky_line_profile,
)

__all__ = [
    "age_bin_widths", "metal_split", "sample_sfh_mixtures",
    "EMISSION_LINES", "EMISSION_LINES_OPTICAL", "LINE_SETS", "LIKE", "SKY_LINES", "GalaxyMaps", "MockConfig",
    "Synthesiser",
    "emission_line_spectra", "galaxy_maps", "light_weighted", "mass_fractions", "mass_weighted",
    "nearest_index", "open_truth", "sample_cluster", "sample_training_mixtures", "sky_line_profile",
    "truth_dataset", "write_mock",
]
