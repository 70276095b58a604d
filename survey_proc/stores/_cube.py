"""The cube and spectra-catalogue stores: schema, validation, creation and region writes.

A cube is an xarray Dataset in a Zarr v3 store with dims ``(y, x, wave)``; a spectra catalogue has
dims ``(object, wave)``. Variables ``flux``, ``var`` (variance of flux) and ``mask`` (bool, True =
bad) share those dims and are chunked over the spatial dims only: the spectral axis is never split.
Coordinate ``wave`` is in Angstrom with attributes ``frame`` (observed|rest) and ``medium``
(air|vacuum). Attributes: ``redshift``, ``lsf_fwhm`` (Angstrom; or a ``lsf_fwhm(wave)`` variable),
flux ``units`` and provenance.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from survey_proc.errors import CubeError
from survey_proc.stores._integrity import data_problems

SPECTRAL_DIM = "wave"
CUBE_DIMS = ("y", "x", SPECTRAL_DIM)
CATALOGUE_DIMS = ("object", SPECTRAL_DIM)
REQUIRED_VARS = {"flux": "flux density", "var": "variance of flux", "mask": "bad-pixel mask"}
WAVE_UNITS = {"angstrom", "aa", "a", "å"}
FRAMES = ("observed", "rest")
MEDIA = ("air", "vacuum")


def _problem_list(name: str, problems: Sequence[str], kind: str = "spectral") -> CubeError:
    lines = "\n  - ".join(problems)
    return CubeError(f"{name} is not a valid {kind} store:\n  - {lines}")


#: the last dim of an input store's ``flux``: wavelengths (cubes, catalogues) or bands (photometry)
FEATURE_DIMS = (SPECTRAL_DIM, "band")


def spatial_dims(ds: xr.Dataset) -> tuple[str, ...]:
    """The dims of ``flux`` other than the spectral/band one: ``("y", "x")`` or ``("object",)``."""
    return tuple(d for d in ds["flux"].dims if d not in FEATURE_DIMS)


def stored_chunks(var: xr.DataArray) -> tuple[int, ...] | None:
    """Chunk shape as stored on disk (zarr encoding), else the dask chunking, else None."""
    enc = var.encoding.get("chunks") or var.encoding.get("preferred_chunks")
    if isinstance(enc, Mapping):
        enc = tuple(enc.get(d, n) for d, n in zip(var.dims, var.shape))
    if enc:
        return tuple(int(c) for c in enc)
    if var.chunks:
        return tuple(int(max(c)) for c in var.chunks)
    return None


def _missing_variables(ds: xr.Dataset, required: Mapping[str, str]) -> list[str]:
    """One problem per variable of ``required`` (name -> what it holds) that ``ds`` lacks."""
    found = ", ".join(sorted(ds.data_vars)) or "none"
    return [f"variable '{var}' ({what}) is missing; found: {found}" for var, what in required.items() if var not in ds]


def _dims_unlike_flux(ds: xr.Dataset) -> list[str]:
    """One problem per ``var`` / ``mask`` whose dims differ from ``flux``'s."""
    return [
        f"variable '{var}' has dims {ds[var].dims}, expected {ds['flux'].dims} like 'flux'"
        for var in ("var", "mask")
        if var in ds and ds[var].dims != ds["flux"].dims
    ]


