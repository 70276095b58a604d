"""Maps of a binned run back on the pixel grid: every spaxel takes the values of its bin.

The maps store of a run over a binned catalogue holds per-bin values (dims ``object``); this
writes its group ``pixels`` with the same variables on ``(y, x)`` (plus any extra dims), the
``bin_id`` map, and ``flag`` = the bin's flag, or ``NOT_BINNED`` for spaxels in no bin (their
values are NaN). Written one spatial chunk at a time.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
import zarr

from survey_proc.binning._voronoi import PIXEL_MAP, chunk_blocks
from survey_proc.stores import PIXEL_MAPS_GROUP, Flag, consolidate

PIXEL_GROUP = PIXEL_MAPS_GROUP


def _pixel_template(
    maps: xr.Dataset, names: list[str], bin_id: np.ndarray, chunks: tuple[int, int], coords: dict
) -> xr.Dataset:
    import dask.array as da

    ny, nx = bin_id.shape
    data_vars = {}
    for name in names:
        var = maps[name]
        extra = var.dims[1:]
        shape = (ny, nx, *tuple(maps.sizes[d] for d in extra))
        fill = 0 if np.issubdtype(var.dtype, np.integer) else np.nan
        arr = da.full(shape, fill, dtype=var.dtype, chunks=chunks + shape[2:])
        data_vars[name] = (("y", "x", *extra), arr, dict(var.attrs))
    data_vars[PIXEL_MAP] = (("y", "x"), bin_id, {"units": "1", "long_name": "bin of each spaxel (-1: in no bin)"})
    extra_coords = {d: maps[d] for n in names for d in maps[n].dims[1:] if d in maps.coords}
    ds = xr.Dataset(
        data_vars,
        coords={**extra_coords, **coords},
        attrs={"title": "survey-proc maps on the pixel grid (each spaxel takes its bin's values)"},
    )
    return ds


def write_pixel_maps(catalogue: str, maps_path: str, names: list[str]) -> str:
    """Write group ``pixels`` of ``maps_path`` from per-bin maps and the catalogue's ``bin_id``; returns its name."""
    cat = zarr.open_group(catalogue, mode="r")
    bin_id = np.asarray(cat[PIXEL_MAP][...], np.int64)
    cy, cx = (int(c) for c in cat.attrs.get("pixel_chunks", bin_id.shape))
    coords = {}
    for c in ("pixel_ra", "pixel_dec"):
        if c in cat:
            attrs = {k: v for k, v in cat[c].attrs.items() if k != "_FillValue"}  # zarr's encoding, not an attribute
            coords[c[len("pixel_") :]] = (("y", "x"), np.asarray(cat[c][...]), attrs)
    maps = xr.open_zarr(maps_path, consolidated=False)
    template = _pixel_template(maps, names, bin_id.astype(np.int32), (cy, cx), coords)
    enc = {n: {"chunks": tuple(int(max(c)) for c in template[n].chunks)} for n in names}
    template.to_zarr(
        maps_path, group=PIXEL_GROUP, mode="w", compute=False, zarr_format=3, consolidated=False, encoding=enc
    )
    src = zarr.open_group(maps_path, mode="r")
    dst = zarr.open_group(maps_path, mode="r+", path=PIXEL_GROUP)
    for y0, y1, x0, x1 in chunk_blocks(*bin_id.shape, cy, cx):
        ids = bin_id[y0:y1, x0:x1]
        inside = ids >= 0
        wanted = np.unique(ids[inside])
        pos = np.searchsorted(wanted, np.where(inside, ids, wanted[0] if wanted.size else 0))
        for name in names:
            arr = src[name]
            fill = 0 if np.issubdtype(arr.dtype, np.integer) else np.nan
            block = np.full(ids.shape + arr.shape[1:], fill, dtype=arr.dtype)
            if wanted.size:
                values = np.asarray(arr.get_orthogonal_selection((wanted,) + (slice(None),) * (arr.ndim - 1)))
                block[inside] = values[pos[inside]]
            if name == "flag":
                block[~inside] = np.uint8(Flag.NOT_BINNED)
            dst[name][y0:y1, x0:x1] = block
    consolidate(maps_path)
    return PIXEL_GROUP
