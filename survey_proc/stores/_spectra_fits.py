"""A FITS file of many spectra on one wavelength grid -> a spectra-catalogue store (``object, wave``).

Two layouts are read (``survey-proc ingest-spectra FILE OUT``; SDSS spectrum files go to :mod:`._sdss`):

- **images**: ``FLUX`` (n_spectra, n_wave) and an uncertainty image of its shape (``IVAR``/``INVVAR``,
  ``VAR``/``VARIANCE``/``STAT`` or ``ERR``/``ERROR``/``SIGMA``/``NOISE``), optional ``MASK``
  (non-zero = bad; for MaNGA DRP files the ``DONOTUSE``/``FORESTAR`` bits), ``WAVE`` (n_wave, or one
  identical row per spectrum), ``Z`` (n_spectra), ``RA``/``DEC`` (n_spectra), and the resolution
  as ``SRES``/``SPECRES`` (R = lambda / FWHM) or ``LSF_FWHM`` (Angstrom), per spectrum or shared;
  e.g. the MaNGA DAP's test spectra (:func:`~._examples.manga_spectra`).
- **table**: one row per spectrum with array columns of the same names (``WAVE``, ``FLUX``, ``IVAR``
  ..., and scalar ``Z``, ``RA``, ``DEC``).

Nothing is resampled: ``flux`` and ``var`` (``1/ivar``, ``err**2`` or the variance) are the file's
values. The store's ``lsf_fwhm(wave)`` is the mean over the spectra of their FWHM at each
wavelength, over the pixels with data (as for SDSS). Wavelengths are vacuum for MaNGA DRP files
(``DRPVER`` in the primary header) and for files saying ``VACUUM = T`` or ``AIRORVAC = 'vac'``;
air for ``AIRORVAC = 'air'``; otherwise ``--medium`` must say.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc import __version__
from survey_proc.errors import CubeError, OptionError
from survey_proc.stores._cube import catalogue_template
from survey_proc.stores._fill import write_store
from survey_proc.stores._fits_layout import MANGA_BAD_BITS
from survey_proc.stores._regions import make_regions, run_signature, with_region_arrays
from survey_proc.stores._sdss import IngestedSpectra

_ERRORS = {"IVAR": "ivar", "INVVAR": "ivar", "VAR": "variance", "VARIANCE": "variance", "STAT": "variance"}
_ERRORS |= {"ERR": "error", "ERROR": "error", "SIGMA": "error", "NOISE": "error"}


def is_generic_spectra(path: str | os.PathLike) -> bool:
    """Whether a FITS file holds many spectra as images (a 2-D ``FLUX``) or as a table with array
    columns (a ``FLUX`` vector per row), rather than one SDSS spectrum."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=True) as hdul:
            return _find(hdul) is not None
    except (OSError, ValueError):
        return False


def _find(hdul):
    """``("images", hdul)`` or ``("table", table HDU)`` where the file holds many spectra, else None."""
    from astropy.io import fits

    for hdu in hdul:
        if hdu.name.upper() == "FLUX" and hdu.header.get("NAXIS") == 2:
            return "images", hdu
    for hdu in hdul:
        if isinstance(hdu, fits.BinTableHDU):
            cols = {c.name.upper(): c for c in hdu.columns}
            if "FLUX" in cols and len(hdu.data[cols["FLUX"].name].shape) == 2:
                return "table", hdu
    return None


@dataclass
class _Arrays:
    """The file's arrays, mapped (images) or read (tables), by name: what the blocks are cut from."""

    get: dict  #: name -> array-like (n_spectra, ...) or (n_wave,)
    names: list[str]
    headers: list
    format: str

    def has(self, name: str) -> bool:
        return name in self.get

    def rows(self, name: str, rows: slice) -> np.ndarray:
        values = np.asarray(self.get[name])
        return values[rows] if values.ndim == 2 else np.broadcast_to(values, (rows.stop - rows.start, values.size))


def _arrays(hdul, path: Path) -> _Arrays:
    found = _find(hdul)
    if found is None:
        raise CubeError(
            f"{path}: no spectra (a 2-D image FLUX, or a table with a FLUX array column); found: "
            f"{', '.join(h.name or '(primary)' for h in hdul)}"
        )
    kind, hdu = found
    manga = "DRPVER" in hdul[0].header
    if kind == "images":
        got = {h.name.upper(): h.data for h in hdul if h.data is not None and h.header.get("NAXIS", 0) in (1, 2)}
        fmt = "FITS images of spectra" + (" (MaNGA DRP)" if manga else "")
    else:
        got = {c.name.upper(): hdu.data[c.name] for c in hdu.columns}
        fmt = "FITS table of spectra" + (" (MaNGA DRP)" if manga else "")
    return _Arrays(got, list(got), [hdul[0].header, hdu.header], fmt)


