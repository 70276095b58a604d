"""FITS cubes built with astropy to the published data models, from real MaNGA spectra.

The spectra: the 8 real MaNGA spaxels the ``sdss-mangadap==4.5.0`` wheel ships for its tests
(:func:`survey_proc.stores.manga_spectra`; seven galaxies at z 0.017-0.050, one of the spaxels
unusable: DONOTUSE everywhere). Each is moved to a common redshift (resampled on its log grid) and
laid out on a 2 x 4 spaxel grid with a celestial WCS, then written as

- a MaNGA DRP ``LOGCUBE`` (DR17 data model: FLUX, IVAR, MASK, LSFPOST, WAVE, SPECRES),
- a CALIFA ``V500`` cube (DR3: the primary holds the data in 1e-16 units on an air grid from 3749 A in
  steps of 2 A, ERROR, ERRWEIGHT, BADPIX, FIBCOVER),
- a generic cube (the data in the primary HDU, wavelengths in nm through a vacuum ``WAVE`` WCS, an
  error extension marked ``HDUCLAS3 = RMSE``, the resolution as an ``LSF_FWHM`` extension).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

#: the redshift every spectrum is moved to
Z = 0.03
NY, NX = 2, 4
SIGMA_TO_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass
class Spectra:
    """The 8 spectra on the MaNGA log grid at redshift :data:`Z`, laid out as (wave, y, x)."""

    wave: np.ndarray  #: vacuum, Angstrom
    flux: np.ndarray  #: 1e-17 erg/s/cm2/A/spaxel
    ivar: np.ndarray
    mask: np.ndarray  #: MANGA_DRP3PIXMASK
    sigma: np.ndarray  #: 1-sigma LSF, Angstrom (0 where unknown)


def real_spectra() -> Spectra:
    from survey_proc.stores import manga_spectra

    with fits.open(manga_spectra()) as hdul:
        wave = np.asarray(hdul["WAVE"].data, np.float64)
        flux, ivar = np.asarray(hdul["FLUX"].data, np.float64), np.asarray(hdul["IVAR"].data, np.float64)
        mask, sres, z = np.asarray(hdul["MASK"].data), np.asarray(hdul["SRES"].data), np.asarray(hdul["Z"].data)
    logw = np.log(wave)
    out = {k: np.zeros((wave.size, NY * NX)) for k in ("flux", "ivar", "sigma")}
    bits = np.zeros((wave.size, NY * NX), np.int32)
    for i in range(flux.shape[0]):
        at = logw + np.log((1 + z[i]) / (1 + Z))  # where the spectrum at Z samples the original
        out["flux"][:, i] = np.interp(at, logw, flux[i])
        out["ivar"][:, i] = np.interp(at, logw, ivar[i])
        nearest = np.clip(np.searchsorted(logw, at), 0, wave.size - 1)
        bits[:, i] = mask[i][nearest] | np.where((at < logw[0]) | (at > logw[-1]), 1 << 10, 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["sigma"][:, i] = np.where(sres[i] > 0, wave / sres[i] / SIGMA_TO_FWHM, 0.0)
    cube = {k: v.reshape(wave.size, NY, NX) for k, v in out.items()}
    return Spectra(wave, cube["flux"], cube["ivar"], bits.reshape(wave.size, NY, NX), cube["sigma"])


def celestial(header: fits.Header, scale_arcsec: float, ra: float = 150.1, dec: float = 2.2, cd: bool = True):
    """A TAN celestial WCS on axes 1 (RA, increasing to the east = left) and 2 (Dec): a CD matrix
    (MaNGA, MUSE), or CDELT (CALIFA)."""
    header.update(
        CTYPE1="RA---TAN",
        CTYPE2="DEC--TAN",
        CUNIT1="deg",
        CUNIT2="deg",
        CRPIX1=(NX + 1) / 2,
        CRPIX2=(NY + 1) / 2,
        CRVAL1=ra,
        CRVAL2=dec,
    )
    if cd:
        header.update(CD1_1=-scale_arcsec / 3600, CD2_2=scale_arcsec / 3600, CD1_2=0.0, CD2_1=0.0)
    else:
        header.update(CDELT1=-scale_arcsec / 3600, CDELT2=scale_arcsec / 3600)
    return header


def manga_logcube(path: Path, spectra: Spectra | None = None) -> Path:
    """A MaNGA DRP LOGCUBE (DR17 data model) of the real spectra, 0.5 arcsec spaxels."""
    s = spectra or real_spectra()
    primary = fits.Header(
        {"MANGAID": "1-000000", "PLATEIFU": "0000-0000", "DRPVER": "v3_1_1", "OBJRA": 150.1, "EBVGAL": 0.0235}
    )
    hdr = celestial(fits.Header(), 0.5)
    hdr.update(
        BUNIT="1E-17 erg/s/cm^2/Ang/spaxel",
        CTYPE3="WAVE-LOG",
        CUNIT3="Angstrom",
        CRPIX3=1.0,
        CRVAL3=float(s.wave[0]),
        CD3_3=float(s.wave[0]) * np.log(10.0) * 1e-4,
    )
    specres = np.median(
        s.wave[:, None] / np.where(s.sigma > 0, s.sigma * SIGMA_TO_FWHM, np.nan).reshape(s.wave.size, -1), axis=1
    )
    fits.HDUList(
        [
            fits.PrimaryHDU(header=primary),
            fits.ImageHDU(s.flux.astype(np.float32), header=hdr, name="FLUX"),
            fits.ImageHDU(s.ivar.astype(np.float32), header=hdr, name="IVAR"),
            fits.ImageHDU(s.mask.astype(np.int32), header=hdr, name="MASK"),
            fits.ImageHDU(s.sigma.astype(np.float32), header=hdr, name="LSFPOST"),
            fits.ImageHDU(s.wave, name="WAVE"),
            fits.ImageHDU(np.nan_to_num(specres, nan=2000.0), name="SPECRES"),
        ]
    ).writeto(path, overwrite=True)
    return path


def _air(wave_vac: np.ndarray) -> np.ndarray:
    from survey_proc.ssp import vacuum_to_air

    return vacuum_to_air(wave_vac)


def califa_cube(path: Path, spectra: Spectra | None = None) -> Path:
    """A CALIFA V500 cube (DR3 data model) of the real spectra, on the air grid 3749 + 2 k A, 1 arcsec spaxels."""
    s = spectra or real_spectra()
    grid = 3749.0 + 2.0 * np.arange(1877)
    air = _air(s.wave)
    flat = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731
    flux = np.stack([np.interp(grid, air, f, left=0, right=0) for f in flat(s.flux).T], 1)
    ivar = np.stack([np.interp(grid, air, v, left=0, right=0) for v in flat(s.ivar).T], 1)
    bad = np.stack([np.interp(grid, air, (m != 0).astype(float), left=1, right=1) > 0 for m in flat(s.mask).T], 1)
    with np.errstate(divide="ignore"):
        error = np.where(ivar > 0, 1 / np.sqrt(ivar), 1e10) / 10
    hdr = celestial(fits.Header({"INSTRUME": "PMAS", "OBJECT": "TEST", "BUNIT": "10^-16 erg/s/cm^2/A"}), 1.0, cd=False)
    hdr.update(CRPIX3=1.0, CRVAL3=3749.0, CDELT3=2.0)
    shape = (grid.size, NY, NX)
    fits.HDUList(
        [
            fits.PrimaryHDU((flux / 10).reshape(shape).astype(np.float32), header=hdr),
            fits.ImageHDU(error.reshape(shape).astype(np.float32), name="ERROR"),
            fits.ImageHDU(np.ones(shape, np.float32), name="ERRWEIGHT"),
            fits.ImageHDU(bad.reshape(shape).astype(np.uint8), name="BADPIX"),
            fits.ImageHDU(np.ones((NY, NX), np.float32), name="FIBCOVER"),
        ]
    ).writeto(path, overwrite=True)
    return path


def generic_cube(path: Path, spectra: Spectra | None = None) -> Path:
    """A cube in no survey's format: data in the primary HDU (vacuum wavelengths in nm, linear),
    a 1-sigma error extension ``UNC`` marked ``HDUCLAS3 = RMSE``, the FWHM in ``LSF_FWHM``."""
    s = spectra or real_spectra()
    grid = np.arange(4000.0, 9300.0, 1.25)
    flat = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731
    flux = np.stack([np.interp(grid, s.wave, f) for f in flat(s.flux).T], 1)
    ivar = np.stack([np.interp(grid, s.wave, v) for v in flat(s.ivar).T], 1)
    with np.errstate(divide="ignore"):
        error = np.where(ivar > 0, 1 / np.sqrt(ivar), np.inf)
    hdr = celestial(fits.Header({"BUNIT": "1e-17 erg/s/cm2/Angstrom"}), 0.2, ra=210.5, dec=-10.25)
    hdr.update(CTYPE3="WAVE", CUNIT3="nm", CRPIX3=1.0, CRVAL3=grid[0] / 10, CD3_3=0.125)
    shape = (grid.size, NY, NX)
    fwhm = np.interp(grid, s.wave, np.median(flat(s.sigma), axis=1) * SIGMA_TO_FWHM)
    fits.HDUList(
        [
            fits.PrimaryHDU(flux.reshape(shape).astype(np.float32), header=hdr),
            fits.ImageHDU(
                error.reshape(shape).astype(np.float32), header=fits.Header({"HDUCLAS3": "RMSE"}), name="UNC"
            ),
            fits.ImageHDU(fwhm, name="LSF_FWHM"),
        ]
    ).writeto(path, overwrite=True)
    return path


def sky_of(path: Path, ext=0) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) of every spaxel (y, x) from a FITS file's celestial WCS, as astropy computes them."""
    from astropy.wcs import WCS

    with fits.open(path) as hdul:
        cel = WCS(hdul[ext].header).celestial
    yy, xx = np.mgrid[0:NY, 0:NX]
    return cel.pixel_to_world_values(xx, yy)
