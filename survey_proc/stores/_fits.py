"""Ingest of FITS cubes (MUSE, PHANGS-MUSE, MaNGA, CALIFA, or any cube with a spectral WCS and an
uncertainty extension) into the cube store, streaming.

:func:`~._fits_layout.detect_layout` says which extensions hold what; the file is memory-mapped and
copied a block of image rows at a time (a region of :func:`~survey_proc.stores.write_store`:
verified, resumable, the store renamed into place once complete), so memory stays at a few blocks
whatever the cube size. Wavelengths, sky coordinates and the instrumental resolution come from
:mod:`._fits_axes`. The variance is the file's, or the square of its error, or the inverse of its
inverse variance; the mask is the file's (non-zero, or the format's bad bits) or a non-finite value
or a non-positive variance. Extensions whose shapes differ, a file cut short and absurd options are
refused before anything is written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from survey_proc import __version__
from survey_proc.errors import CubeError, OptionError
from survey_proc.stores._cube import SPECTRAL_DIM, cube_template
from survey_proc.stores._fill import write_store
from survey_proc.stores._fits_axes import Resolution, resolution, sky_coords, spaxel_fwhm, wavelengths
from survey_proc.stores._fits_layout import FitsLayout, IngestOptions, detect_layout
from survey_proc.stores._regions import Region, make_regions, read_arrays, run_signature, with_region_arrays

if TYPE_CHECKING:
    from astropy.io import fits

# astropy is imported where a FITS file is read, not with the package: the engine's workers never need it

#: redshifts a cube may carry (as ``validate`` checks)
REDSHIFT_RANGE = (-0.01, 10.0)
#: the store variable of a per-spaxel resolution kept with ``--lsf-per-spaxel``
SPAXEL_LSF = "lsf_fwhm_spaxel"


@dataclass(frozen=True)
class IngestedCube:
    """What :func:`ingest_fits` wrote."""

    path: str
    shape: tuple[int, int, int]  #: (y, x, wave)
    wave: tuple[float, float]  #: first and last wavelength, Angstrom
    medium: str
    masked_fraction: float
    seconds: float
    redshift: float | None
    regions_resumed: int = 0  #: blocks of rows an earlier, cut-short ingest had finished
    format: str = "MUSE"  #: the data model recognised (``MaNGA LOGCUBE``, ``CALIFA V500``, ``generic``, ...)
    extensions: str = ""  #: the extensions read
    lsf: str = ""  #: where the instrumental resolution came from (and the error of a reduction)
    sky: bool = False  #: whether the cube has a celestial WCS (``ra``, ``dec`` per spaxel)


@dataclass
class _Extensions:
    """The data, uncertainty and (optional) mask extensions of an open FITS cube, checked alike."""

    layout: FitsLayout
    data: fits.ImageHDU
    error: fits.ImageHDU
    mask: fits.ImageHDU | None
    lsf: fits.ImageHDU | None = None  #: a per-spaxel resolution kept in the store

    @property
    def shape(self) -> tuple[int, int, int]:
        """(ny, nx, nwave)."""
        nwave, ny, nx = self.data.data.shape
        return ny, nx, nwave

    def variance(self, rows: slice) -> np.ndarray:
        """The variance of a block of rows, (y, x, wave), from what the error extension holds."""
        values = np.asarray(self.error.data[:, rows, :], np.float32).transpose(1, 2, 0)
        kind = self.layout.error_kind
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if kind == "ivar":
                values = np.where(values > 0, np.float32(1.0) / values, np.float32(np.nan))
            elif kind == "error":
                values = np.square(values)
        return np.ascontiguousarray(values, np.float32)

    def bad(self, rows: slice) -> np.ndarray | None:
        """The file's mask of a block of rows, (y, x, wave): non-zero, or the layout's bad bits."""
        if self.mask is None:
            return None
        values = np.asarray(self.mask.data[:, rows, :]).transpose(1, 2, 0)
        bits = self.layout.mask_bits
        return (values & bits) != 0 if bits is not None else values != 0


@dataclass
class _RowBlocks:
    """Reads one region (a block of image rows) of the FITS cube as the store's flux, var, mask."""

    ext: _Extensions
    path: Path
    masked: dict[str, int]  #: region key -> masked pixels (for the summary)
    lsf: np.ndarray | None = None  #: the reduced FWHM, for spaxels whose own is missing

    def __call__(self, region: Region) -> dict[str, np.ndarray]:
        rows = region.block[0]
        try:
            flux = np.ascontiguousarray(np.asarray(self.ext.data.data[:, rows, :], np.float32).transpose(1, 2, 0))
            var = self.ext.variance(rows)
            with np.errstate(invalid="ignore"):
                mask = ~np.isfinite(flux) | ~np.isfinite(var) | (var <= 0)
            bad = self.ext.bad(rows)
            if bad is not None:
                mask |= bad
            out = {"flux": flux, "var": var, "mask": mask}
            if self.ext.lsf is not None:
                out[SPAXEL_LSF] = spaxel_fwhm(self.ext.lsf, rows, self.lsf)
        except (OSError, TypeError, ValueError) as exc:
            raise CubeError(f"{self.path}: rows {rows.start}:{rows.stop} cannot be read ({exc}); {_DAMAGED}") from None
        self.masked[region.key] = int(mask.sum())
        return out


