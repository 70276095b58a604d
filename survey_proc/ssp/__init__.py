"""SSP library (fetch, cache, load) and the instrument/physics applied to spectra."""

from survey_proc.ssp._instrument import (
    C_KMS,
    FWHM_TO_SIGMA,
    attenuate,
    attenuation_curve,
    convolve_variable_gaussian,
    gaussian_pixel_weights,
    log_wave_grid,
    losvd_convolve,
    match_lsf,
    muse_lsf_fwhm,
    resample,
    sdss_lsf_fwhm,
    to_medium,
    vacuum_to_air,
    air_to_vacuum,
    wdisp_to_fwhm,
    SDSS_LSF_KNOTS,
)
from survey_proc.ssp._filters import FILTER_SETS, FilterSet, jpas_filters, load_filters, sdss_filters
from survey_proc.ssp._library import EMILES_FWHM, LIGHT_WINDOW, SSPLibrary, load_ssp_library

__all__ = [
    "FILTER_SETS", "FilterSet", "jpas_filters", "load_filters", "sdss_filters",
    "C_KMS", "EMILES_FWHM", "FWHM_TO_SIGMA", "LIGHT_WINDOW", "SSPLibrary", "attenuate",
    "attenuation_curve", "convolve_variable_gaussian", "gaussian_pixel_weights", "load_ssp_library",
    "log_wave_grid", "losvd_convolve", "match_lsf", "muse_lsf_fwhm", "resample",
    "SDSS_LSF_KNOTS", "air_to_vacuum", "sdss_lsf_fwhm", "to_medium", "vacuum_to_air", "wdisp_to_fwhm",
]