@dataclass
class _Catalogue:
    """What the file says of its spectra, checked before anything is written."""

    arrays: _Arrays
    n: int
    wave: np.ndarray
    medium: str
    error: str  #: the uncertainty's name
    error_kind: str
    bad_bits: int | None
    redshift: np.ndarray
    lsf: np.ndarray
    lsf_note: str

    def block(self, rows: slice) -> dict[str, np.ndarray]:
        a = self.arrays
        flux = a.rows("FLUX", rows).astype(np.float32)
        err = a.rows(self.error, rows).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            var = {"ivar": np.where(err > 0, 1.0 / err, np.nan), "error": err**2, "variance": err}[self.error_kind]
        var = var.astype(np.float32)
        with np.errstate(invalid="ignore"):
            mask = ~np.isfinite(flux) | ~np.isfinite(var) | ~(var > 0)
        mask |= self.bad(rows)
        return {"flux": np.ascontiguousarray(flux), "var": np.ascontiguousarray(var), "mask": mask}

    def bad(self, rows: slice) -> np.ndarray:
        if not self.arrays.has("MASK"):
            return np.zeros((rows.stop - rows.start, self.wave.size), bool)
        bits = self.arrays.rows("MASK", rows).astype(np.int64)
        return (bits & self.bad_bits) != 0 if self.bad_bits is not None else bits != 0


def _header(headers, *keys):
    for hdr in headers:
        for key in keys:
            if key in hdr:
                return hdr[key]
    return None


def _medium(a: _Arrays, given: str | None, path: Path) -> str:
    if given is not None:
        return given
    if "MaNGA" in a.format or str(_header(a.headers, "VACUUM")).strip().upper() in ("T", "TRUE", "1"):
        return "vacuum"
    said = str(_header(a.headers, "AIRORVAC") or "").strip().lower()
    if said.startswith(("vac", "air")):
        return "vacuum" if said.startswith("vac") else "air"
    raise CubeError(f"{path}: the file does not say whether its wavelengths are in air or vacuum: give --medium")


def _wave(a: _Arrays, n: int, path: Path) -> np.ndarray:
    if not a.has("WAVE"):
        raise CubeError(f"{path}: no wavelengths (an image or column WAVE, Angstrom); found: {', '.join(a.names)}")
    wave = np.asarray(a.get["WAVE"], np.float64)
    if wave.ndim == 2:
        if not np.all(wave == wave[:1]):
            raise CubeError(f"{path}: the spectra have different wavelength grids; resample them to one before ingest")
        wave = wave[0]
    if wave.size < 2 or not np.all(np.diff(wave) > 0):
        raise CubeError(f"{path}: WAVE is not increasing")
    return wave


def _error(a: _Arrays, path: Path) -> tuple[str, str]:
    for name, kind in _ERRORS.items():
        if a.has(name):
            return name, kind
    raise CubeError(
        f"{path}: no uncertainty of the spectra (looked for {', '.join(_ERRORS)}); found: {', '.join(a.names)}"
    )


def _redshift(a: _Arrays, n: int, given: float | None, path: Path) -> np.ndarray:
    if a.has("Z"):
        z = np.asarray(a.get["Z"], np.float64).ravel()
        if z.size == n:
            return z
    if given is None:
        raise CubeError(f"{path}: no redshift per spectrum (an image or column Z); give one with --redshift")
    return np.full(n, float(given))


def _resolution(cat: _Catalogue, given: float | None, path: Path) -> tuple[np.ndarray, str]:
    """The mean FWHM over the spectra at each wavelength, over their pixels with data."""
    a, wave = cat.arrays, cat.wave
    if given is not None:
        return np.full(wave.size, float(given)), f"{given} A (given)"
    name = next((n for n in ("SRES", "SPECRES", "LSF_FWHM") if a.has(n)), None)
    if name is None:
        raise CubeError(f"{path}: no resolution (SRES or SPECRES: R; LSF_FWHM: Angstrom); give --lsf-fwhm")
    rows = slice(0, cat.n)
    values = a.rows(name, rows).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        fwhm = values if name == "LSF_FWHM" else wave[None, :] / values
    good = np.isfinite(fwhm) & (values > 0) & ~cat.bad(rows)
    count = good.sum(axis=0)
    mean = np.where(good, fwhm, 0.0).sum(axis=0) / np.maximum(count, 1)
    if not count.any():
        raise CubeError(f"{path}: {name} holds no positive value where the spectra have data; give --lsf-fwhm")
    mean = np.interp(wave, wave[count > 0], mean[count > 0])
    return mean, f"mean over spectra of their {name} ({'FWHM' if name == 'LSF_FWHM' else 'lambda / R'})"


