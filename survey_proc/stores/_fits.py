"""Ingest of MUSE-style FITS cubes (DATA, STAT, optional DQ) into the cube store, streaming.

The FITS file is memory-mapped and copied a block of image rows at a time (a region of
:func:`~survey_proc.stores.write_store`: verified, resumable, the store renamed into place once
complete), so memory stays at a few blocks whatever the cube size. Wavelengths come from the
spectral WCS (``AWAV`` = air, ``WAVE`` = vacuum), sky coordinates from the celestial WCS; the
variance is ``STAT``; the mask is ``DQ != 0`` or a non-finite value or a non-positive variance.
Extensions whose shapes differ, a file cut short and absurd options are refused before anything
is written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from survey_proc import __version__
from survey_proc.errors import CubeError, OptionError
from survey_proc.ssp import muse_lsf_fwhm
from survey_proc.stores._cube import cube_template
from survey_proc.stores._fill import write_store
from survey_proc.stores._regions import Region, make_regions, read_arrays, run_signature, with_region_arrays

if TYPE_CHECKING:
    from astropy.io import fits

# astropy is imported where a FITS file is read, not with the package: the engine's workers never need it

_DATA_NAMES = ("DATA", "SCI", "FLUX")
_VAR_NAMES = ("STAT", "VAR", "VARIANCE")
_DQ_NAMES = ("DQ", "QUALITY")
#: redshifts a cube may carry (as ``validate`` checks)
REDSHIFT_RANGE = (-0.01, 10.0)


@dataclass(frozen=True)
class IngestedCube:
    """What :func:`ingest_muse_fits` wrote."""

    path: str
    shape: tuple[int, int, int]  #: (y, x, wave)
    wave: tuple[float, float]  #: first and last wavelength, Angstrom
    medium: str
    masked_fraction: float
    seconds: float
    redshift: float | None
    regions_resumed: int = 0  #: blocks of rows an earlier, cut-short ingest had finished


@dataclass
class _Extensions:
    """The data, variance and (optional) quality extensions of an open FITS cube, checked alike."""

    data: fits.ImageHDU
    var: fits.ImageHDU
    dq: fits.ImageHDU | None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(ny, nx, nwave)."""
        nwave, ny, nx = self.data.data.shape
        return ny, nx, nwave


@dataclass
class _RowBlocks:
    """Reads one region (a block of image rows) of the FITS cube as the store's flux, var, mask."""

    ext: _Extensions
    path: Path
    masked: dict[str, int]  #: region key -> masked pixels (for the summary)

    def __call__(self, region: Region) -> dict[str, np.ndarray]:
        rows = region.block[0]
        try:
            flux = np.ascontiguousarray(np.asarray(self.ext.data.data[:, rows, :], np.float32).transpose(1, 2, 0))
            var = np.ascontiguousarray(np.asarray(self.ext.var.data[:, rows, :], np.float32).transpose(1, 2, 0))
            with np.errstate(invalid="ignore"):
                mask = ~np.isfinite(flux) | ~np.isfinite(var) | (var <= 0)
            if self.ext.dq is not None:
                mask |= np.asarray(self.ext.dq.data[:, rows, :]).transpose(1, 2, 0) != 0
        except (OSError, TypeError, ValueError) as exc:
            raise CubeError(f"{self.path}: rows {rows.start}:{rows.stop} cannot be read ({exc}); {_DAMAGED}") from None
        self.masked[region.key] = int(mask.sum())
        return {"flux": flux, "var": var, "mask": mask}


_DAMAGED = "the file may be truncated or damaged: copy or download it again"


def ingest_muse_fits(
    fits_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    redshift: float | None = None,
    lsf_fwhm: float | None = None,
    chunk: int = 32,
) -> IngestedCube:
    """Copy a MUSE-style FITS cube into a cube store at ``out``.

    ``redshift``: the systemic redshift (else the header's ``Z``/``REDSHIFT``; else left unset and
    ``survey-proc run --redshift`` must give it). ``lsf_fwhm``: instrumental FWHM in Angstrom;
    default for MUSE the Bacon et al. (2017) curve, required for other instruments.
    """
    _check_options(redshift, lsf_fwhm, chunk)
    path = Path(fits_path)
    t0 = time.perf_counter()
    with _open_fits(path) as hdul:
        ext = _extensions(hdul, path)
        ny, nx, nwave = ext.shape
        template, redshift = _template(hdul, ext, path, redshift, lsf_fwhm, chunk)
        sizes, blocks = {"y": ny, "x": nx}, {"y": chunk, "x": nx}
        regions = make_regions(sizes, blocks)
        compute = _RowBlocks(ext, path, {})
        written = write_store(
            out,
            with_region_arrays(template, sizes, blocks),
            regions,
            compute,
            signature=_signature(path, hdul, redshift, lsf_fwhm, chunk),
            what="cube",
            names=["flux", "var", "mask"],
            inputs=[path],
            desc="ingest",
        )
    masked = _masked_pixels(out, regions, compute.masked)
    wave = template["wave"].values
    return IngestedCube(
        path=str(out),
        shape=(ny, nx, nwave),
        wave=(float(wave[0]), float(wave[-1])),
        medium=str(template["wave"].attrs["medium"]),
        masked_fraction=masked / (nx * ny * nwave),
        seconds=time.perf_counter() - t0,
        redshift=redshift,
        regions_resumed=written.resumed,
    )


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


