"""From SSP light to stellar mass: band luminosities in solar units and surface densities from fluxes.

- :func:`band_luminosity`: each SSP's luminosity in a band, in units of the Sun's in that band, per
  M_sun formed: its absolute AB magnitude (the spectrum at 10 pc through the band's photon-counting
  response) against the Sun's absolute AB magnitude in the band (Willmer 2018, ApJS 236, 47, table 3).
- :func:`surface_density_factor`: what turns an observed flux density times a mass-to-light ratio into
  a surface density per kpc^2. Sigma = 4 pi (1+z)^5 f (M/L) / Omega_pixel does not depend on the
  distance (surface brightness dims as (1+z)^5 per unit wavelength), only on the redshift, the pixel's
  solid angle and the flux unit.
"""

from __future__ import annotations

import numpy as np

from survey_proc.ssp._filters import FilterSet
from survey_proc.ssp._library import SSPLibrary

#: the Sun's bolometric luminosity (IAU 2015 nominal), erg/s
L_SUN_ERG_S = 3.828e33
KPC_CM = 3.0856775814913673e21
ARCSEC_RAD = np.pi / 180.0 / 3600.0
_TEN_PC_CM = 3.0856775814913673e19
_C_ANGSTROM_S = 2.99792458e18

#: the Sun's absolute AB magnitudes (Willmer 2018, table 3) per filter set and band
SUN_ABS_MAG_AB = {"sdss": {"u": 6.39, "g": 5.11, "r": 4.65, "i": 4.53, "z": 4.50}}


def absolute_ab_magnitude(wave: np.ndarray, flux_lsun: np.ndarray, filters: FilterSet, band: str) -> np.ndarray:
    """Absolute AB magnitudes of spectra ``flux_lsun`` (..., nwave) in L_sun/Angstrom on ``wave``
    (Angstrom, rest frame) through ``band`` of ``filters``: the spectrum seen from 10 pc."""
    response = np.interp(wave, filters.wave, filters.response[filters.bands.index(band)], left=0.0, right=0.0)
    if not response.any():
        raise ValueError(f"band {band} of {filters.name} lies outside the spectra ({wave[0]:g}-{wave[-1]:g} A)")
    f_lambda = np.asarray(flux_lsun, np.float64) * L_SUN_ERG_S / (4 * np.pi * _TEN_PC_CM**2)
    photons = np.trapezoid(f_lambda * response * wave, wave, axis=-1)
    per_hz = np.trapezoid(response * _C_ANGSTROM_S / wave, wave)
    return -2.5 * np.log10(photons / per_hz) - 48.60


def band_luminosity(lib: SSPLibrary, filters: FilterSet, band: str) -> np.ndarray:
    """Each SSP's luminosity in ``band`` (nmetal, nage), in the Sun's luminosity in that band, per M_sun
    formed (:data:`SUN_ABS_MAG_AB` gives the Sun's)."""
    try:
        sun = SUN_ABS_MAG_AB[filters.name][band]
    except KeyError:
        raise ValueError(f"no solar absolute magnitude for band {band} of filter set {filters.name}") from None
    return 10.0 ** (-0.4 * (absolute_ab_magnitude(lib.wave, lib.flux, filters, band) - sun))


def surface_density_factor(redshift: float, pixel_scale_arcsec: float, flux_unit_cgs: float) -> float:
    """Sigma per kpc^2 for an observed flux density of 1 ``flux_unit_cgs`` (erg/s/cm^2/Angstrom) per
    pixel times a ratio in (quantity) per (L_sun/Angstrom): 4 pi (1+z)^5 kpc^2 / (L_sun Omega)."""
    omega = (pixel_scale_arcsec * ARCSEC_RAD) ** 2
    return 4 * np.pi * (1 + redshift) ** 5 * flux_unit_cgs * KPC_CM**2 / (L_SUN_ERG_S * omega)