def open_zarr_store(path: str | os.PathLike) -> xr.Dataset:
    """Open a Zarr store lazily (v2 or v3, not consolidated); CubeError if it is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise CubeError(f"{path}: no such file or directory")
    if is_fits_file(path):
        stem = path.name.split(".")[0] or "cube"
        raise CubeError(
            f"{path} is a FITS file, not a Zarr store: ingest it first, then run the store:\n"
            f"  survey-proc ingest {path} {stem}.zarr [--redshift Z]   (or ingest-spectra for a file of spectra)\n"
            f"  survey-proc run --cube {stem}.zarr"
        )
    try:
        return xr.open_zarr(path, consolidated=False, zarr_format=None)
    except Exception as exc:  # zarr raises several types for a folder that is not a store
        raise CubeError(f"{path} is not a readable Zarr store ({type(exc).__name__}: {exc})") from exc


def is_fits_file(path: Path) -> bool:
    """Whether ``path`` is a FITS file (by its name, or the ``SIMPLE  =`` card it starts with)."""
    if not path.is_file():
        return False
    if path.name.lower().endswith((".fits", ".fits.gz", ".fit", ".fts", ".fits.fz", ".fz")):
        return True
    with open(path, "rb") as f:
        return f.read(9) == b"SIMPLE  ="


def validate_spectral_store(
    ds: xr.Dataset, name: str = "dataset", *, check_data: bool = True, require_redshift: bool = True
) -> None:
    """Raise :class:`CubeError` listing every way ``ds`` breaks the cube/catalogue schema."""
    problems = _missing_variables(ds, REQUIRED_VARS)
    if "flux" not in ds:
        raise _problem_list(name, problems)

    flux = ds["flux"]
    if flux.dims not in (CUBE_DIMS, CATALOGUE_DIMS):
        problems.append(
            f"variable 'flux' has dims {flux.dims}, expected {CUBE_DIMS} (cube) or {CATALOGUE_DIMS} (spectra catalogue)"
        )
    problems += _dims_unlike_flux(ds)
    if "mask" in ds and not (ds["mask"].dtype == bool or np.issubdtype(ds["mask"].dtype, np.integer)):
        problems.append(f"variable 'mask' has dtype {ds['mask'].dtype}, expected bool (True = bad)")
    if not flux.attrs.get("units"):
        problems.append("variable 'flux' has no 'units' attribute (e.g. '1e-20 erg/s/cm2/Angstrom')")
    if "var" in ds and not ds["var"].attrs.get("units"):
        problems.append("variable 'var' has no 'units' attribute (the square of the flux units)")

    if SPECTRAL_DIM not in ds.coords:
        problems.append(f"coordinate '{SPECTRAL_DIM}' (wavelength in Angstrom) is missing")
    else:
        wave = ds[SPECTRAL_DIM]
        values = np.asarray(wave.values, dtype=np.float64)
        if values.ndim != 1 or values.size < 2:
            problems.append(f"coordinate 'wave' must be 1-D with at least 2 values, found shape {values.shape}")
        elif not np.all(np.isfinite(values)):
            problems.append("coordinate 'wave' contains NaN or infinite values")
        elif not np.all(np.diff(values) > 0):
            bad = int(np.argmax(~(np.diff(values) > 0)))
            problems.append(
                f"coordinate 'wave' is not strictly increasing (at index {bad}: "
                f"{values[bad]:.3f} then {values[bad + 1]:.3f})"
            )
        units = str(wave.attrs.get("units", "")).lower()
        if units not in WAVE_UNITS:
            problems.append(f"coordinate 'wave' has units {wave.attrs.get('units')!r}, expected 'Angstrom'")
        if wave.attrs.get("frame") not in FRAMES:
            problems.append(f"coordinate 'wave' has frame {wave.attrs.get('frame')!r}, expected one of {FRAMES}")
        if wave.attrs.get("medium") not in MEDIA:
            problems.append(f"coordinate 'wave' has medium {wave.attrs.get('medium')!r}, expected one of {MEDIA}")

    if SPECTRAL_DIM in flux.dims:
        axis = flux.dims.index(SPECTRAL_DIM)
        for var in ("flux", "var", "mask"):
            if var not in ds or ds[var].dims != flux.dims:  # other dims: reported above
                continue
            chunks = stored_chunks(ds[var])
            if chunks and chunks[axis] < ds[var].shape[axis]:
                problems.append(
                    f"the spectral axis of '{var}' is split across chunks ({chunks[axis]} of "
                    f"{ds[var].shape[axis]} wavelengths per chunk); each spectrum must be one chunk "
                    "along 'wave' — rewrite the store with chunks {'wave': -1}"
                )

    if "object" in flux.dims:  # a catalogue carries a per-object redshift variable
        _check_object_redshift(ds, problems, require_redshift, check_data)
    else:
        z = ds.attrs.get("redshift")
        if require_redshift and (z is None or not np.isfinite(float(z))):
            problems.append(
                "attribute 'redshift' is missing or not finite (set it with "
                "`survey-proc ingest --redshift Z` or `survey-proc run --redshift Z`)"
            )
        elif z is not None and np.isfinite(float(z)) and not -0.01 <= float(z) < 10:
            problems.append(f"attribute 'redshift' = {z} is outside the plausible range [-0.01, 10)")
    if "lsf_fwhm" not in ds.attrs and "lsf_fwhm" not in ds:
        problems.append(
            "the instrumental resolution is missing: attribute 'lsf_fwhm' (Angstrom, "
            "scalar) or variable 'lsf_fwhm(wave)'"
        )

    if problems:
        raise _problem_list(name, problems)
    if check_data and not _has_finite_flux(flux):
        raise _problem_list(name, ["variable 'flux' is NaN (or infinite) everywhere: no spectrum to fit"])


def _check_object_redshift(ds: xr.Dataset, problems: list[str], require: bool, check_data: bool) -> None:
    """Problems with a catalogue's per-object ``redshift`` variable, appended to ``problems``."""
    if "redshift" not in ds:
        if require:
            problems.append(
                "variable 'redshift' (one per object, dims ('object',)) is missing: a spectra "
                "catalogue carries the redshift of each spectrum"
            )
        return
    z = ds["redshift"]
    if z.dims != ("object",):
        problems.append(f"variable 'redshift' has dims {z.dims}, expected ('object',)")
        return
    if not check_data:
        return
    values = np.asarray(z.values, np.float64)
    bad = ~np.isfinite(values)
    if require and bad.any():
        problems.append(
            f"variable 'redshift' is NaN or infinite for {int(bad.sum())} of {values.size} objects "
            f"(first: object {int(np.argmax(bad))})"
        )
    out = np.isfinite(values) & ~((values >= -0.01) & (values < 10))
    if out.any():
        i = int(np.argmax(out))
        problems.append(
            f"variable 'redshift' is outside the plausible range [-0.01, 10) for {int(out.sum())} "
            f"objects (first: object {i}, z = {values[i]:g})"
        )


