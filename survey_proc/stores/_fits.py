"""Ingest of MUSE-style FITS cubes (DATA, STAT, optional DQ) into the cube store, streaming.

The FITS file is memory-mapped and copied a block of image rows at a time, so memory stays at a
few blocks whatever the cube size. Wavelengths come from the spectral WCS (``AWAV`` = air,
``WAVE`` = vacuum), sky coordinates from the celestial WCS; the variance is ``STAT``; the mask is
``DQ != 0`` or a non-finite value or a non-positive variance.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from survey_proc.errors import CubeError
from survey_proc.ssp import muse_lsf_fwhm
from survey_proc.stores._cube import consolidate, create_cube_store, write_region

_DATA_NAMES = ("DATA", "SCI", "FLUX")
_VAR_NAMES = ("STAT", "VAR", "VARIANCE")
_DQ_NAMES = ("DQ", "QUALITY")


def _find_hdu(hdul, names: tuple[str, ...]):
    for hdu in hdul:
        if hdu.name.upper() in names:
            return hdu
    return None


def _wavelengths(header, path: Path) -> tuple[np.ndarray, str]:
    """Wavelengths (Angstrom) of the spectral axis and the medium (air|vacuum)."""
    from astropy import units as u
    from astropy.wcs import WCS

    try:
        wcs = WCS(header).spectral
        n = int(header["NAXIS3"])
        world = wcs.pixel_to_world(np.arange(n))
    except Exception as exc:
        raise CubeError(f"{path}: cannot read the spectral WCS of the data extension ({exc})") from exc
    ctype = str(header.get("CTYPE3", "")).upper()
    medium = "air" if ctype.startswith("AWAV") else "vacuum"
    quantity = getattr(world, "quantity", world)
    try:
        wave = quantity.to_value(u.AA)
    except Exception as exc:
        raise CubeError(f"{path}: spectral axis {ctype!r} is not in wavelength units ({exc})") from exc
    return np.asarray(wave, np.float64), medium


def _sky_coords(header, ny: int, nx: int):
    from astropy.wcs import WCS

    try:
        cel = WCS(header).celestial
        if not cel.has_celestial:
            return None, None, None
        yy, xx = np.mgrid[0:ny, 0:nx]
        ra, dec = cel.pixel_to_world_values(xx, yy)
        return np.asarray(ra, np.float64), np.asarray(dec, np.float64), cel.to_header_string()
    except Exception:
        return None, None, None


def ingest_muse_fits(
    fits_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    redshift: float | None = None,
    lsf_fwhm: float | None = None,
    chunk: int = 32,
    progress: bool = False,
) -> dict:
    """Copy a MUSE-style FITS cube into a cube store at ``out``; returns a summary dict.

    ``redshift``: the systemic redshift (else the header's ``Z``/``REDSHIFT``; else left unset and
    ``survey-proc run --redshift`` must give it). ``lsf_fwhm``: instrumental FWHM in Angstrom;
    default for MUSE the Bacon et al. (2017) curve, required for other instruments.
    """
    import xarray as xr
    from astropy.io import fits

    from survey_proc import __version__

    path = Path(fits_path)
    if not path.exists():
        raise CubeError(f"{path}: no such FITS file")
    t0 = time.perf_counter()
    try:
        hdul = fits.open(path, memmap=True)
    except OSError as exc:
        raise CubeError(f"{path} is not a readable FITS file ({exc})") from exc
    with hdul:
        data_hdu = _find_hdu(hdul, _DATA_NAMES)
        if data_hdu is None and hdul[0].data is not None and hdul[0].header.get("NAXIS") == 3:
            data_hdu = hdul[0]
        if data_hdu is None:
            raise CubeError(
                f"{path}: no data extension (looked for {', '.join(_DATA_NAMES)}); found: "
                f"{', '.join(h.name for h in hdul)}"
            )
        var_hdu = _find_hdu(hdul, _VAR_NAMES)
        if var_hdu is None:
            raise CubeError(
                f"{path}: no variance extension (looked for {', '.join(_VAR_NAMES)}); found: "
                f"{', '.join(h.name for h in hdul)}"
            )
        dq_hdu = _find_hdu(hdul, _DQ_NAMES)
        hdr = data_hdu.header
        if hdr.get("NAXIS") != 3:
            raise CubeError(f"{path}: extension {data_hdu.name} has {hdr.get('NAXIS')} axes, expected 3")
        nx, ny, nwave = int(hdr["NAXIS1"]), int(hdr["NAXIS2"]), int(hdr["NAXIS3"])
        if var_hdu.header.get("NAXIS3") != nwave or var_hdu.header.get("NAXIS1") != nx:
            raise CubeError(f"{path}: {var_hdu.name} shape differs from {data_hdu.name}")
        wave, medium = _wavelengths(hdr, path)
        primary = hdul[0].header
        instrument = str(primary.get("INSTRUME", hdr.get("INSTRUME", ""))).strip()
        if lsf_fwhm is not None:
            lsf = np.full(nwave, float(lsf_fwhm))
            lsf_note = f"{lsf_fwhm} A (given)"
        elif instrument.upper() == "MUSE":
            lsf = muse_lsf_fwhm(wave)
            lsf_note = "MUSE, Bacon et al. (2017) eq. 8"
        else:
            raise CubeError(
                f"{path}: instrument {instrument or 'unknown'} has no known line-spread "
                "function; give it with --lsf-fwhm (Angstrom)"
            )
        if redshift is None:
            for key in ("Z", "REDSHIFT", "ZSYS"):
                if key in primary or key in hdr:
                    redshift = float(primary.get(key, hdr.get(key)))
                    break
        bunit = str(hdr.get("BUNIT", primary.get("BUNIT", ""))).strip()
        if not bunit:
            raise CubeError(f"{path}: the data extension has no BUNIT (flux units)")
        attrs = {
            "instrument": instrument or "unknown",
            "lsf": lsf_note,
            "source": f"FITS {path.name}",
            "source_path": str(path.resolve()),
            "object": str(primary.get("OBJECT", "")),
            "date_obs": str(primary.get("DATE-OBS", "")),
            "software": f"survey-proc {__version__}",
            "fits_datamd5": str(primary.get("DATAMD5", "")),
        }
        if redshift is not None:
            attrs["redshift"] = float(redshift)
        sky = _sky_coords(hdr, ny, nx)
        coords = None
        if sky[0] is not None:
            ra, dec, wcs_header = sky
            attrs["wcs_header"] = wcs_header
            coords = {
                "ra": xr.DataArray(ra, dims=("y", "x"), attrs={"units": "deg", "long_name": "right ascension"}),
                "dec": xr.DataArray(dec, dims=("y", "x"), attrs={"units": "deg", "long_name": "declination"}),
            }
        create_cube_store(
            out,
            ny=ny,
            nx=nx,
            wave=wave,
            flux_units=bunit,
            attrs=attrs,
            chunk=chunk,
            medium=medium,
            lsf_fwhm=lsf,
            coords=coords,
        )
        # FITS order is (wave, y, x); the store's is (y, x, wave): copy one block of rows at a time
        blocks = range(0, ny, chunk)
        if progress:
            from tqdm import tqdm

            blocks = tqdm(blocks, desc="ingest", unit="block")
        n_masked = 0
        for y0 in blocks:
            y1 = min(y0 + chunk, ny)
            flux = np.ascontiguousarray(np.asarray(data_hdu.data[:, y0:y1, :], np.float32).transpose(1, 2, 0))
            var = np.ascontiguousarray(np.asarray(var_hdu.data[:, y0:y1, :], np.float32).transpose(1, 2, 0))
            with np.errstate(invalid="ignore"):
                mask = ~np.isfinite(flux) | ~np.isfinite(var) | (var <= 0)
            if dq_hdu is not None:
                mask |= np.asarray(dq_hdu.data[:, y0:y1, :]).transpose(1, 2, 0) != 0
            n_masked += int(mask.sum())
            write_region(out, {"y": slice(y0, y1)}, {"flux": flux, "var": var, "mask": mask})
    consolidate(out)
    return {
        "path": str(out),
        "shape": (ny, nx, nwave),
        "wave": (float(wave[0]), float(wave[-1])),
        "medium": medium,
        "masked_fraction": n_masked / (nx * ny * nwave),
        "seconds": time.perf_counter() - t0,
        "redshift": redshift,
    }
