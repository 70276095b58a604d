"""Template of a maps store and the regions that fill it.

The template is an xarray Dataset of lazy arrays with every output variable and its attributes;
each variable's ``encoding["chunks"]`` aligns the store's chunks to the input store's spatial
chunks. Its dask arrays are single chunks (as xarray-beam's templates), so writing it with
``compute=False`` lays down the metadata without building a graph of one task per chunk (0.5 s
for a 65,536-spaxel cube). Each region then writes its own chunks (see :mod:`._region`), with the
bookkeeping arrays of :func:`survey_proc.stores.with_region_arrays` (``region_done``,
``region_spectra``, ``region_checksum``: one element per region).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from survey_proc.estimators import Manifest
from survey_proc.stores import FLAG_DTYPE, flag_attrs, lazy_full, property_attrs, spatial_dims, with_region_arrays


def spatial_chunks(ds: xr.Dataset) -> dict[str, int]:
    """Chunk size of ``flux`` along each spatial dim, as stored."""
    dims = spatial_dims(ds)
    enc = ds["flux"].encoding.get("chunks")
    if enc:
        return {d: int(c) for d, c in zip(ds["flux"].dims, enc) if d in dims}
    if ds["flux"].chunks:
        return {d: int(max(c)) for d, c in zip(ds["flux"].dims, ds["flux"].chunks) if d in dims}
    return {d: ds.sizes[d] for d in dims}


def output_variables(manifest: Manifest) -> list[tuple[str, tuple[str, ...], dict, dict]]:
    """(name, extra dims, attrs, coords) of every float output the estimator writes."""
    out = []
    systematics = manifest.error_systematics
    for spec in manifest.outputs:
        attrs = property_attrs(spec.name, spec.units or None, spec.long_name or None)
        out.append((spec.name, spec.dims, attrs, spec.coords))
        if spec.error:
            err_attrs = property_attrs(f"{spec.name}_err", attrs["units"], attrs["long_name"])
            err_attrs.update(systematics.describe(spec.name))  # what it holds beyond the model's own uncertainty
            out.append((f"{spec.name}_err", spec.dims, err_attrs, spec.coords))
        if spec.name in systematics.library_terms:
            sys_attrs = property_attrs(f"{spec.name}_sys_err", attrs["units"], attrs["long_name"])
            sys_attrs.update(systematics.describe_library(spec.name))
            out.append((f"{spec.name}_sys_err", spec.dims, sys_attrs, spec.coords))
    names = {name for name, *_ in out}
    for flag_name, rule in manifest.flag_rules:
        if rule["output"] in names:
            continue
        names.add(rule["output"])
        out.append(
            (
                rule["output"],
                (),
                {
                    "units": "1",
                    "long_name": f"score behind the {flag_name.lower()} flag",
                    **{f"flag_{k}": rule[k] for k in ("threshold", "above", "below") if k in rule},
                },
                {},
            )
        )
    return out


#: what the engine derives from a fit's ``log_mass_flux`` where the cube is flux-calibrated and has a
#: pixel scale (:func:`survey_proc.engine._setup.resolve_mass_density`)
MASS_DENSITY = "log_mass_surface_density"
MASS_FLUX = "log_mass_flux"


def derived_variables(how: str) -> list[tuple[str, tuple[str, ...], dict, dict]]:
    """(name, extra dims, attrs, coords) of the stellar mass surface density and its error, made
    ``how`` (recorded in the attrs)."""
    attrs = property_attrs(MASS_DENSITY) | {"derived_from": f"{MASS_FLUX}: {how}"}
    return [(MASS_DENSITY, (), attrs, {}), (f"{MASS_DENSITY}_err", (), property_attrs(f"{MASS_DENSITY}_err"), {})]


#: attributes of the cube that say where its pixels are on the sky, copied into the maps
SKY_ATTRS = ("wcs_header", "pixel_scale_arcsec")


def sky_coordinates(cube: xr.Dataset, dims: tuple[str, ...]) -> dict[str, xr.Variable]:
    """The cube's ``ra``/``dec`` over its spatial dims, as values: the template's NumPy variables are
    written with its metadata, while lazy ones (as :func:`xarray.open_zarr` gives) would never be
    computed and the maps would read NaN."""
    return {
        c: xr.Variable(cube[c].dims, np.asarray(cube[c].values), dict(cube[c].attrs))
        for c in ("ra", "dec")
        if c in cube.coords and set(cube[c].dims) <= set(dims)
    }


def sky_attrs(cube: xr.Dataset) -> dict:
    """The cube's celestial WCS header and pixel scale, where it has them (for export and plots)."""
    return {k: cube.attrs[k] for k in SKY_ATTRS if k in cube.attrs}


def maps_template(cube: xr.Dataset, manifest: Manifest, attrs: Mapping, derived: list | None = None) -> xr.Dataset:
    """Lazy Dataset describing the maps store of ``cube`` for ``manifest`` (nothing computed), with the
    engine's ``derived`` variables (as :func:`derived_variables` gives them) beside the model's."""
    dims = spatial_dims(cube)
    sizes = {d: cube.sizes[d] for d in dims}
    chunks = spatial_chunks(cube)
    shape = tuple(sizes.values())
    chunk_shape = tuple(chunks[d] for d in dims)
    data_vars: dict[str, tuple] = {}
    coords: dict[str, tuple] = {}
    store_chunks: dict[str, tuple[int, ...]] = {}  # Zarr chunks per variable (the dask arrays are one chunk)
    for name, extra, vattrs, vcoords in output_variables(manifest) + list(derived or []):
        extra_shape = tuple(len(vcoords[e]) for e in extra)
        data_vars[name] = (dims + tuple(extra), lazy_full(shape + extra_shape, np.float32, np.nan), vattrs)
        store_chunks[name] = chunk_shape + extra_shape
        for e in extra:
            coords.setdefault(e, (e, np.asarray(vcoords[e], np.float64)))
    data_vars["flag"] = (dims, lazy_full(shape, FLAG_DTYPE, 0), flag_attrs())
    data_vars["snr"] = (
        dims,
        lazy_full(shape, np.float32, np.nan),
        {"units": "1", "long_name": "median S/N per Angstrom over the model's range"},
    )
    store_chunks["flag"] = store_chunks["snr"] = chunk_shape
    coords.update(sky_coordinates(cube, dims))
    ds = xr.Dataset(data_vars, coords=coords, attrs={**sky_attrs(cube), **dict(attrs)})
    for name, chunk in store_chunks.items():
        ds[name].encoding["chunks"] = chunk
    for d in dims:
        if d in cube.coords:
            ds = ds.assign_coords({d: cube[d].values})
    return with_region_arrays(ds, sizes, chunks)
