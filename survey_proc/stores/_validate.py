"""``survey-proc validate``: any store survey-proc reads or writes, checked against its kind's schema.

The kind is read from the content: a maps store (``flag``, no ``flux``), a photometric store
(``flux`` over ``band``), a cube or a spectra catalogue (``flux`` over ``wave``). Each is checked
in its metadata and on disk (regions finished, chunks present), every problem listed at once
(:class:`~survey_proc.errors.CubeError`); a valid store gets a one-line description.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import xarray as xr
import zarr

from survey_proc.errors import CubeError
from survey_proc.stores._cube import check_stored_data, open_zarr_store, validate_spectral_store
from survey_proc.stores._integrity import missing_chunks
from survey_proc.stores._maps import map_variables
from survey_proc.stores._photometry import BAND_DIM, validate_photometry_store
from survey_proc.stores._regions import REGION_DONE


@dataclass(frozen=True)
class ValidStore:
    """What :func:`validate_store` found: the store's kind and a line describing it."""

    kind: str  #: cube | catalogue | photometry | maps
    dims: dict[str, int]
    description: str


def store_kind(ds: xr.Dataset) -> str | None:
    """``cube``, ``catalogue``, ``photometry`` or ``maps`` by what the store holds; None if none of them."""
    if "flux" in ds:
        if BAND_DIM in ds["flux"].dims:
            return "photometry"
        return "catalogue" if "object" in ds["flux"].dims else "cube"
    return "maps" if "flag" in ds else None


def validate_store(path: str | os.PathLike) -> ValidStore:
    """Check the store at ``path`` against the schema of its kind; CubeError listing every problem."""
    ds = open_zarr_store(path)
    kind = store_kind(ds)
    if kind is None:
        found = ", ".join(sorted(map(str, ds.data_vars))) or "none"
        raise CubeError(
            f"{path} is no survey-proc store of a kind it knows: a cube or catalogue (flux over wave), "
            f"photometry (flux over band) or maps (flag and the properties); variables found: {found}"
        )
    if kind == "maps":
        _check_maps(ds, path)
        return ValidStore(kind, dict(ds["flag"].sizes), _describe_maps(ds))
    if kind == "photometry":
        validate_photometry_store(ds, str(path), require_redshift=False)
    else:
        validate_spectral_store(ds, str(path), require_redshift=False)
    check_stored_data(path)
    return ValidStore(kind, dict(ds["flux"].sizes), _describe_input(ds, kind))


def _describe_input(ds: xr.Dataset, kind: str) -> str:
    z = ds.attrs.get("redshift", "per object" if "redshift" in ds else "not set")
    if kind == "photometry":
        return f"{ds.sizes[BAND_DIM]} bands ({ds.attrs.get('filter_set', 'filters')}), redshift {z}"
    wave = ds["wave"]
    return (
        f"wave {float(wave[0]):.1f}-{float(wave[-1]):.1f} A ({wave.attrs.get('frame')}, "
        f"{wave.attrs.get('medium')}), redshift {z}"
        + (f", ra/dec per {'object' if kind == 'catalogue' else 'spaxel'}" if "ra" in ds.coords else "")
    )


def _describe_maps(ds: xr.Dataset) -> str:
    properties, _ = map_variables(ds)
    sky = "ra/dec and the celestial WCS" if "wcs_header" in ds.attrs else ("ra/dec" if "ra" in ds.coords else "")
    return (
        f"maps of {', '.join(properties)} by {ds.attrs.get('model_id', 'an unknown model')}, "
        f"{ds.attrs.get('fitted', '?')} of {ds.attrs.get('spectra', '?')} fitted" + (f"; {sky}" if sky else "")
    )


def _check_maps(ds: xr.Dataset, path: str | os.PathLike) -> None:
    problems = _maps_metadata_problems(ds)
    if not problems:
        problems = _maps_data_problems(ds, path)
    if problems:
        lines = "\n  - ".join(problems)
        raise CubeError(f"{path} is not a valid maps store:\n  - {lines}")


def _maps_metadata_problems(ds: xr.Dataset) -> list[str]:
    problems = []
    flag = ds["flag"]
    dims = tuple(str(d) for d in flag.dims)
    if dims not in (("y", "x"), ("object",)):
        problems.append(f"variable 'flag' has dims {flag.dims}, expected ('y', 'x') or ('object',)")
    if not np.issubdtype(flag.dtype, np.integer) or "flag_meanings" not in flag.attrs:
        problems.append("variable 'flag' is not an integer bitmask with 'flag_masks' and 'flag_meanings'")
    properties, _ = map_variables(ds)
    if not properties:
        problems.append("no property maps (log_age, metallicity, ... over the pixels of 'flag')")
    for name in properties:
        if not ds[name].attrs.get("units"):
            problems.append(f"variable '{name}' has no 'units' attribute")
        for err in (f"{name}_err", f"{name}_sys_err"):
            if err in ds and ds[err].dims != ds[name].dims:
                problems.append(f"variable '{err}' has dims {ds[err].dims}, expected {ds[name].dims} like '{name}'")
    for key in ("model_id", "software"):
        if not ds.attrs.get(key):
            problems.append(f"attribute '{key}' (provenance) is missing")
    if ds.attrs.get("status") != "complete":
        problems.append(
            f"the run did not finish (status {ds.attrs.get('status', 'unknown')!r}): run the same command again, "
            "it resumes"
        )
    return problems


def _maps_data_problems(ds: xr.Dataset, path: str | os.PathLike) -> list[str]:
    problems = []
    if REGION_DONE in ds:
        done = np.asarray(ds[REGION_DONE].values)
        if not done.all():
            problems.append(f"{int((done == 0).sum())} of {done.size} regions were never finished: rerun to resume")
    grp = zarr.open_group(str(path), mode="r", use_consolidated=False)
    properties, _ = map_variables(ds)
    for name in [*properties, "flag"]:
        lost = missing_chunks(grp[name])
        if lost:
            problems.append(f"variable '{name}': {len(lost)} of {grp[name].nchunks} chunks are missing from the store")
    for c in ("ra", "dec"):
        if c in ds.coords and not np.isfinite(np.asarray(ds[c].values, np.float64)).any():
            problems.append(
                f"coordinate '{c}' is NaN everywhere (maps written before survey-proc kept the cube's sky "
                "coordinates): run again with --overwrite"
            )
    return problems
