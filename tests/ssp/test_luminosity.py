"""Band luminosities in solar units and surface densities from fluxes (survey_proc.ssp._luminosity)."""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest

from survey_proc.ssp import absolute_ab_magnitude, band_luminosity, load_filters, surface_density_factor
from survey_proc.stores import flux_unit_cgs, pixel_scale_arcsec


def test_r_band_luminosities_agree_with_ppxf_and_its_solar_spectrum(ssp_lib):
    """Every E-MILES SSP's L_r / L_sun,r against pPXF's own route (its SDSS/r curve, its spectrum of the
    Sun, ``sps_util.mass_to_light``'s arithmetic): two filter curves, two ways to the Sun's luminosity."""
    from ppxf import ppxf_util

    mine = band_luminosity(ssp_lib, load_filters("sdss"), "r").reshape(-1)
    spectra = ssp_lib.flux.reshape(-1, ssp_lib.wave.size).T.astype(np.float64)
    ssp = ppxf_util.synthetic_photometry(ssp_lib.wave, spectra, "SDSS/r", quiet=True).flux
    sun = np.load(importlib.resources.files("ppxf") / "sps_models/spectra_sun_vega.npz")
    sun_r = ppxf_util.synthetic_photometry(sun["lam"], sun["flux_sun"], "SDSS/r", quiet=True).flux
    theirs = (ssp * 3.828e33 / (4 * np.pi * 3.085677581491367e19**2) / sun_r).reshape(-1)
    np.testing.assert_allclose(mine, theirs, rtol=0.02)
    ml = (ssp_lib.mass.reshape(-1) / mine).reshape(ssp_lib.mass.shape)
    assert np.all(ml[:, -1] > 10 * ml[:, 0])  # the oldest SSPs carry far more mass per light than the youngest


def test_a_flat_f_nu_spectrum_has_its_ab_magnitude():
    """3631 Jy at 10 pc is absolute AB magnitude 0 through any band."""
    wave = np.linspace(3000.0, 11000.0, 8001)
    f_lambda = 3631e-23 * 2.99792458e18 / wave**2  # erg/s/cm2/A at 10 pc
    lsun_per_a = f_lambda * 4 * np.pi * 3.0856775814913673e19**2 / 3.828e33
    for band in "griz":
        assert absolute_ab_magnitude(wave, lsun_per_a, load_filters("sdss"), band) == pytest.approx(0.0, abs=1e-3)


def test_surface_density_does_not_depend_on_distance_but_on_redshift_and_pixel():
    base = surface_density_factor(0.0, 1.0, 1e-17)
    assert surface_density_factor(0.1, 1.0, 1e-17) == pytest.approx(base * 1.1**5)
    assert surface_density_factor(0.0, 0.5, 1e-17) == pytest.approx(base * 4)
    assert surface_density_factor(0.0, 1.0, 1e-20) == pytest.approx(base / 1000)


@pytest.mark.parametrize(
    "units, cgs",
    [
        ("10**(-20)*erg/s/cm**2/Angstrom", 1e-20),  # MUSE
        ("1E-17 erg/s/cm^2/Ang/spaxel", 1e-17),  # MaNGA
        ("1E-17 erg/cm^2/s/Ang", 1e-17),  # SDSS
        ("10^-16 erg/s/cm^2/A", 1e-16),
        ("1e-16 erg/s/cm2/Angstrom/arcsec2", 0.25e-16),  # surface brightness, 0.5" pixels
    ],
)
def test_flux_units_as_headers_spell_them(units, cgs):
    value, why = flux_unit_cgs(units, 0.5)
    assert value == pytest.approx(cgs) and why == ""


@pytest.mark.parametrize("units", ["adu", "counts", "Jy", ""])
def test_uncalibrated_units_say_why(units):
    value, why = flux_unit_cgs(units, 0.5)
    assert value is None and ("not" in why or "no units" in why)


def test_pixel_scale_from_the_attribute_or_the_wcs():
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cdelt = [-0.5 / 3600, 0.5 / 3600]
    assert pixel_scale_arcsec({"wcs_header": w.to_header_string()}) == pytest.approx(0.5)
    assert pixel_scale_arcsec({"pixel_scale_arcsec": 0.2, "wcs_header": w.to_header_string()}) == 0.2
    assert pixel_scale_arcsec({}) is None