def _survey(hdul, path: Path, redshift: float | None, medium: str | None, lsf_fwhm: float | None) -> _Catalogue:
    a = _arrays(hdul, path)
    flux = np.shape(a.get["FLUX"])
    n = int(flux[0])
    wave = _wave(a, n, path)
    error, kind = _error(a, path)
    for name in ("FLUX", error, "MASK"):
        if a.has(name) and np.shape(a.get[name]) != (n, wave.size):
            raise CubeError(f"{path}: {name} has shape {np.shape(a.get[name])}, expected ({n}, {wave.size})")
    cat = _Catalogue(
        a,
        n,
        wave,
        _medium(a, medium, path),
        error,
        kind,
        MANGA_BAD_BITS if "MaNGA" in a.format else None,
        _redshift(a, n, redshift, path),
        np.zeros(0),
        "",
    )
    cat.lsf, cat.lsf_note = _resolution(cat, lsf_fwhm, path)
    return cat


def _template(cat: _Catalogue, path: Path, chunk: int) -> xr.Dataset:
    a = cat.arrays
    units = str(_header(a.headers, "BUNIT") or ("1E-17 erg/s/cm^2/Ang/spaxel" if "MaNGA" in a.format else ""))
    if not units:
        raise CubeError(f"{path}: no flux units (BUNIT)")
    coords = {}
    for c, what in (("ra", "right ascension"), ("dec", "declination")):
        values = np.asarray(a.get[c.upper()], np.float64).ravel() if a.has(c.upper()) else np.full(cat.n, np.nan)
        coords[c] = (values, {"units": "deg", "long_name": what})
    attrs = {
        "instrument": str(_header(a.headers, "INSTRUME") or ("MaNGA" if "MaNGA" in a.format else "unknown")),
        "format": a.format,
        "source": f"FITS {path.name}",
        "source_path": str(path.resolve()),
        "software": f"survey-proc {__version__}",
        "lsf": cat.lsf_note,
    }
    z_attrs = {"units": "1", "long_name": "redshift"}
    return catalogue_template(
        n=cat.n,
        wave=cat.wave,
        flux_units=units,
        attrs=attrs,
        chunk=chunk,
        medium=cat.medium,
        object_vars={"redshift": (cat.redshift, z_attrs)},
        coords=coords,
        lsf_fwhm=cat.lsf,
    )


def ingest_spectra_fits(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    redshift: float | None = None,
    medium: str | None = None,
    lsf_fwhm: float | None = None,
    chunk: int = 256,
) -> IngestedSpectra:
    """Write the spectra of one FITS file (images or a table: see the module) into a catalogue at ``out``."""
    from astropy.io import fits

    if redshift is not None and not (np.isfinite(redshift) and -0.01 <= redshift < 10):
        raise OptionError(f"--redshift {redshift:g} is outside the plausible range [-0.01, 10)")
    t0, path = time.perf_counter(), Path(path)
    if not path.exists():
        raise CubeError(f"{path}: no such FITS file")
    with fits.open(path, memmap=True) as hdul:
        cat = _survey(hdul, path, redshift, medium, lsf_fwhm)
        chunk = max(1, min(chunk, cat.n))
        sizes, blocks = {"object": cat.n}, {"object": chunk}
        ident = {"file": [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns], "redshift": redshift}
        ident |= {"medium": medium, "lsf_fwhm": lsf_fwhm, "chunk": chunk, "software": __version__}
        written = write_store(
            out,
            with_region_arrays(_template(cat, path, chunk), sizes, blocks),
            make_regions(sizes, blocks),
            lambda region: cat.block(region.block[0]),
            signature=run_signature(ident),
            what="catalogue",
            names=["flux", "var", "mask"],
            inputs=[path],
            desc="ingest",
        )
        masked = int(sum(cat.bad(r.block[0]).sum() for r in make_regions(sizes, blocks)))
    return IngestedSpectra(
        path=str(out),
        spectra=cat.n,
        wavelengths=cat.wave.size,
        wave=(float(cat.wave[0]), float(cat.wave[-1])),
        medium=cat.medium,
        masked_fraction_covered=masked / max(1, cat.n * cat.wave.size),
        redshift=(float(cat.redshift.min()), float(cat.redshift.max())),
        seconds=time.perf_counter() - t0,
        regions_resumed=written.resumed,
    )
