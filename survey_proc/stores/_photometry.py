"""The photometric store: band fluxes per pixel (``y, x, band``) or per object (``object, band``).

Variables ``flux`` (AB-referenced flux density f_nu, nJy), ``var`` (nJy^2) and ``mask`` (bool, True =
bad) share those dims; optional ``mag``/``mag_err`` (AB). Coordinate ``band`` holds the band names,
with ``pivot_wave(band)`` (Angstrom). The filter curves are kept beside the data: coordinate
``filter_wave`` (Angstrom) and variable ``filter_response(band, filter_wave)``. The band axis is
never split across chunks. Attributes: ``filter_set``, ``photometric_system`` = AB, optional
``redshift`` and ``pixel_scale_arcsec`` (needed by image models, which work in surface brightness).
A mock store carries its truth maps in group ``truth``, like a mock cube.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from survey_proc.errors import CubeError
from survey_proc.ssp import FilterSet

BAND_DIM = "band"
IMAGE_DIMS = ("y", "x", BAND_DIM)
OBJECT_DIMS = ("object", BAND_DIM)
FLUX_UNITS = "nJy"
#: AB zero point for fluxes in nJy: m_AB = ZP_NJY - 2.5 log10(f / nJy)
ZP_NJY = 2.5 * np.log10(3631e9)


def filter_dataset(filters: FilterSet) -> xr.Dataset:
    """The variables that keep a filter set beside the data (coords ``band``, ``filter_wave``)."""
    return xr.Dataset(
        {
            "filter_response": (
                (BAND_DIM, "filter_wave"),
                filters.response.astype(np.float32),
                {"units": "1", "long_name": "photon-counting throughput of each band"},
            )
        },
        coords={
            BAND_DIM: (BAND_DIM, np.array(filters.bands, dtype=object), {"long_name": "filter band name"}),
            "pivot_wave": (BAND_DIM, filters.pivot, {"units": "Angstrom", "long_name": "pivot wavelength"}),
            "filter_wave": (
                "filter_wave",
                filters.wave,
                {"units": "Angstrom", "long_name": "wavelength of the filter curves"},
            ),
        },
        attrs={"filter_set": filters.name, "filter_source": filters.provenance.get("source", "")},
    )


def filters_from_store(ds: xr.Dataset) -> FilterSet:
    """The filter set kept in a photometric store."""
    return FilterSet(
        str(ds.attrs.get("filter_set", "store")),
        tuple(str(b) for b in ds[BAND_DIM].values),
        np.asarray(ds["filter_wave"].values, np.float64),
        np.asarray(ds["filter_response"].values, np.float64),
        {"source": str(ds.attrs.get("filter_source", ""))},
    )


#: the arrays of a photometric store, with their dtypes and attributes
PHOTOMETRY_VARIABLES = {
    "flux": ("float32", {"units": FLUX_UNITS, "long_name": "band flux density f_nu (AB system)"}),
    "var": ("float32", {"units": f"{FLUX_UNITS}**2", "long_name": "variance of flux"}),
    "mask": ("bool", {"long_name": "bad band measurement (True = do not use)"}),
    "mag": ("float32", {"units": "mag", "long_name": "AB magnitude (NaN where flux <= 0)"}),
    "mag_err": ("float32", {"units": "mag", "long_name": "1-sigma uncertainty of the AB magnitude"}),
}


def photometry_template(
    *,
    spatial: Mapping[str, int],
    filters: FilterSet,
    attrs: Mapping[str, Any],
    chunk: int | Mapping[str, int] = 32,
    with_mag: bool = True,
    coords: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """The template of an empty photometric store (lazy arrays, their Zarr chunks in ``encoding``).

    ``spatial`` is ``{"y": ny, "x": nx}`` or ``{"object": n}``; ``chunk``: along each of them (one
    size, or one per dim).
    """
    dims = (*tuple(spatial), BAND_DIM)
    if dims not in (IMAGE_DIMS, OBJECT_DIMS):
        raise ValueError(f"spatial dims {tuple(spatial)} must be ('y', 'x') or ('object',)")
    nb = len(filters)
    shape = (*tuple(spatial.values()), nb)
    sizes = chunk if isinstance(chunk, Mapping) else dict.fromkeys(spatial, chunk)
    chunks = (*tuple(min(sizes[d], n) for d, n in spatial.items()), nb)
    names = [n for n in PHOTOMETRY_VARIABLES if with_mag or n not in ("mag", "mag_err")]
    data_vars = {
        name: (dims, da.zeros(shape, chunks=chunks, dtype=PHOTOMETRY_VARIABLES[name][0]), PHOTOMETRY_VARIABLES[name][1])
        for name in names
    }
    fds = filter_dataset(filters)
    ds = xr.Dataset(data_vars).merge(fds)
    ds.attrs = {"photometric_system": "AB", **fds.attrs, **dict(attrs)}
    if coords:
        ds = ds.assign_coords(coords)
    for name in names:
        ds[name].encoding["chunks"] = chunks
    return ds


def create_photometry_store(path: str | os.PathLike, **template) -> None:
    """Write the metadata of an empty photometric store (arrays filled region by region afterwards);
    keywords: those of :func:`photometry_template`."""
    photometry_template(**template).to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=False)


def validate_photometry_store(
    ds: xr.Dataset, name: str = "dataset", *, check_data: bool = True, require_redshift: bool = False
) -> None:
    """Raise :class:`CubeError` listing every way ``ds`` breaks the photometric schema."""
    from survey_proc.stores._cube import (
        _check_object_redshift,
        _dims_unlike_flux,
        _has_finite_flux,
        _missing_variables,
        _problem_list,
        stored_chunks,
    )

    problems = _missing_variables(ds, {"flux": "band flux", "var": "variance of flux", "mask": "bad-measurement mask"})
    if "flux" not in ds:
        raise _problem_list(name, problems, "photometric")
    flux = ds["flux"]
    if flux.dims not in (IMAGE_DIMS, OBJECT_DIMS):
        problems.append(
            f"variable 'flux' has dims {flux.dims}, expected {IMAGE_DIMS} (images) or {OBJECT_DIMS} (objects)"
        )
    problems += _dims_unlike_flux(ds)
    if str(flux.attrs.get("units", "")) != FLUX_UNITS:
        problems.append(f"variable 'flux' has units {flux.attrs.get('units')!r}, expected {FLUX_UNITS!r} (AB f_nu)")
    if BAND_DIM not in ds.coords:
        problems.append("coordinate 'band' (band names) is missing")
    else:
        names = [str(b) for b in ds[BAND_DIM].values]
        if len(set(names)) != len(names):
            problems.append(f"coordinate 'band' has repeated names: {names}")
        if "pivot_wave" not in ds.coords or ds["pivot_wave"].dims != (BAND_DIM,):
            problems.append("coordinate 'pivot_wave(band)' (Angstrom) is missing")
        elif not np.all(np.asarray(ds["pivot_wave"].values, float) > 0):
            problems.append("coordinate 'pivot_wave' has non-positive values")
    if "filter_response" not in ds or "filter_wave" not in ds.coords:
        problems.append(
            "the filter curves are missing: coordinate 'filter_wave' (Angstrom) and variable "
            "'filter_response(band, filter_wave)' must be kept beside the data"
        )
    elif ds["filter_response"].dims != (BAND_DIM, "filter_wave"):
        problems.append(
            f"variable 'filter_response' has dims {ds['filter_response'].dims}, expected ('band', 'filter_wave')"
        )
    else:
        resp = np.asarray(ds["filter_response"].values, np.float64)
        if not np.all(np.isfinite(resp)) or (resp < 0).any():
            problems.append("variable 'filter_response' has negative or non-finite values")
        empty = [str(b) for b, r in zip(ds[BAND_DIM].values, resp) if not (r > 0).any()]
        if empty:
            problems.append(f"bands with an all-zero filter curve: {', '.join(empty)}")
    if BAND_DIM in flux.dims:
        axis = flux.dims.index(BAND_DIM)
        for var in ("flux", "var", "mask"):
            chunks = stored_chunks(ds[var]) if var in ds else None
            if chunks and chunks[axis] < ds[var].shape[axis]:
                problems.append(
                    f"the band axis of '{var}' is split across chunks ({chunks[axis]} of "
                    f"{ds[var].shape[axis]} bands per chunk); rewrite the store with chunks {{'band': -1}}"
                )
    if flux.dims == OBJECT_DIMS and "redshift" in ds:  # a catalogue's photometry: one redshift per object
        _check_object_redshift(ds, problems, require_redshift, check_data)
    else:
        z = ds.attrs.get("redshift")
        if require_redshift and (z is None or not np.isfinite(float(z))):
            problems.append("attribute 'redshift' is missing or not finite (give `survey-proc run --redshift Z`)")
    if problems:
        raise _problem_list(name, problems, "photometric")
    if check_data and not _has_finite_flux(flux):
        raise _problem_list(name, ["variable 'flux' is NaN (or infinite) everywhere: nothing to fit"], "photometric")


def open_photometry_store(
    path: str | os.PathLike, *, check_data: bool = True, require_redshift: bool = False
) -> xr.Dataset:
    """Open a photometric store lazily and validate it (CubeError listing every problem)."""
    from survey_proc.stores._cube import check_stored_data, open_zarr_store

    ds = open_zarr_store(path)
    validate_photometry_store(ds, str(path), check_data=check_data, require_redshift=require_redshift)
    if check_data:
        check_stored_data(path)
    return ds


def band_index(store_bands: Sequence[str], wanted: Sequence[str], where: str = "the store") -> np.ndarray:
    """Positions of ``wanted`` band names in ``store_bands``; CubeError naming any that are missing."""
    index = {str(b): i for i, b in enumerate(store_bands)}
    missing = [b for b in wanted if b not in index]
    if missing:
        raise CubeError(
            f"{where} lacks band(s) {', '.join(missing)} that the model needs; it has "
            f"{', '.join(map(str, store_bands))}"
        )
    return np.array([index[b] for b in wanted], np.intp)