def _has_finite_flux(flux: xr.DataArray) -> bool:
    """True as soon as one stored chunk holds a finite value (reads more only for bad cubes)."""
    data = flux.data
    if not isinstance(data, da.Array):
        return bool(np.isfinite(np.asarray(data)).any())
    blocks = data.to_delayed().ravel()
    return any(np.isfinite(np.asarray(block.compute(scheduler="synchronous"))).any() for block in blocks)


def open_spectral_store(
    path: str | os.PathLike, *, check_data: bool = True, require_redshift: bool = True
) -> xr.Dataset:
    """Open a cube or spectra-catalogue store lazily and validate it.

    Raises :class:`CubeError` with every problem found (missing variable, wrong dims, spectral axis
    split across chunks, non-monotonic wavelengths, all-NaN flux, missing units or redshift).
    """
    ds = open_zarr_store(path)
    validate_spectral_store(ds, str(path), check_data=check_data, require_redshift=require_redshift)
    if check_data:
        check_stored_data(path)
    return ds


def check_stored_data(path: str | os.PathLike) -> None:
    """Raise :class:`CubeError` when the data on disk are incomplete or damaged (regions not
    finished, chunks missing: :func:`~survey_proc.stores.data_problems`)."""
    problems = data_problems(path)
    if problems:
        raise _problem_list(str(path), problems)


open_cube = open_spectral_store


def lsf_fwhm_at(ds: xr.Dataset) -> np.ndarray:
    """Instrumental FWHM (Angstrom) at each ``wave`` of the store."""
    if "lsf_fwhm" in ds:
        return np.asarray(ds["lsf_fwhm"].values, dtype=np.float64)
    return np.full(ds.sizes[SPECTRAL_DIM], float(ds.attrs["lsf_fwhm"]))


def wave_attrs(frame: str = "observed", medium: str = "air") -> dict[str, str]:
    """Attributes of the ``wave`` coordinate."""
    return {"units": "Angstrom", "frame": frame, "medium": medium, "long_name": "wavelength"}


def _spectral_variables(
    dims: tuple[str, ...], shape: tuple[int, ...], chunks: tuple[int, ...], flux_units: str
) -> dict[str, tuple]:
    """Lazy, empty ``flux``, ``var`` and ``mask`` variables of a cube or catalogue (for templates)."""
    return {
        "flux": (
            dims,
            da.zeros(shape, chunks=chunks, dtype=np.float32),
            {"units": flux_units, "long_name": "flux density"},
        ),
        "var": (
            dims,
            da.zeros(shape, chunks=chunks, dtype=np.float32),
            {"units": f"({flux_units})**2", "long_name": "variance of flux"},
        ),
        "mask": (dims, da.zeros(shape, chunks=chunks, dtype=bool), {"long_name": "bad pixel (True = do not use)"}),
    }


def cube_template(
    *,
    ny: int,
    nx: int,
    wave: np.ndarray,
    flux_units: str,
    attrs: Mapping[str, Any],
    chunk: int = 32,
    frame: str = "observed",
    medium: str = "air",
    lsf_fwhm: np.ndarray | None = None,
    coords: Mapping[str, xr.DataArray] | None = None,
) -> xr.Dataset:
    """The template of an empty cube store (lazy ``flux``, ``var``, ``mask`` with their Zarr chunks
    and compressors in ``encoding``; ``wave``, ``lsf_fwhm`` and ``coords`` as values)."""
    shape = (ny, nx, wave.size)
    chunks = (min(chunk, ny), min(chunk, nx), wave.size)
    data_vars = _spectral_variables(CUBE_DIMS, shape, chunks, flux_units)
    if lsf_fwhm is not None:
        data_vars["lsf_fwhm"] = (
            (SPECTRAL_DIM,),
            np.asarray(lsf_fwhm, dtype=np.float64),
            {"units": "Angstrom", "long_name": "instrumental FWHM"},
        )
    ds = xr.Dataset(
        data_vars,
        coords={SPECTRAL_DIM: (SPECTRAL_DIM, np.asarray(wave, np.float64), wave_attrs(frame, medium))},
        attrs=dict(attrs),
    )
    if coords:
        ds = ds.assign_coords(coords)
    return _with_data_encoding(ds, chunks)


