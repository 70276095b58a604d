"""Synthetic data from the SSP library: composite populations, spectra, mock cubes with truth."""

from survey_proc.synth._mock import (
    LIKE,
    GalaxyMaps,
    GalaxyParams,
    MockConfig,
    galaxy_centre,
    galaxy_maps,
    log_mass_surface_density,
    open_truth,
    truth_dataset,
    truth_values,
    write_mock,
)
from survey_proc.synth._phot_store import mock_band_fluxes, photometry_from_store, write_mock_photometry
from survey_proc.synth._photometry import (
    BandPhotometry,
    PhotometrySynthesiser,
    ab_magnitude,
    band_noise,
    band_weights,
    flux_unit_cgs,
    library_observed_range,
    synthetic_photometry,
)
from survey_proc.synth._populations import (
    age_bin_widths,
    light_weighted,
    mass_fractions,
    mass_to_light,
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
    "BandPhotometry", "GalaxyParams", "PhotometrySynthesiser", "ab_magnitude", "band_noise", "band_weights",
    "flux_unit_cgs", "galaxy_centre", "library_observed_range", "log_mass_surface_density", "mass_to_light",
    "mock_band_fluxes", "photometry_from_store", "synthetic_photometry", "write_mock_photometry",
    "EMISSION_LINES", "EMISSION_LINES_OPTICAL", "LINE_SETS", "LIKE", "SKY_LINES", "GalaxyMaps", "MockConfig", "Synthesiser",
    "emission_line_spectra", "galaxy_maps", "light_weighted", "mass_fractions", "mass_weighted",
    "nearest_index", "open_truth", "sample_cluster", "sample_training_mixtures", "sky_line_profile",
    "truth_dataset", "truth_values", "write_mock",
]
