"""The axes of a FITS cube: wavelengths and their medium, sky coordinates, the instrumental resolution.

Wavelengths come from a ``WAVE`` extension where the format has one (MaNGA), else from the data's
spectral WCS (``AWAV`` = air, ``WAVE`` = vacuum, also ``-LOG``), else from a linear ``CRVAL3`` /
``CDELT3`` axis in Angstrom. Sky coordinates come from the celestial WCS, whose header is kept.
The resolution (FWHM in Angstrom per wavelength) comes from the option, the instrument (MUSE:
Bacon et al. 2017; CALIFA: the setup's constant FWHM), or the file (MaNGA: per spaxel, reduced to
the median over spaxels with the spread stated; or the median ``SPECRES``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc.errors import CubeError
from survey_proc.ssp import muse_lsf_fwhm
from survey_proc.stores._fits_layout import FitsLayout

#: FWHM / sigma of a Gaussian
SIGMA_TO_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: wavelengths of a per-spaxel resolution reduced at once (bounds the memory of the reduction)
_LSF_BLOCK = 256


@contextlib.contextmanager
def quiet_wcs() -> Iterator[None]:
    """astropy's notes on headers it repairs (``'cdfix' made the change``) kept from the user's screen."""
    from astropy.wcs import FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        yield


def wavelengths(hdul, layout: FitsLayout, path: Path, medium: str | None) -> tuple[np.ndarray, str]:
    """Wavelengths (Angstrom, increasing) of the cube and their medium (air | vacuum)."""
    header = hdul[layout.data].header
    if layout.wave is not None:
        wave = np.asarray(hdul[layout.wave].data, np.float64).ravel()
    else:
        wave = _wcs_wavelengths(header, path)
    if wave.size != int(header.get("NAXIS3", wave.size)) or wave.size < 2 or not np.all(np.diff(wave) > 0):
        raise CubeError(f"{path}: the wavelengths are not {header.get('NAXIS3')} increasing values")
    ctype = str(header.get("CTYPE3", "")).upper()
    if medium is None:
        medium = layout.medium or (
            "air" if ctype.startswith("AWAV") else "vacuum" if ctype.startswith("WAVE") else None
        )
    if medium is None:
        raise CubeError(
            f"{path}: the spectral axis ({ctype or 'no CTYPE3'}) does not say whether its wavelengths are in "
            "air or vacuum: give --medium air|vacuum"
        )
    return wave, medium


def _wcs_wavelengths(header, path: Path) -> np.ndarray:
    from astropy import units as u
    from astropy.wcs import WCS

    n = int(header.get("NAXIS3", 0))
    if not header.get("CTYPE3") and "CRVAL3" in header:  # a bare linear axis (CALIFA writes no CTYPE3)
        step = float(header.get("CDELT3", header.get("CD3_3", 0.0)))
        return float(header["CRVAL3"]) + step * (np.arange(n) + 1 - float(header.get("CRPIX3", 1.0)))
    try:
        with quiet_wcs():
            world = WCS(header).spectral.pixel_to_world(np.arange(n))
    except Exception as exc:
        raise CubeError(f"{path}: cannot read the spectral WCS of the data extension ({exc})") from exc
    try:
        return np.asarray(getattr(world, "quantity", world).to_value(u.AA), np.float64)
    except Exception as exc:
        raise CubeError(f"{path}: spectral axis {header.get('CTYPE3')!r} is not in wavelength units ({exc})") from exc


def wcs_pixel_scale(cel) -> float | None:
    """The mean side of a pixel (arcsec) of a celestial WCS in degrees, or None."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    if any(str(unit) != "deg" for unit in cel.wcs.cunit):
        return None
    scale = float(np.mean(proj_plane_pixel_scales(cel))) * 3600.0
    return round(scale, 6) if np.isfinite(scale) and scale > 0 else None


def pixel_scale_arcsec(attrs: dict) -> float | None:
    """A store's pixel scale (arcsec): its ``pixel_scale_arcsec``, else from its ``wcs_header``, else None."""
    if attrs.get("pixel_scale_arcsec"):
        return float(attrs["pixel_scale_arcsec"])
    if not attrs.get("wcs_header"):
        return None
    from astropy.io import fits
    from astropy.wcs import WCS

    try:
        with quiet_wcs():
            return wcs_pixel_scale(WCS(fits.Header.fromstring(str(attrs["wcs_header"]))).celestial)
    except Exception:
        return None


def sky_coords(header, ny: int, nx: int, attrs: dict) -> dict[str, xr.DataArray] | None:
    """``ra``, ``dec`` (y, x) from the celestial WCS (its header into ``attrs``), or None."""
    from astropy.wcs import WCS

    try:
        with quiet_wcs():
            cel = WCS(header).celestial
        if not cel.has_celestial:
            return None
        yy, xx = np.mgrid[0:ny, 0:nx]
        ra, dec = cel.pixel_to_world_values(xx, yy)
        attrs["wcs_header"] = cel.to_header_string()
        scale = wcs_pixel_scale(cel)
        if scale:
            attrs["pixel_scale_arcsec"] = scale
    except Exception:
        return None
    names = {"ra": (ra, "right ascension"), "dec": (dec, "declination")}
    return {
        c: xr.DataArray(np.asarray(v, np.float64), dims=("y", "x"), attrs={"units": "deg", "long_name": what})
        for c, (v, what) in names.items()
    }