_DAMAGED = "the file may be truncated or damaged: copy or download it again"


def ingest_fits(
    fits_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    redshift: float | None = None,
    chunk: int = 32,
    options: IngestOptions | None = None,
) -> IngestedCube:
    """Copy a FITS cube (MUSE, PHANGS-MUSE, MaNGA, CALIFA or generic: :mod:`._fits_layout`) into a
    cube store at ``out``.

    ``redshift``: the systemic redshift (else the header's ``Z``/``REDSHIFT``/``ZSYS``; else left
    unset and ``survey-proc run --redshift`` must give it). ``options``: what the file does not say
    (extensions, what the error extension holds, the medium, the resolution).
    """
    options = options or IngestOptions()
    _check_options(redshift, options.lsf_fwhm, chunk)
    options.check()
    path = Path(fits_path)
    t0 = time.perf_counter()
    with _open_fits(path) as hdul:
        ext = _extensions(hdul, path, detect_layout(hdul, path, options))
        ny, nx, nwave = ext.shape
        template, redshift, res = _template(hdul, ext, path, redshift, options, chunk)
        if res.per_spaxel is not None:
            ext.lsf = _checked(hdul[res.per_spaxel], ext, path)
        names = ["flux", "var", "mask"] + ([SPAXEL_LSF] if ext.lsf is not None else [])
        template = _with_spaxel_lsf(template, ext, chunk)
        sizes, blocks = {"y": ny, "x": nx}, {"y": chunk, "x": nx}
        regions = make_regions(sizes, blocks)
        compute = _RowBlocks(ext, path, {}, res.fwhm)
        written = write_store(
            out,
            with_region_arrays(template, sizes, blocks),
            regions,
            compute,
            signature=_signature(path, hdul, redshift, options, chunk),
            what="cube",
            names=names,
            inputs=[path],
            desc="ingest",
        )
        used = ext.layout.names(hdul)
    masked = _masked_pixels(out, regions, compute.masked)
    wave = template[SPECTRAL_DIM].values
    return IngestedCube(
        path=str(out),
        shape=(ny, nx, nwave),
        wave=(float(wave[0]), float(wave[-1])),
        medium=str(template[SPECTRAL_DIM].attrs["medium"]),
        masked_fraction=masked / (nx * ny * nwave),
        seconds=time.perf_counter() - t0,
        redshift=redshift,
        regions_resumed=written.resumed,
        format=ext.layout.format,
        extensions=used,
        lsf=res.note,
        sky="ra" in template.coords,
    )


def ingest_muse_fits(
    fits_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    redshift: float | None = None,
    lsf_fwhm: float | None = None,
    chunk: int = 32,
) -> IngestedCube:
    """:func:`ingest_fits` with the options of earlier versions (any format it recognises is read)."""
    return ingest_fits(fits_path, out, redshift=redshift, chunk=chunk, options=IngestOptions(lsf_fwhm=lsf_fwhm))


def _check_options(redshift: float | None, lsf_fwhm: float | None, chunk: int) -> None:
    low, high = REDSHIFT_RANGE
    if redshift is not None and not (np.isfinite(redshift) and low <= redshift < high):
        raise OptionError(f"--redshift {redshift:g} is outside the plausible range [{low:g}, {high:g})")
    if lsf_fwhm is not None and not (np.isfinite(lsf_fwhm) and lsf_fwhm > 0):
        raise OptionError(f"--lsf-fwhm {lsf_fwhm:g}: give the instrumental FWHM in Angstrom, finite and > 0")
    if chunk < 1:
        raise OptionError(f"--chunk {chunk}: give at least 1 row per chunk")


def _open_fits(path: Path) -> fits.HDUList:
    from astropy.io import fits

    if not path.exists():
        raise CubeError(f"{path}: no such FITS file")
    try:
        return fits.open(path, memmap=True)
    except OSError as exc:
        raise CubeError(f"{path} is not a readable FITS file ({exc})") from exc


def _extensions(hdul: fits.HDUList, path: Path, layout: FitsLayout) -> _Extensions:
    """The data, uncertainty and mask extensions of ``layout``, each readable and of the data's shape."""
    data = hdul[layout.data]
    if data.header.get("NAXIS") != 3:
        raise CubeError(f"{path}: extension {data.name} has {data.header.get('NAXIS')} axes, expected 3")
    ext = _Extensions(layout, data, hdul[layout.error], hdul[layout.mask] if layout.mask is not None else None)
    for hdu in (ext.error, ext.mask):
        if hdu is not None:
            _checked(hdu, ext, path)
    return ext


def _checked(hdu, ext: _Extensions, path: Path):
    """``hdu``, refused (CubeError) unless it has the data's shape."""
    want, got = _shape(ext.data, path), _shape(hdu, path)
    if got != want:
        raise CubeError(
            f"{path}: {hdu.name} {got} differs from {ext.data.name} {want} (wave, y, x); every extension "
            "of the cube must have the data's shape"
        )
    return hdu


