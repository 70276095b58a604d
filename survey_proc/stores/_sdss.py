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
the spectra. Files are read twice: first each is checked and its grid, redshift and FWHM noted
(nothing is written until every file has passed), then the data are written ``chunk`` spectra at a
time as the regions of :func:`~survey_proc.stores.write_store` (verified, resumable, the store
renamed into place once complete), so memory stays at one block whatever the number of files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc import __version__, progress
from survey_proc.errors import CubeError, OptionError
from survey_proc.ssp import sdss_lsf_fwhm, wdisp_to_fwhm
from survey_proc.stores._cube import catalogue_template
from survey_proc.stores._fill import write_store
from survey_proc.stores._regions import Region, make_regions, run_signature, with_region_arrays

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
    try:
        with hdul:
            table = _spectrum_table(hdul, path)
            columns = _Columns.of(table, path)
            ident = _identity(hdul, table, path)
    except (OSError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, CubeError):
            raise
        raise CubeError(f"{path}: cannot be read ({exc}); the file may be truncated or damaged") from None
    if columns.loglam.size < 2 or not np.all(np.diff(columns.loglam) > 0):
        raise CubeError(f"{path}: the wavelengths are not strictly increasing")
    return SDSSSpectrum(path=path, **vars(columns), **ident)


def _spectrum_table(hdul, path: Path):
    """The table holding the spectrum: extension COADD, else the first table with a 'flux' column."""
    from astropy.io import fits

    tables = [hdu for hdu in hdul if isinstance(hdu, fits.BinTableHDU)]
    for hdu in tables:
        if hdu.name.upper() == "COADD":
            return hdu
    for hdu in tables:
        if "flux" in [c.lower() for c in hdu.columns.names]:
            return hdu
    raise CubeError(
        f"{path}: no SDSS spectrum table (an extension COADD, or a table with a 'flux' "
        f"column); found extensions: {', '.join(h.name or '(primary)' for h in hdul)}. "
        "Supported: SDSS spec/spec-lite files (DR9+) and DR8 CAS tables"
    )


@dataclass
class _Columns:
    """The per-pixel columns of a spectrum table, and which format they came in."""

    loglam: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    and_mask: np.ndarray
    wdisp: np.ndarray | None
    format: str

    @classmethod
    def of(cls, table, path: Path) -> _Columns:
        cols = {c.lower(): c for c in table.columns.names}
        listed = ", ".join(table.columns.names)

        def column(*names):
            for n in names:
                if n in cols:
                    return np.asarray(table.data[cols[n]], np.float64)
            return None

        loglam, fmt = column("loglam"), "spec COADD (DR9+)"
        if loglam is None:
            wave = column("wavelength", "wave", "lambda")
            if wave is None:
                raise CubeError(
                    f"{path}: table {table.name or 1} has neither 'loglam' nor 'wavelength'; columns: {listed}"
                )
            with np.errstate(divide="ignore", invalid="ignore"):
                loglam = np.log10(wave)
            fmt = "CAS table (DR8)"
        ivar = column("ivar", "inverse_variance")
        if ivar is None:
            raise CubeError(
                f"{path}: table {table.name or 1} has no inverse variance ('ivar' or 'inverse_variance'); "
                f"columns: {listed}"
            )
        flux = column("flux")
        and_mask = column("and_mask")
        and_mask = np.zeros(flux.size, np.int64) if and_mask is None else and_mask.astype(np.int64)
        return cls(loglam, flux, ivar, and_mask, column("wdisp"), fmt)


def _identity(hdul, table, path: Path) -> dict:
    """Redshift, position, name, medium and flux units of a spectrum, from SPECOBJ or the headers."""
    specobj = hdul["SPECOBJ"].data if "SPECOBJ" in hdul else None
    headers = (table.header, hdul[0].header)

    def specobj_value(name):
        if specobj is not None and name in specobj.columns.names:
            return specobj[name][0]
        return None

    def value(column: str, *keys: str):
        return specobj_value(column) if specobj is not None else _header_value(headers, *keys)

    z = specobj_value("Z")
    z = _float_or_nan(z if z is not None else _header_value(headers, "Z", "REDSHIFT"))
    plate, mjd = _header_value(headers, "PLATEID"), _header_value(headers, "MJD")
    fiber = value("FIBERID", "FIBERID")
    vacuum = _header_value(headers, "VACUUM")
    return {
        "redshift": None if not np.isfinite(z) else z,
        "ra": _float_or_nan(value("PLUG_RA", "RAOBJ", "PLUG_RA", "RA")),
        "dec": _float_or_nan(value("PLUG_DEC", "DECOBJ", "PLUG_DEC", "DEC")),
        "name": f"{int(plate):04d}-{int(mjd):05d}-{int(fiber):04d}" if None not in (plate, mjd, fiber) else path.stem,
        "medium": "air" if vacuum is not None and str(vacuum).strip().upper() in ("F", "FALSE", "0") else "vacuum",
        "units": _units(_header_value(headers, "BUNIT")),
    }


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