@dataclass
class Resolution:
    """The instrumental FWHM (Angstrom) of a cube: ``fwhm(wave)`` for the engine, and where it came from.

    ``spread``: for a per-spaxel resolution reduced to its median, the 95th percentile (and maximum)
    of ``|FWHM(y, x) / median - 1|`` over the spaxels and wavelengths: the error of the reduction.
    ``per_spaxel``: the extension to copy as ``lsf_fwhm_spaxel(y, x, wave)`` (``--lsf-per-spaxel``).
    """

    fwhm: np.ndarray
    note: str
    spread: tuple[float, float] | None = None
    per_spaxel: int | None = None

    def attrs(self) -> dict:
        out: dict = {"lsf": self.note}
        if self.spread is not None:
            out["lsf_spread_p95"], out["lsf_spread_max"] = (float(s) for s in self.spread)
        return out


def resolution(hdul, layout: FitsLayout, wave: np.ndarray, path: Path, given: float | None, keep: bool) -> Resolution:
    """The cube's :class:`Resolution`: ``given`` (``--lsf-fwhm``), else what the format says."""
    if given is not None:
        return Resolution(np.full(wave.size, float(given)), f"{given} A (given)")
    if layout.lsf == "muse":
        return Resolution(muse_lsf_fwhm(wave), "MUSE, Bacon et al. (2017) eq. 8")
    if layout.lsf == "califa":
        return Resolution(np.full(wave.size, layout.lsf_fwhm), f"{layout.format}: {layout.lsf_fwhm} A FWHM")
    if layout.lsf in ("specres", "fwhm"):
        values = np.asarray(hdul[layout.lsf_ext].data, np.float64).ravel()
        if values.size != wave.size or not np.all(np.isfinite(values) & (values > 0)):
            raise CubeError(
                f"{path}: extension {hdul[layout.lsf_ext].name} does not hold {wave.size} positive values; "
                "give the resolution with --lsf-fwhm (Angstrom)"
            )
        if layout.lsf == "fwhm":
            return Resolution(values, f"extension {hdul[layout.lsf_ext].name} (FWHM, Angstrom)")
        return Resolution(wave / values, f"extension {hdul[layout.lsf_ext].name} (R = lambda / FWHM)")
    if layout.lsf == "manga-spaxel":
        return _per_spaxel(hdul, layout, wave, keep)
    raise CubeError(
        f"{path}: the {layout.format} cube does not say its instrumental resolution; give it with --lsf-fwhm (Angstrom)"
    )


def _per_spaxel(hdul, layout: FitsLayout, wave: np.ndarray, keep: bool) -> Resolution:
    """A per-spaxel 1-sigma LSF (Angstrom) reduced to the median FWHM over the pixels with data (not
    masked by the layout's bad bits, a positive LSF)."""
    hdu = hdul[layout.lsf_ext]
    median = np.full(wave.size, np.nan)
    spread = _Spread()
    for start in range(0, wave.size, _LSF_BLOCK):
        block = np.asarray(hdu.data[start : start + _LSF_BLOCK], np.float64) * SIGMA_TO_FWHM
        block = block.reshape(block.shape[0], -1)
        bad = ~(np.isfinite(block) & (block > 0))
        if layout.mask is not None:
            bits = np.asarray(hdul[layout.mask].data[start : start + _LSF_BLOCK]).reshape(block.shape)
            bad |= (bits & layout.mask_bits) != 0 if layout.mask_bits is not None else bits != 0
        block[bad] = np.nan
        with np.errstate(all="ignore"):
            med = np.nanmedian(block, axis=1)
            spread.add(np.abs(block / med[:, None] - 1.0))
        median[start : start + block.shape[0]] = med
    if not np.isfinite(median).any():
        raise CubeError(f"extension {hdu.name} holds no positive resolution: give --lsf-fwhm (Angstrom)")
    good = np.isfinite(median)
    median = np.interp(wave, wave[good], median[good])
    p95, most = spread.result()
    note = (
        f"MaNGA {hdu.name} per spaxel (1-sigma x {SIGMA_TO_FWHM:.4f}), reduced to the median over spaxels: "
        f"per-spaxel FWHM within {p95:.2%} of it (95th percentile; at most {most:.2%})"
    )
    return Resolution(median, note, (p95, most), layout.lsf_ext if keep else None)


class _Spread:
    """The 95th percentile and maximum of relative deviations seen block by block (a histogram in
    steps of 1e-4 up to 100 %, so memory stays flat whatever the cube)."""

    edges = np.linspace(0.0, 1.0, 10001)

    def __init__(self) -> None:
        self.counts = np.zeros(self.edges.size, np.int64)  # the last bin: deviations of 100 % and more
        self.most = 0.0

    def add(self, dev: np.ndarray) -> None:
        dev = dev[np.isfinite(dev)]
        if dev.size:
            self.most = max(self.most, float(dev.max()))
            idx = np.minimum(np.searchsorted(self.edges, dev, side="right") - 1, self.edges.size - 1)
            self.counts += np.bincount(idx, minlength=self.edges.size)

    def result(self) -> tuple[float, float]:
        total = self.counts.sum()
        if not total:
            return 0.0, 0.0
        at = int(np.searchsorted(np.cumsum(self.counts), 0.95 * total))
        return float(min(self.edges[min(at + 1, self.edges.size - 1)], self.most)), self.most


def spaxel_fwhm(hdu, rows: slice, fallback: np.ndarray) -> np.ndarray:
    """The per-spaxel FWHM (y, x, wave) of a block of rows, where not positive the reduced ``fallback``."""
    block = np.asarray(hdu.data[:, rows, :], np.float64).transpose(1, 2, 0) * SIGMA_TO_FWHM
    bad = ~(np.isfinite(block) & (block > 0))
    return np.where(bad, fallback[None, None, :], block).astype(np.float32)
