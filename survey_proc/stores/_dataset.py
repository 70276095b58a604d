"""An in-memory (or lazy) xarray Dataset written as a cube or catalogue store, through the one write path.

The Python API (:func:`survey_proc.run`) takes a Dataset as well as a path; the engine's workers
read a store, so the Dataset is first checked against the cube/catalogue schema
(:func:`~._cube.validate_spectral_store`) and written by :func:`~._fill.write_store` (region by
region, verified, staged and renamed into place, resumable: the signature is dask's token of the
Dataset). ``flux``/``var`` are stored as float32, ``mask`` as bool; the spatial dims are chunked
``chunk`` (cubes) or ``objects`` (catalogues) at a time, the spectral axis whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import xarray as xr

from survey_proc.stores._cube import SPECTRAL_DIM, cube_compressors, spatial_dims, validate_spectral_store
from survey_proc.stores._fill import StoreWrite, write_store
from survey_proc.stores._regions import Region, lazy_full, make_regions, run_signature, with_region_arrays

_DATA = {"flux": np.float32, "var": np.float32, "mask": np.bool_}


def _template(ds: xr.Dataset, blocks: Mapping[str, int]) -> xr.Dataset:
    """``ds`` with lazy, empty data arrays carrying their Zarr chunks; the rest as values."""
    template = ds.drop_vars([v for v in ds.data_vars if str(v).startswith("region_")])
    for name, dtype in _DATA.items():
        var = ds[name]
        chunks = tuple(blocks.get(d, n) for d, n in zip(var.dims, var.shape))
        template[name] = xr.Variable(var.dims, lazy_full(var.shape, dtype, 0), dict(var.attrs))
        template[name].encoding = {"chunks": chunks, "compressors": cube_compressors()}
    template = template.assign_coords({c: template[c].compute() for c in template.coords if c not in template.dims})
    for name in [v for v in template.data_vars if v not in _DATA]:
        template[name] = template[name].compute()
    for name in template.variables:
        if name not in _DATA:
            template.variables[name].encoding = {}  # a source store's chunks and codecs do not apply here
    return template


def write_dataset(ds: xr.Dataset, out: str | os.PathLike, *, chunk: int = 32, objects: int = 256) -> StoreWrite:
    """Write a cube or catalogue Dataset (dims ``y, x, wave`` or ``object, wave``) as a store at ``out``;
    CubeError listing what breaks the schema."""
    from dask.base import tokenize

    validate_spectral_store(ds, "the Dataset", check_data=False, require_redshift=False)
    dims = spatial_dims(ds)
    sizes = {d: int(ds.sizes[d]) for d in dims}
    blocks = {d: min(objects if d == "object" else chunk, n) for d, n in sizes.items()}
    blocks[SPECTRAL_DIM] = int(ds.sizes[SPECTRAL_DIM])

    def compute(region: Region) -> dict[str, np.ndarray]:
        part = ds[list(_DATA)].isel(region.selection())
        return {n: np.ascontiguousarray(np.asarray(part[n].values, dtype)) for n, dtype in _DATA.items()}

    what = "catalogue" if dims == ("object",) else "cube"
    return write_store(
        out,
        with_region_arrays(_template(ds, blocks), sizes, {d: blocks[d] for d in dims}),
        make_regions(sizes, {d: blocks[d] for d in dims}),
        compute,
        signature=run_signature({"dataset": tokenize(ds), "chunk": chunk, "objects": objects}),
        what=what,
        names=list(_DATA),
        desc="write",
    )