def _shape(hdu, path: Path) -> tuple[int, ...]:
    """The shape of an extension's data, mapped (not read); CubeError when the file is cut short."""
    try:
        data = hdu.data
    except (OSError, TypeError, ValueError) as exc:
        raise CubeError(f"{path}: extension {hdu.name} cannot be read ({exc}); {_DAMAGED}") from None
    return () if data is None else tuple(data.shape)


def _template(
    hdul: fits.HDUList, ext: _Extensions, path: Path, redshift: float | None, options: IngestOptions, chunk: int
) -> tuple[xr.Dataset, float | None, Resolution]:
    """The cube store's template from the headers, the redshift (given, else the header's) and the resolution."""
    hdr, primary = ext.data.header, hdul[0].header
    ny, nx, _nwave = ext.shape
    wave, medium = wavelengths(hdul, ext.layout, path, options.medium)
    res = resolution(hdul, ext.layout, wave, path, options.lsf_fwhm, options.lsf_per_spaxel)
    redshift = redshift if redshift is not None else _header_redshift(primary, hdr, path)
    bunit = str(hdr.get("BUNIT", primary.get("BUNIT", ""))).strip()
    if not bunit:
        raise CubeError(f"{path}: the data extension has no BUNIT (flux units)")
    attrs = {
        "instrument": str(primary.get("INSTRUME", hdr.get("INSTRUME", ""))).strip() or "unknown",
        "format": ext.layout.format,
        "extensions": ext.layout.names(hdul),
        **res.attrs(),
        "source": f"FITS {path.name}",
        "source_path": str(path.resolve()),
        "object": str(primary.get("OBJECT", primary.get("PLATEIFU", ""))),
        "date_obs": str(primary.get("DATE-OBS", "")),
        "software": f"survey-proc {__version__}",
        "fits_datamd5": str(primary.get("DATAMD5", "")),
    }
    if redshift is not None:
        attrs["redshift"] = float(redshift)
    ebv = _header_foreground(primary)
    if ebv is not None:
        attrs["ebv_mw"] = ebv  # survey-proc run undoes it (--mw-ebv overrides)
    coords = sky_coords(hdr, ny, nx, attrs)
    template = cube_template(
        ny=ny,
        nx=nx,
        wave=wave,
        flux_units=bunit,
        attrs=attrs,
        chunk=chunk,
        medium=medium,
        lsf_fwhm=res.fwhm,
        coords=coords,
    )
    return template, redshift, res


def _with_spaxel_lsf(template: xr.Dataset, ext: _Extensions, chunk: int) -> xr.Dataset:
    """The template with ``lsf_fwhm_spaxel(y, x, wave)`` when a per-spaxel resolution is kept."""
    if ext.lsf is None:
        return template
    flux = template["flux"]
    lsf = xr.DataArray(
        flux.data.astype(np.float32),
        dims=flux.dims,
        attrs={"units": "Angstrom", "long_name": "instrumental FWHM of each spaxel"},
    )
    template = template.assign({SPAXEL_LSF: lsf})
    template[SPAXEL_LSF].encoding.update(flux.encoding)
    return template


def _header_foreground(primary) -> float | None:
    """The Milky Way foreground E(B-V) a header records (MaNGA DRP: EBVGAL, from SFD), if finite."""
    try:
        value = float(primary.get("EBVGAL", "nan"))
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value >= 0 else None


def _header_redshift(primary, hdr, path: Path) -> float | None:
    for key in ("Z", "REDSHIFT", "ZSYS"):
        if key in primary or key in hdr:
            z = float(primary.get(key, hdr.get(key)))
            low, high = REDSHIFT_RANGE
            if not (np.isfinite(z) and low <= z < high):
                raise CubeError(
                    f"{path}: header {key} = {z:g} is outside the plausible range [{low:g}, {high:g}); "
                    "give the redshift with --redshift"
                )
            return z
    return None


def _signature(path: Path, hdul: fits.HDUList, redshift: float | None, options: IngestOptions, chunk: int) -> str:
    """What an ingest copies: the file (path, size, time, DATAMD5) and the options."""
    stat = path.stat()
    ident = {
        "fits": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "datamd5": str(hdul[0].header.get("DATAMD5", "")),
        "redshift": redshift,
        "lsf_fwhm": options.lsf_fwhm,
        "chunk": chunk,
        "software": __version__,
    }
    if options != replace(IngestOptions(), lsf_fwhm=options.lsf_fwhm):
        ident["options"] = repr(options)
    return run_signature(ident)


def _masked_pixels(out: str | os.PathLike, regions: list[Region], counted: dict[str, int]) -> int:
    """Masked pixels of the store: counted while copying, read back for regions an earlier ingest did."""
    total = sum(counted.values())
    for region in regions:
        if region.key not in counted:
            total += int(read_arrays(out, ["mask"], region.block)["mask"].sum())
    return total
