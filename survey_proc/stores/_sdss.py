"""SDSS spectrum FITS files -> one spectra-catalogue store (``object, wave``), streaming.

Formats read (the two the real spectra shipped in ``ppxf`` use):

- **spec / spec-lite** (DR9 and later, e.g. ``NGC4636_SDSS_DR12.fits``): extension ``COADD`` with
  columns ``flux``, ``loglam``, ``ivar``, ``and_mask``, ``wdisp``; redshift ``Z`` and position in
  extension ``SPECOBJ``.
- **CAS table** (DR8 SkyServer export, e.g. ``NGC3073_SDSS_DR8.fits``): the first table with columns
  ``flux``, ``wavelength``, ``inverse_variance``, ``and_mask``; ``Z``, ``RAOBJ``, ``DECOBJ`` in its
  header.

SDSS spectra share one grid uniform in log10(lambda) with a step of 1e-4 dex (vacuum wavelengths,
header ``VACUUM = T``); each spectrum covers a part of it. The store's ``wave`` is the union of those
parts, each spectrum is placed at its own pixels (no resampling, so flux and variance are the file's
values), pixels it does not cover are NaN and masked. ``var = 1/ivar``; ``mask`` is ``ivar <= 0``,
a non-finite value or a non-zero ``and_mask`` (bad in every exposure). The instrumental FWHM is
``2.355 wdisp dlambda`` where the file has ``wdisp`` and the typical SDSS curve
(:func:`survey_proc.ssp.sdss_lsf_fwhm`) otherwise; the store's ``lsf_fwhm(wave)`` is the mean over
the spectra. Files are read twice (headers and grids, then data ``chunk`` spectra at a time), so
memory stays at one block whatever the number of files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from survey_proc.errors import CubeError
from survey_proc.ssp import sdss_lsf_fwhm, wdisp_to_fwhm
from survey_proc.stores._cube import consolidate, create_catalogue_store, write_region

#: SDSS log10-wavelength step (dex per pixel)
SDSS_LOGLAM_STEP = 1e-4
#: flux units of SDSS spectra when a file does not say
SDSS_FLUX_UNITS = "1e-17 erg/s/cm2/Angstrom"
_ALIGN_TOLERANCE = 1e-5  # dex: 10 % of a pixel


@dataclass
class SDSSSpectrum:
    """One spectrum as read from a file (arrays on the file's own pixels)."""

    path: Path
    loglam: np.ndarray  #: log10 vacuum (or air) wavelength, Angstrom
    flux: np.ndarray  #: flux density (``units``)
    ivar: np.ndarray  #: inverse variance
    and_mask: np.ndarray  #: SDSS pixel mask bits set in every exposure
    wdisp: np.ndarray | None  #: LSF sigma in pixels, when the file has it
    redshift: float | None
    ra: float
    dec: float
    name: str
    medium: str
    units: str
    format: str

    @property
    def wave(self) -> np.ndarray:
        return 10.0**self.loglam

    def fwhm(self) -> np.ndarray:
        """Instrumental FWHM (Angstrom) per pixel: from ``wdisp`` where given, else the SDSS curve."""
        if self.wdisp is not None and np.isfinite(self.wdisp).any() and np.nanmax(self.wdisp) > 0:
            fwhm = wdisp_to_fwhm(self.wave, self.wdisp)
            return np.where(self.wdisp > 0, fwhm, sdss_lsf_fwhm(self.wave))
        return sdss_lsf_fwhm(self.wave)


def _header_value(headers, *keys):
    for hdr in headers:
        for key in keys:
            if hdr is not None and key in hdr and str(hdr[key]).strip() not in ("", "nan"):
                return hdr[key]
    return None


def _float_or_nan(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _units(text) -> str:
    text = str(text or "").strip()
    return SDSS_FLUX_UNITS if text.replace(" ", "").lower() in ("", "1e-17erg/cm^2/s/ang") else text


def read_sdss_spectrum(path: str | os.PathLike) -> SDSSSpectrum:
    """Read one SDSS spectrum file (spec/spec-lite COADD or DR8 CAS table); clear errors otherwise."""
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise CubeError(f"{path}: no such FITS file")
    try:
        hdul = fits.open(path, memmap=False)
    except OSError as exc:
        raise CubeError(f"{path} is not a readable FITS file ({exc})") from exc
    with hdul:
        primary = hdul[0].header
        table = None
        for hdu in hdul:
            if isinstance(hdu, fits.BinTableHDU) and hdu.name.upper() == "COADD":
                table = hdu
                break
        if table is None:
            for hdu in hdul:
                if isinstance(hdu, fits.BinTableHDU) and "flux" in [c.lower() for c in hdu.columns.names]:
                    table = hdu
                    break
        if table is None:
            raise CubeError(
                f"{path}: no SDSS spectrum table (an extension COADD, or a table with a 'flux' "
                f"column); found extensions: {', '.join(h.name or '(primary)' for h in hdul)}. "
                "Supported: SDSS spec/spec-lite files (DR9+) and DR8 CAS tables"
            )
        cols = {c.lower(): c for c in table.columns.names}
        data = table.data

        def column(*names):
            for n in names:
                if n in cols:
                    return np.asarray(data[cols[n]], np.float64)
            return None

        loglam = column("loglam")
        fmt = "spec COADD (DR9+)"
        if loglam is None:
            wave = column("wavelength", "wave", "lambda")
            if wave is None:
                raise CubeError(
                    f"{path}: table {table.name or 1} has neither 'loglam' nor 'wavelength'; "
                    f"columns: {', '.join(table.columns.names)}"
                )
            with np.errstate(divide="ignore", invalid="ignore"):
                loglam = np.log10(wave)
            fmt = "CAS table (DR8)"
        ivar = column("ivar", "inverse_variance")
        if ivar is None:
            raise CubeError(
                f"{path}: table {table.name or 1} has no inverse variance ('ivar' or "
                f"'inverse_variance'); columns: {', '.join(table.columns.names)}"
            )
        flux = column("flux")
        and_mask = column("and_mask")
        and_mask = np.zeros(flux.size, np.int64) if and_mask is None else and_mask.astype(np.int64)
        wdisp = column("wdisp")
        specobj = hdul["SPECOBJ"].data if "SPECOBJ" in hdul else None

        def specobj_value(name):
            if specobj is not None and name in specobj.columns.names:
                return specobj[name][0]
            return None

        z = specobj_value("Z")
        if z is None:
            z = _header_value((table.header, primary), "Z", "REDSHIFT")
        z = _float_or_nan(z)
        ra = _float_or_nan(
            specobj_value("PLUG_RA")
            if specobj is not None
            else _header_value((table.header, primary), "RAOBJ", "PLUG_RA", "RA")
        )
        dec = _float_or_nan(
            specobj_value("PLUG_DEC")
            if specobj is not None
            else _header_value((table.header, primary), "DECOBJ", "PLUG_DEC", "DEC")
        )
        plate = _header_value((table.header, primary), "PLATEID")
        mjd = _header_value((table.header, primary), "MJD")
        fiber = specobj_value("FIBERID") if specobj is not None else _header_value((table.header, primary), "FIBERID")
        name = f"{int(plate):04d}-{int(mjd):05d}-{int(fiber):04d}" if None not in (plate, mjd, fiber) else path.stem
        vacuum = _header_value((table.header, primary), "VACUUM")
        medium = "air" if vacuum is not None and str(vacuum).strip().upper() in ("F", "FALSE", "0") else "vacuum"
        units = _units(_header_value((table.header, primary), "BUNIT"))
    if loglam.size < 2 or not np.all(np.diff(loglam) > 0):
        raise CubeError(f"{path}: the wavelengths are not strictly increasing")
    return SDSSSpectrum(
        path=path,
        loglam=loglam,
        flux=flux,
        ivar=ivar,
        and_mask=and_mask,
        wdisp=wdisp,
        redshift=None if not np.isfinite(z) else z,
        ra=ra,
        dec=dec,
        name=name,
        medium=medium,
        units=units,
        format=fmt,
    )


def _grid_offset(spec: SDSSSpectrum, base: float) -> int:
    """Index of the spectrum's first pixel on the common log grid starting at ``base``; checks alignment."""
    k = np.rint((spec.loglam - base) / SDSS_LOGLAM_STEP)
    off = np.abs(spec.loglam - (base + k * SDSS_LOGLAM_STEP)).max()
    steps = np.diff(k)
    if off > _ALIGN_TOLERANCE or not np.all(steps == 1):
        raise CubeError(
            f"{spec.path}: wavelengths are not on the SDSS log10 grid (step {SDSS_LOGLAM_STEP} "
            f"dex, off by up to {off:.2e} dex); resample it to that grid before ingest"
        )
    return int(k[0])


def spectra_arrays(spec: SDSSSpectrum) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flux, var, mask) of one spectrum on its own pixels: var = 1/ivar, mask = bad (True)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(spec.ivar > 0, 1.0 / spec.ivar, np.nan)
    mask = ~np.isfinite(spec.flux) | ~np.isfinite(var) | (spec.ivar <= 0) | (spec.and_mask != 0)
    return spec.flux.astype(np.float32), var.astype(np.float32), mask


def ingest_sdss_spectra(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    redshift: float | None = None,
    chunk: int = 256,
    progress: bool = False,
) -> dict:
    """Write SDSS spectrum files into one spectra-catalogue store at ``out``; returns a summary.

    ``redshift``: used for files without a redshift of their own (header ``Z`` or ``SPECOBJ.Z``);
    a file with neither is refused. ``chunk``: spectra per stored chunk (and per write).
    """
    from survey_proc import __version__

    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    if not paths:
        raise CubeError("no SDSS spectrum files given")
    # pass 1: grids, redshifts, media, units (one spectrum in memory at a time)
    heads = []
    for p in paths:
        s = read_sdss_spectrum(p)
        z = s.redshift if s.redshift is not None else redshift
        if z is None:
            raise CubeError(f"{p}: no redshift in the file (SPECOBJ.Z or header Z); give one with --redshift")
        heads.append(
            (p, float(s.loglam[0]), float(s.loglam[-1]), s.medium, s.units, float(z), s.ra, s.dec, s.name, s.format)
        )
    media = {h[3] for h in heads}
    units = {h[4] for h in heads}
    if len(media) > 1 or len(units) > 1:
        raise CubeError(
            f"the files mix wavelength media {sorted(media)} or flux units {sorted(units)}; "
            "ingest them into separate stores"
        )
    first = min(h[1] for h in heads)
    base = round(first / SDSS_LOGLAM_STEP) * SDSS_LOGLAM_STEP
    last = max(h[2] for h in heads)
    nwave = int(round((last - base) / SDSS_LOGLAM_STEP)) + 1
    wave = 10.0 ** (base + SDSS_LOGLAM_STEP * np.arange(nwave))
    n = len(heads)
    chunk = max(1, min(chunk, n))
    attrs = {
        "instrument": "SDSS",
        "source": f"SDSS spectrum FITS files ({n})",
        "software": f"survey-proc {__version__}",
        "formats": ", ".join(sorted({h[9] for h in heads})),
        "lsf": "mean over spectra of 2.355 wdisp dlambda where files give wdisp, else ssp.sdss_lsf_fwhm",
        "grid": f"log10(lambda) = {base:.4f} + {SDSS_LOGLAM_STEP:g} k (SDSS, no resampling)",
    }
    object_vars = {
        "redshift": (np.array([h[5] for h in heads]), {"units": "1", "long_name": "redshift (SDSS pipeline)"}),
    }
    coords = {
        "ra": (np.array([h[6] for h in heads]), {"units": "deg", "long_name": "right ascension"}),
        "dec": (np.array([h[7] for h in heads]), {"units": "deg", "long_name": "declination"}),
        "object_name": (np.array([h[8] for h in heads]), {"long_name": "SDSS plate-mjd-fiber or file name"}),
        "source_file": (np.array([h[0].name for h in heads]), {"long_name": "file the spectrum was read from"}),
    }
    create_catalogue_store(
        out,
        n=n,
        wave=wave,
        flux_units=units.pop(),
        attrs=attrs,
        chunk=chunk,
        medium=media.pop(),
        object_vars=object_vars,
        coords=coords,
    )
    # pass 2: data, one block of spectra at a time
    fwhm_sum = np.zeros(nwave)
    fwhm_count = np.zeros(nwave)
    n_masked = 0
    blocks = range(0, n, chunk)
    if progress:
        from tqdm import tqdm

        blocks = tqdm(blocks, desc="ingest", unit="block")
    for start in blocks:
        stop = min(start + chunk, n)
        flux = np.full((stop - start, nwave), np.nan, np.float32)
        var = np.full((stop - start, nwave), np.nan, np.float32)
        mask = np.ones((stop - start, nwave), bool)
        for row, (p, *_rest) in enumerate(heads[start:stop]):
            s = read_sdss_spectrum(p)
            i0 = _grid_offset(s, base)
            f, v, m = spectra_arrays(s)
            sl = slice(i0, i0 + f.size)
            flux[row, sl], var[row, sl], mask[row, sl] = f, v, m
            fwhm_sum[sl] += s.fwhm()
            fwhm_count[sl] += 1
            n_masked += int(m.sum())
        write_region(out, {"object": slice(start, stop)}, {"flux": flux, "var": var, "mask": mask})
    with np.errstate(invalid="ignore"):
        lsf = np.where(fwhm_count > 0, fwhm_sum / np.maximum(fwhm_count, 1), sdss_lsf_fwhm(wave))
    write_region(out, {}, {"lsf_fwhm": lsf})
    consolidate(out)
    return {
        "path": str(out),
        "spectra": n,
        "wavelengths": nwave,
        "wave": (float(wave[0]), float(wave[-1])),
        "medium": "vacuum" if "vacuum" in {h[3] for h in heads} else "air",
        "masked_fraction_covered": n_masked / max(1, int(fwhm_count.sum())),
        "redshift": (min(h[5] for h in heads), max(h[5] for h in heads)),
        "seconds": time.perf_counter() - t0,
    }