def _with_data_encoding(ds: xr.Dataset, chunks: tuple[int, ...]) -> xr.Dataset:
    """``ds`` with the Zarr chunks and compressors of ``flux``, ``var``, ``mask`` in their encoding."""
    for v in ("flux", "var", "mask"):
        ds[v].encoding.update({"chunks": chunks, "compressors": cube_compressors()})
    return ds


def create_cube_store(path: str | os.PathLike, **template) -> None:
    """Write the metadata of an empty cube store (arrays filled region by region afterwards);
    keywords: those of :func:`cube_template`."""
    cube_template(**template).to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=False)


def cube_compressors() -> tuple:
    """Compressor of a cube's ``flux``/``var``/``mask`` chunks (dask config ``survey-proc.store.compressor``).

    Default Blosc LZ4 with byte shuffle: noisy float32 spectra compress about as well as with Zstd
    but decompress about twice as fast, and reading is on the engine's hot path.
    """
    from zarr.codecs import BloscCodec, ZstdCodec

    from survey_proc import config

    opts = dict(config.get("store.compressor") or {})
    name = opts.pop("name", "blosc")
    if name == "blosc":
        return (BloscCodec(**opts),)
    if name == "zstd":
        return (ZstdCodec(**opts),)
    if name == "none":
        return ()
    raise CubeError(
        f"unknown store compressor {name!r} in dask config survey-proc.store.compressor (blosc | zstd | none)"
    )


def catalogue_template(
    *,
    n: int,
    wave: np.ndarray,
    flux_units: str,
    attrs: Mapping[str, Any],
    chunk: int = 256,
    frame: str = "observed",
    medium: str = "vacuum",
    object_vars: Mapping[str, tuple[np.ndarray, dict]] | None = None,
    coords: Mapping[str, tuple[np.ndarray, dict]] | None = None,
    lsf_fwhm: np.ndarray | None = None,
) -> xr.Dataset:
    """The template of an empty spectra catalogue ``(object, wave)``.

    ``object_vars``: per-object data variables (name -> (values, attrs)), e.g. ``redshift``;
    ``coords``: per-object coordinates (``ra``, ``dec``, names). ``lsf_fwhm(wave)`` (Angstrom):
    NaN where not given, to be written once the spectra are read.
    """
    shape = (n, wave.size)
    chunks = (min(chunk, n), wave.size)
    data_vars = _spectral_variables(CATALOGUE_DIMS, shape, chunks, flux_units)
    data_vars["lsf_fwhm"] = (
        (SPECTRAL_DIM,),
        np.full(wave.size, np.nan) if lsf_fwhm is None else np.asarray(lsf_fwhm, np.float64),
        {"units": "Angstrom", "long_name": "instrumental FWHM"},
    )
    for name, (values, vattrs) in (object_vars or {}).items():
        data_vars[name] = (("object",), np.asarray(values), dict(vattrs))
    all_coords: dict[str, tuple] = {
        SPECTRAL_DIM: (SPECTRAL_DIM, np.asarray(wave, np.float64), wave_attrs(frame, medium)),
        "object": ("object", np.arange(n, dtype=np.int64), {"long_name": "index of the spectrum"}),
    }
    for name, (values, cattrs) in (coords or {}).items():
        all_coords[name] = ("object", np.asarray(values), dict(cattrs))
    return _with_data_encoding(xr.Dataset(data_vars, coords=all_coords, attrs=dict(attrs)), chunks)


def create_catalogue_store(path: str | os.PathLike, **template) -> None:
    """Write the metadata of an empty spectra catalogue (filled block by block); keywords: those of
    :func:`catalogue_template`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr notes that string arrays are not yet in the v3 spec
        catalogue_template(**template).to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=False)


def write_region(
    path: str | os.PathLike, region: Mapping[str, slice], arrays: Mapping[str, np.ndarray], group: str | None = None
) -> None:
    """Write numpy arrays into an existing store at ``region`` (dim name -> slice), via zarr."""
    root = zarr.open_group(str(path), mode="r+", zarr_format=3)
    grp = root[group] if group else root
    for name, values in arrays.items():
        arr = grp[name]
        dims = arr.metadata.dimension_names or ()
        index = tuple(region.get(d, slice(None)) for d in dims)
        arr[index] = values


def consolidate(path: str | os.PathLike) -> None:
    """Consolidate a store's metadata so it opens fast (and without xarray's fallback warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr notes that consolidation is not yet in the v3 spec
        zarr.consolidate_metadata(str(path))