def _find_hdu(hdul, names: tuple[str, ...]):
    for hdu in hdul:
        if hdu.name.upper() in names:
            return hdu
    return None


def _extensions(hdul: fits.HDUList, path: Path) -> _Extensions:
    """The data, variance and quality extensions, each readable and of the data's shape."""
    found = ", ".join(h.name for h in hdul)
    data = _find_hdu(hdul, _DATA_NAMES)
    if data is None and hdul[0].header.get("NAXIS") == 3:
        data = hdul[0]
    if data is None:
        raise CubeError(f"{path}: no data extension (looked for {', '.join(_DATA_NAMES)}); found: {found}")
    var = _find_hdu(hdul, _VAR_NAMES)
    if var is None:
        raise CubeError(f"{path}: no variance extension (looked for {', '.join(_VAR_NAMES)}); found: {found}")
    if data.header.get("NAXIS") != 3:
        raise CubeError(f"{path}: extension {data.name} has {data.header.get('NAXIS')} axes, expected 3")
    ext = _Extensions(data, var, _find_hdu(hdul, _DQ_NAMES))
    shapes = {hdu.name: _shape(hdu, path) for hdu in (data, var, ext.dq) if hdu is not None}
    wrong = {name: shape for name, shape in shapes.items() if shape != shapes[data.name]}
    if wrong:
        listed = ", ".join(f"{name} {shape}" for name, shape in wrong.items())
        raise CubeError(
            f"{path}: {listed} differ{'s' if len(wrong) == 1 else ''} from {data.name} {shapes[data.name]} "
            "(wave, y, x); every extension of the cube must have the data's shape"
        )
    return ext


def _shape(hdu, path: Path) -> tuple[int, ...]:
    """The shape of an extension's data, mapped (not read); CubeError when the file is cut short."""
    try:
        data = hdu.data
    except (OSError, TypeError, ValueError) as exc:
        raise CubeError(f"{path}: extension {hdu.name} cannot be read ({exc}); {_DAMAGED}") from None
    return () if data is None else tuple(data.shape)


def _template(
    hdul: fits.HDUList, ext: _Extensions, path: Path, redshift: float | None, lsf_fwhm: float | None, chunk: int
) -> tuple[xr.Dataset, float | None]:
    """The cube store's template from the headers, and the redshift (given, else the header's)."""
    hdr, primary = ext.data.header, hdul[0].header
    ny, nx, _nwave = ext.shape
    wave, medium = _wavelengths(hdr, path)
    instrument = str(primary.get("INSTRUME", hdr.get("INSTRUME", ""))).strip()
    lsf, lsf_note = _lsf(instrument, wave, lsf_fwhm, path)
    redshift = redshift if redshift is not None else _header_redshift(primary, hdr, path)
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
    coords = _sky_coords(hdr, ny, nx, attrs)
    template = cube_template(
        ny=ny, nx=nx, wave=wave, flux_units=bunit, attrs=attrs, chunk=chunk, medium=medium, lsf_fwhm=lsf, coords=coords
    )
    return template, redshift


def _lsf(instrument: str, wave: np.ndarray, lsf_fwhm: float | None, path: Path) -> tuple[np.ndarray, str]:
    if lsf_fwhm is not None:
        return np.full(wave.size, float(lsf_fwhm)), f"{lsf_fwhm} A (given)"
    if instrument.upper() == "MUSE":
        return muse_lsf_fwhm(wave), "MUSE, Bacon et al. (2017) eq. 8"
    raise CubeError(
        f"{path}: instrument {instrument or 'unknown'} has no known line-spread function; give it with "
        "--lsf-fwhm (Angstrom)"
    )


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


def _sky_coords(header, ny: int, nx: int, attrs: dict) -> dict[str, xr.DataArray] | None:
    """``ra``, ``dec`` (y, x) from the celestial WCS (its header into ``attrs``), or None."""
    from astropy.wcs import WCS

    try:
        cel = WCS(header).celestial
        if not cel.has_celestial:
            return None
        yy, xx = np.mgrid[0:ny, 0:nx]
        ra, dec = cel.pixel_to_world_values(xx, yy)
        attrs["wcs_header"] = cel.to_header_string()
    except Exception:
        return None
    names = {"ra": (ra, "right ascension"), "dec": (dec, "declination")}
    return {
        c: xr.DataArray(np.asarray(v, np.float64), dims=("y", "x"), attrs={"units": "deg", "long_name": what})
        for c, (v, what) in names.items()
    }


def _signature(path: Path, hdul: fits.HDUList, redshift: float | None, lsf_fwhm: float | None, chunk: int) -> str:
    """What an ingest copies: the file (path, size, time, DATAMD5) and the options."""
    stat = path.stat()
    ident = {
        "fits": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "datamd5": str(hdul[0].header.get("DATAMD5", "")),
        "redshift": redshift,
        "lsf_fwhm": lsf_fwhm,
        "chunk": chunk,
        "software": __version__,
    }
    return run_signature(ident)


def _masked_pixels(out: str | os.PathLike, regions: list[Region], counted: dict[str, int]) -> int:
    """Masked pixels of the store: counted while copying, read back for regions an earlier ingest did."""
    total = sum(counted.values())
    for region in regions:
        if region.key not in counted:
            total += int(read_arrays(out, ["mask"], region.block)["mask"].sum())
    return total