@dataclass(frozen=True)
class IngestedSpectra:
    """What :func:`ingest_sdss_spectra` wrote."""

    path: str
    spectra: int
    wavelengths: int
    wave: tuple[float, float]  #: first and last wavelength of the common grid, Angstrom
    medium: str
    masked_fraction_covered: float  #: of the pixels the spectra cover
    redshift: tuple[float, float]  #: lowest and highest
    seconds: float
    regions_resumed: int = 0  #: blocks of spectra an earlier, cut-short ingest had finished


@dataclass(frozen=True)
class _Head:
    """What pass 1 keeps of a file: where its pixels lie and what goes in the per-object table."""

    path: Path
    loglam: tuple[float, float]  #: first and last log10 wavelength
    medium: str
    units: str
    redshift: float
    ra: float
    dec: float
    name: str
    format: str


class _GridSums:
    """Per-pixel sums of the instrumental FWHM over spectra, on the absolute SDSS grid k = log10(lambda) / step."""

    def __init__(self) -> None:
        self.k0 = 0
        self.sum = np.zeros(0)
        self.count = np.zeros(0)

    def add(self, k0: int, fwhm: np.ndarray) -> None:
        if not self.sum.size:
            self.k0 = k0
        lo, hi = min(self.k0, k0), max(self.k0 + self.sum.size, k0 + fwhm.size)
        if (lo, hi) != (self.k0, self.k0 + self.sum.size):
            pad = (self.k0 - lo, hi - self.k0 - self.sum.size)
            self.sum, self.count, self.k0 = np.pad(self.sum, pad), np.pad(self.count, pad), lo
        at = slice(k0 - self.k0, k0 - self.k0 + fwhm.size)
        self.sum[at] += fwhm
        self.count[at] += 1

    def on(self, k_first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(sum, count) over the n pixels from absolute index ``k_first``."""
        at = slice(k_first - self.k0, k_first - self.k0 + n)
        return np.pad(self.sum, (0, n))[at], np.pad(self.count, (0, n))[at]


@dataclass
class _Survey:
    """Pass 1 over the files: heads, the FWHM sums and the masked pixels of every spectrum."""

    heads: list[_Head]
    sums: _GridSums
    masked: int

    @classmethod
    def of(cls, paths: list[Path], redshift: float | None) -> _Survey:
        heads, sums, masked = [], _GridSums(), 0
        for p in progress.track(paths, "reading", unit="file"):
            s = read_sdss_spectrum(p)
            z = s.redshift if s.redshift is not None else redshift
            if z is None:
                raise CubeError(f"{p}: no redshift in the file (SPECOBJ.Z or header Z); give one with --redshift")
            sums.add(_grid_offset(s, 0.0), s.fwhm())  # also checks the file is on the SDSS grid
            masked += int(spectra_arrays(s)[2].sum())
            ends = (float(s.loglam[0]), float(s.loglam[-1]))
            heads.append(_Head(p, ends, s.medium, s.units, float(z), s.ra, s.dec, s.name, s.format))
        return cls(heads, sums, masked)

    def grid(self) -> tuple[float, int, np.ndarray]:
        """(base log10 wavelength, its absolute index, the common wavelength grid)."""
        k_base = round(min(h.loglam[0] for h in self.heads) / SDSS_LOGLAM_STEP)
        base = k_base * SDSS_LOGLAM_STEP
        nwave = int(round((max(h.loglam[1] for h in self.heads) - base) / SDSS_LOGLAM_STEP)) + 1
        return base, int(k_base), 10.0 ** (base + SDSS_LOGLAM_STEP * np.arange(nwave))


@dataclass
class _SpectraBlocks:
    """Reads one region (a block of objects) of the catalogue from its files, on the common grid."""

    heads: list[_Head]
    base: float
    nwave: int

    def __call__(self, region: Region) -> dict[str, np.ndarray]:
        rows = region.block[0]
        n = rows.stop - rows.start
        flux = np.full((n, self.nwave), np.nan, np.float32)
        var = np.full((n, self.nwave), np.nan, np.float32)
        mask = np.ones((n, self.nwave), bool)
        for row, head in enumerate(self.heads[rows]):
            s = read_sdss_spectrum(head.path)
            i0 = _grid_offset(s, self.base)
            f, v, m = spectra_arrays(s)
            sl = slice(i0, i0 + f.size)
            flux[row, sl], var[row, sl], mask[row, sl] = f, v, m
        return {"flux": flux, "var": var, "mask": mask}


def ingest_sdss_spectra(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    redshift: float | None = None,
    chunk: int = 256,
) -> IngestedSpectra:
    """Write SDSS spectrum files into one spectra-catalogue store at ``out``.

    ``redshift``: used for files without a redshift of their own (header ``Z`` or ``SPECOBJ.Z``);
    a file with neither is refused. ``chunk``: spectra per stored chunk (and per write). Every file
    is read and checked (pass 1) before anything is written.
    """
    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    if not paths:
        raise CubeError("no SDSS spectrum files given")
    if redshift is not None and not (np.isfinite(redshift) and -0.01 <= redshift < 10):
        raise OptionError(f"--redshift {redshift:g} is outside the plausible range [-0.01, 10)")
    survey = _Survey.of(paths, redshift)
    heads = survey.heads
    _check_alike(heads)
    base, k_base, wave = survey.grid()
    chunk = max(1, min(chunk, len(heads)))
    fwhm_sum, fwhm_count = survey.sums.on(k_base, wave.size)
    with np.errstate(invalid="ignore"):
        lsf = np.where(fwhm_count > 0, fwhm_sum / np.maximum(fwhm_count, 1), sdss_lsf_fwhm(wave))
    sizes, blocks = {"object": len(heads)}, {"object": chunk}
    written = write_store(
        out,
        with_region_arrays(_catalogue(heads, base, wave, lsf, chunk), sizes, blocks),
        make_regions(sizes, blocks),
        _SpectraBlocks(heads, base, wave.size),
        signature=_signature(paths, redshift, chunk),
        what="catalogue",
        names=["flux", "var", "mask"],
        inputs=paths,
        desc="ingest",
    )
    return IngestedSpectra(
        path=str(out),
        spectra=len(heads),
        wavelengths=wave.size,
        wave=(float(wave[0]), float(wave[-1])),
        medium="vacuum" if "vacuum" in {h.medium for h in heads} else "air",
        masked_fraction_covered=survey.masked / max(1, int(fwhm_count.sum())),
        redshift=(min(h.redshift for h in heads), max(h.redshift for h in heads)),
        seconds=time.perf_counter() - t0,
        regions_resumed=written.resumed,
    )


def _check_alike(heads: list[_Head]) -> None:
    media, units = {h.medium for h in heads}, {h.units for h in heads}
    if len(media) > 1 or len(units) > 1:
        raise CubeError(
            f"the files mix wavelength media {sorted(media)} or flux units {sorted(units)}; "
            "ingest them into separate stores"
        )


def _catalogue(heads: list[_Head], base: float, wave: np.ndarray, lsf: np.ndarray, chunk: int) -> xr.Dataset:
    """The catalogue's template: per-object redshift, position, name and file; the mean FWHM."""
    attrs = {
        "instrument": "SDSS",
        "source": f"SDSS spectrum FITS files ({len(heads)})",
        "software": f"survey-proc {__version__}",
        "formats": ", ".join(sorted({h.format for h in heads})),
        "lsf": "mean over spectra of 2.355 wdisp dlambda where files give wdisp, else ssp.sdss_lsf_fwhm",
        "grid": f"log10(lambda) = {base:.4f} + {SDSS_LOGLAM_STEP:g} k (SDSS, no resampling)",
    }
    coords = {
        "ra": (np.array([h.ra for h in heads]), {"units": "deg", "long_name": "right ascension"}),
        "dec": (np.array([h.dec for h in heads]), {"units": "deg", "long_name": "declination"}),
        "object_name": (np.array([h.name for h in heads]), {"long_name": "SDSS plate-mjd-fiber or file name"}),
        "source_file": (np.array([h.path.name for h in heads]), {"long_name": "file the spectrum was read from"}),
    }
    redshift = np.array([h.redshift for h in heads])
    return catalogue_template(
        n=len(heads),
        wave=wave,
        flux_units=heads[0].units,
        attrs=attrs,
        chunk=chunk,
        medium=heads[0].medium,
        object_vars={"redshift": (redshift, {"units": "1", "long_name": "redshift (SDSS pipeline)"})},
        coords=coords,
        lsf_fwhm=lsf,
    )


def _signature(paths: list[Path], redshift: float | None, chunk: int) -> str:
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return run_signature({"files": files, "redshift": redshift, "chunk": chunk, "software": __version__})
