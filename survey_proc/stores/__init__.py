"""Stores: the cube / spectra-catalogue and maps schemas, opening with validation, FITS ingest."""

from survey_proc.stores._cube import (
    CATALOGUE_DIMS,
    CUBE_DIMS,
    SPECTRAL_DIM,
    create_catalogue_store,
    create_cube_store,
    lsf_fwhm_at,
    open_cube,
    open_spectral_store,
    spatial_dims,
    validate_spectral_store,
    wave_attrs,
    write_region,
)
from survey_proc.stores._inputs import open_input_store
from survey_proc.stores._maps import NOT_FITTED, PROPERTIES, Flag, flag_attrs, open_maps, property_attrs, robust_sigma
from survey_proc.stores._photometry import (
    BAND_DIM,
    FLUX_UNITS,
    ZP_NJY,
    create_photometry_store,
    filter_dataset,
    filters_from_store,
    open_photometry_store,
    validate_photometry_store,
)
from survey_proc.stores._sdss import SDSSSpectrum, ingest_sdss_spectra, read_sdss_spectrum

__all__ = [
    "BAND_DIM",
    "CATALOGUE_DIMS",
    "CUBE_DIMS",
    "FLUX_UNITS",
    "NOT_FITTED",
    "PROPERTIES",
    "SPECTRAL_DIM",
    "ZP_NJY",
    "Flag",
    "SDSSSpectrum",
    "create_catalogue_store",
    "create_cube_store",
    "create_photometry_store",
    "filter_dataset",
    "filters_from_store",
    "flag_attrs",
    "ingest_sdss_spectra",
    "lsf_fwhm_at",
    "open_cube",
    "open_input_store",
    "open_maps",
    "open_photometry_store",
    "open_spectral_store",
    "property_attrs",
    "read_sdss_spectrum",
    "robust_sigma",
    "spatial_dims",
    "validate_photometry_store",
    "validate_spectral_store",
    "wave_attrs",
    "write_region",
]
