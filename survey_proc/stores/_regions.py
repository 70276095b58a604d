"""Stores filled region by region, resumable and verified: the one way survey-proc writes a Zarr store.

A *region* is a block of whole chunks along a store's region dims (the spatial dims ``y, x`` or
``object``; a region may span several chunks). Beside its data, the store holds three small
bookkeeping arrays with one element per region, over dims ``region_<dim>``:

- ``region_done`` (uint8): 1 once the region's data are written and read back intact;
- ``region_spectra`` (int32): how many positions (spectra, pixels, objects) the region wrote;
- ``region_checksum`` (uint32): the CRC-32 of the region's arrays as written (:func:`region_checksum`).

and the attributes ``survey_proc_store`` (the store's kind: the marker that makes it survey-proc's
own, :mod:`._output`) and ``run_signature``, the identity of what fills it (inputs and options,
hashed by :func:`run_signature`). The lifecycle, the same for every store:

1. **template** (xarray-beam style): an ``xr.Dataset`` of lazy variables (:func:`lazy_full`:
   one dask chunk each, never computed) with ``encoding["chunks"]`` giving the Zarr chunks, plus
   the bookkeeping arrays (:func:`with_region_arrays`). Variables that are cheap and small
   (coordinates, per-object tables) can be plain NumPy: they are written with the metadata.
2. **create or resume** (:func:`create_or_resume`): the output policy first (only survey-proc's
   own stores are replaced, never an input: :func:`~._output.check_output`) and a lock on the
   path (:mod:`._lock`; :func:`release_store` lets go); then the template's metadata
   (``to_zarr(compute=False)``), marker first and signature last, unless the store already holds
   the same signature, in which case the run resumes; a store of another run is refused (unless
   ``overwrite``); a store whose setup was cut short (no signature, arrays missing) is set up again.
3. **the regions still to do** (:func:`pending_regions`), each computed anywhere (a loop, threads, a
   Dask client: the caller decides) and written by :func:`commit_region`: its arrays and
   bookkeeping first (every chunk stored, even one equal to the fill value), then read back and
   checked against their CRC-32, the ``region_done`` marker last. Each chunk write is atomic (Zarr
   writes a temporary ``*.partial`` file and renames it), so a writer killed at any point leaves
   its region unmarked, to be redone; never a region marked but incomplete. A task finding its
   region marked (:func:`is_done`) need not write it again.
4. **verify** (:func:`verify_regions`): every region marked, with the expected count and the
   recorded CRC-32; regions the caller did not write in this run (resumed ones) are re-read a strip
   at a time, on a Dask client's workers when one is given. Then :func:`remove_partial_writes`
   clears the temporaries of writes cut short, and the caller consolidates the metadata.

The engine follows these steps for its maps (in place, resumable by signature). Whole stores
(mock, ingest, synthetic photometry, binning) follow them inside
:func:`~._output.staged_output`, written beside the output and renamed into place once complete:
:func:`~._fill.write_store` is that recipe, given a template, the regions and ``compute``::

    regions = make_regions({"y": ny, "x": nx}, {"y": 32, "x": 32})
    template = with_region_arrays(template, {"y": ny, "x": nx}, {"y": 32, "x": 32})
    write_store(out, template, regions, compute,    # compute(region) -> name -> values at region.block
                signature=run_signature({"input": src, "options": opts}), what="cube",
                names=["flux", "var", "mask"], inputs=[src])

and, step by step, what it does (a writer whose regions cannot be computed one at a time, as
binning's, calls these pieces itself)::

    with staged_output(out, inputs=[src], what="cube") as staging:
        resumed = begin_store(staging, template, signature, "cube")      # create_or_resume
        written = {}
        for region in (pending_regions(staging, regions) if resumed else regions):
            written[region.key] = commit_region(staging, region, compute(region))
        finish_store(staging, regions, names, written)  # verify, clear temporaries, fingerprint, consolidate

Region blocks must be unions of the store's chunks (regions never share a chunk): then writes of
different regions, from different processes, never touch the same chunk.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.api.asynchronous as zarr_async
from zarr.core.sync import sync as zarr_sync

from survey_proc.errors import CubeError, SurveyProcError
from survey_proc.stores._lock import acquire as acquire_lock
from survey_proc.stores._lock import release as release_lock
from survey_proc.stores._output import STORE_MARKER, check_output, store_attrs

log = logging.getLogger(__name__)

#: the bookkeeping arrays: 1 where a region is complete; what it wrote; the CRC-32 of its arrays
REGION_DONE, REGION_COUNT, REGION_CHECKSUM = "region_done", "region_spectra", "region_checksum"
REGION_ARRAYS = (REGION_DONE, REGION_COUNT, REGION_CHECKSUM)
#: the store attribute holding the identity of what fills it
SIGNATURE_ATTR = "run_signature"


@dataclass(frozen=True)
class Region:
    """One task's share of a store: a block of whole chunks along the region dims."""

    index: tuple[int, ...]  #: position in the region grid
    slices: tuple[tuple[str, int, int], ...]  #: (dim, start, stop) per region dim

    def selection(self) -> dict[str, slice]:
        return {d: slice(a, b) for d, a, b in self.slices}

    @property
    def block(self) -> tuple[slice, ...]:
        """The region's slices, in the order of its dims (the leading dims of its arrays)."""
        return tuple(slice(a, b) for _, a, b in self.slices)

    @property
    def marker(self) -> tuple[slice, ...]:
        """The region's element of the bookkeeping arrays."""
        return tuple(slice(i, i + 1) for i in self.index)

    @property
    def size(self) -> int:
        return int(np.prod([b - a for _, a, b in self.slices]))

    @property
    def key(self) -> str:
        return "region-" + "-".join(str(i) for i in self.index)


def make_regions(sizes: Mapping[str, int], chunks: Mapping[str, int]) -> list[Region]:
    """Regions covering ``sizes`` in blocks of ``chunks`` (row-major order)."""
    dims = list(sizes)
    ranges = [range(0, sizes[d], chunks[d]) for d in dims]
    regions = []
    for starts in itertools.product(*ranges):
        index = tuple(s // chunks[d] for s, d in zip(starts, dims))
        slices = tuple((d, s, min(s + chunks[d], sizes[d])) for d, s in zip(dims, starts))
        regions.append(Region(index, slices))
    return regions


def region_grid_shape(sizes: Mapping[str, int], chunks: Mapping[str, int]) -> tuple[int, ...]:
    """Regions along each dim of ``sizes`` in blocks of ``chunks``."""
    return tuple(-(-sizes[d] // chunks[d]) for d in sizes)


def lazy_full(shape: tuple[int, ...], dtype, fill) -> da.Array:
    """A lazy array of ``fill`` in one dask chunk (a template's variable: never computed)."""
    return da.full(shape, fill, dtype=dtype, chunks=-1)


def with_region_arrays(
    template: xr.Dataset, sizes: Mapping[str, int], chunks: Mapping[str, int], names: Sequence[str] | None = None
) -> xr.Dataset:
    """``template`` with the bookkeeping arrays of the regions of ``chunks`` over ``sizes`` (dims
    ``region_<dim>``, one element a Zarr chunk so that regions write alone).

    ``region_done`` records the region layout (attrs ``region_sizes``, ``region_chunks``) and, when
    given, the ``names`` of the arrays each region writes (``region_arrays``), so that the regions
    can be checked again from the store alone (:func:`recorded_regions`).
    """
    grid = region_grid_shape(sizes, chunks)
    rdims = tuple(f"region_{d}" for d in sizes)
    variables = {
        REGION_DONE: (np.uint8, "1 where the region's outputs are complete"),
        REGION_COUNT: (np.int32, "spectra written by the region"),
        REGION_CHECKSUM: (np.uint32, "CRC-32 of the region's outputs as written"),
    }
    ds = template.assign(
        {name: (rdims, lazy_full(grid, dtype, 0), {"long_name": what}) for name, (dtype, what) in variables.items()}
    )
    ds[REGION_DONE].attrs.update(region_sizes=dict(sizes), region_chunks=dict(chunks))
    if names is not None:
        ds[REGION_DONE].attrs["region_arrays"] = list(names)
    for name in variables:
        ds[name].encoding["chunks"] = (1,) * len(grid)
    return ds


def recorded_regions(group: zarr.Group) -> tuple[list[Region], list[str]] | None:
    """The regions of an (open) store and the arrays each wrote, from what :func:`with_region_arrays`
    recorded; None where the store has no such record, or one that does not fit its arrays (a
    store derived from another with xarray keeps the other's bookkeeping)."""
    if REGION_DONE not in group:
        return None
    attrs = group[REGION_DONE].attrs
    sizes, chunks, names = attrs.get("region_sizes"), attrs.get("region_chunks"), attrs.get("region_arrays")
    if not (sizes and chunks and names) or not all(n in group for n in names):
        return None
    leading = tuple(group[names[0]].shape[: len(sizes)])
    if leading != tuple(sizes.values()) or region_grid_shape(sizes, chunks) != group[REGION_DONE].shape:
        return None
    return make_regions(sizes, chunks), list(names)


def run_signature(identity: Mapping) -> str:
    """A short hash of ``identity`` (JSON-able, values turned to str where not): what fills a store."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def create_or_resume(
    path: str | os.PathLike,
    template: xr.Dataset,
    signature: str,
    overwrite: bool = False,
    what: str = "maps",
    identity: str = "cube, model or options",
    *,
    inputs: Sequence[str | os.PathLike] = (),
    groups: Mapping[str, xr.Dataset] | None = None,
    lock: bool = True,
) -> bool:
    """Set the store up from the template (metadata only) unless ``path`` holds this very run; True if resuming.

    The output policy of :mod:`._output` holds first: ``path`` must not be, lie in or hold one of
    ``inputs``, and an existing ``path`` must be a survey-proc store (refused otherwise, even with
    ``overwrite``). With ``lock``, ``path`` is locked for this process (:func:`release_store` lets
    go). A store of another run (another signature) is refused unless ``overwrite``; ``what``
    names the store's kind and ``identity`` what its signature covers, in the errors.

    Setup is recoverable: the marker attribute is written first, then the arrays, the ``groups``
    (name -> Dataset, e.g. a mock's ``truth``) and, last, the signature. A store whose setup was cut
    short (no signature, or arrays missing) is set up again. The template's ``encoding["chunks"]``
    set the Zarr chunks.
    """
    out = Path(path)
    check_output(out, inputs, what=what)
    if lock:
        acquire_lock(out)
    try:
        recorded = _setup_state(out, template, groups)
        if recorded not in (None, _CUT_SHORT) and not overwrite:
            if recorded == signature:
                return True
            raise CubeError(_other_run(out, recorded, signature, what, identity))
        if recorded == _CUT_SHORT:
            log.warning(f"the setup of {out} was cut short; setting it up again")
        _write_setup(out, template, signature, what, groups or {})
    except BaseException:
        if lock:
            release_lock(out)
        raise
    return False


def release_store(path: str | os.PathLike) -> None:
    """Let go of the lock :func:`create_or_resume` took on ``path``."""
    release_lock(path)


def stored_signature(path: str | os.PathLike) -> str | None:
    """The signature a store records (None: no store, or its setup is not complete)."""
    attrs = store_attrs(path)
    return None if attrs is None else attrs.get(SIGNATURE_ATTR)


#: :func:`_setup_state` of a store whose setup did not complete
_CUT_SHORT = "(setup cut short)"


def _setup_state(out: Path, template: xr.Dataset, groups: Mapping[str, xr.Dataset] | None) -> str | None:
    """The signature of a complete store at ``out``; None if there is none; ``_CUT_SHORT`` if its
    setup did not complete (no signature, or some of the template's arrays or groups missing)."""
    attrs = store_attrs(out)
    if attrs is None:
        return None
    if SIGNATURE_ATTR not in attrs:
        return _CUT_SHORT if STORE_MARKER in attrs else None
    grp = zarr.open_group(str(out), mode="r", use_consolidated=False)  # what is there, not what was
    members = set(grp.array_keys()) | set(grp.group_keys())
    wanted = {str(name) for name in template.variables} | set(groups or {})
    return attrs[SIGNATURE_ATTR] if wanted <= members else _CUT_SHORT


def _other_run(out: Path, recorded: str, signature: str, what: str, identity: str) -> str:
    kind = (store_attrs(out) or {}).get(STORE_MARKER)
    if kind and kind != what:
        return (
            f"{out} holds a survey-proc {kind} store, not {what}; pass --overwrite to replace it or "
            "--out to write elsewhere"
        )
    return (
        f"{out} holds {what} of another run (different {identity}: signature "
        f"{recorded} vs {signature}); pass --overwrite to replace it "
        "or --out to write elsewhere"
    )


def _write_setup(out: Path, template: xr.Dataset, signature: str, what: str, groups: Mapping[str, xr.Dataset]) -> None:
    """Marker first (a setup cut short is recognised), then arrays and groups, the signature last."""
    attrs = {**template.attrs, STORE_MARKER: what}
    attrs.pop(SIGNATURE_ATTR, None)
    zarr.open_group(str(out), mode="w", zarr_format=3, attributes=attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr notes that string arrays are not yet in the v3 spec
        template.assign_attrs(attrs).to_zarr(out, mode="a", compute=False, zarr_format=3, consolidated=False)
        for name, ds in groups.items():
            ds.to_zarr(out, group=name, mode="w", zarr_format=3, consolidated=False)
    zarr.open_group(str(out), mode="r+").attrs[SIGNATURE_ATTR] = signature  # last: setup complete


def pending_regions(path: str | os.PathLike, regions: list[Region]) -> list[Region]:
    """The regions not marked done in the store."""
    done = np.asarray(zarr.open_group(str(path), mode="r")[REGION_DONE][...])
    return [r for r in regions if not done[r.index]]


def is_done(group: zarr.Group, region: Region) -> bool:
    """Whether the region is marked done in the (open) store."""
    return bool(group[REGION_DONE][region.marker].item())


def region_record(group: zarr.Group, region: Region) -> tuple[int, int]:
    """(count, CRC-32) recorded for a region of the (open) store."""
    marker = region.marker
    return int(group[REGION_COUNT][marker].item()), int(group[REGION_CHECKSUM][marker].item())


def region_checksum(arrays: Mapping[str, np.ndarray]) -> int:
    """CRC-32 over the arrays' bytes in name order (verifies a region's outputs as stored)."""
    crc = 0
    for name in sorted(arrays):
        crc = zlib.crc32(np.ascontiguousarray(arrays[name]).tobytes(), crc)
    return crc


def read_arrays(path: str | os.PathLike, names: list[str], index: tuple[slice, ...]) -> dict[str, np.ndarray | None]:
    """The ``index`` block of each named array of a store, read concurrently (None if absent)."""
    return zarr_sync(_read_arrays(str(path), names, index))


async def _read_arrays(path: str, names: list[str], index: tuple[slice, ...]) -> dict[str, np.ndarray | None]:
    grp = await zarr_async.open_group(store=path, mode="r", zarr_format=3)
    present = [name for name in names if await grp.contains(name)]
    arrays = await asyncio.gather(*[grp.getitem(name) for name in present])
    values = await asyncio.gather(*[a.getitem(index) for a in arrays])
    return {name: np.asarray(values[present.index(name)]) if name in present else None for name in names}


class RegionWriteError(SurveyProcError):
    """A region's arrays read back from the store differ from those written."""


def commit_region(
    path: str | os.PathLike, region: Region, arrays: Mapping[str, np.ndarray], checksum: int | None = None
) -> int:
    """Write a region's arrays (name -> values at ``region.block``) with its count and CRC-32,
    concurrently; read the arrays back and check their CRC-32; then mark the region done, last.

    ``checksum``: the CRC-32 of ``arrays`` (:func:`region_checksum`) where the caller has it.
    Returns it. Raises :class:`RegionWriteError`, the region left unmarked, when what the store
    returns is not what was written.
    """
    crc = region_checksum(arrays) if checksum is None else int(checksum)
    zarr_sync(_commit_region(str(path), region, arrays, crc))
    return crc


async def _commit_region(path: str, region: Region, arrays: Mapping[str, np.ndarray], checksum: int) -> None:
    grp = await zarr_async.open_group(store=path, mode="r+", zarr_format=3)
    names = [*list(arrays), *REGION_ARRAYS]
    opened = await asyncio.gather(*[grp.getitem(name) for name in names])
    # every chunk stored, even one equal to the fill value: a missing chunk then means damage
    handles = {name: a.with_config({"write_empty_chunks": True}) for name, a in zip(names, opened)}
    index, marker = region.block, region.marker
    one = (1,) * len(marker)
    await asyncio.gather(
        *[handles[name].setitem(index, values) for name, values in arrays.items()],
        handles[REGION_COUNT].setitem(marker, np.full(one, region.size, np.int32)),
        handles[REGION_CHECKSUM].setitem(marker, np.full(one, checksum, np.uint32)),
    )
    stored = await asyncio.gather(*[handles[name].getitem(index) for name in arrays])
    if region_checksum({name: np.asarray(v) for name, v in zip(arrays, stored)}) != checksum:
        where = ", ".join(f"{s.start}:{s.stop}" for s in index)
        raise RegionWriteError(
            f"{path}: the outputs read back at [{where}] differ from those written "
            "(CRC-32); the region is left unmarked"
        )
    await handles[REGION_DONE].setitem(marker, np.ones(one, np.uint8))  # last: marks completion


def verify_regions(
    path: str | os.PathLike,
    regions: list[Region],
    names: list[str],
    client=None,
    written: Mapping[str, int] | None = None,
) -> list[str]:
    """Problems found re-reading the store: regions unmarked, miscounted or with a wrong CRC-32.

    ``names``: the arrays each region wrote. ``written``: region key -> CRC-32 of the regions this
    run wrote, which :func:`commit_region` read back and checked before marking them; their
    recorded CRC-32 must match it and they are not read again. The other regions' arrays are read
    a strip of regions at a time (one read per array and strip, not per region), on the workers
    of a Dask ``client`` when given, else here.
    """
    out = str(path)
    problems, reread = _check_records(out, regions, written or {})
    strips = list(_strips(reread))
    if client is not None and len(strips) > 1 and client.scheduler_info().get("workers"):
        # ahead of queued tasks; with no worker left, this process reads them itself
        futures = client.map(_verify_strip, strips, out=out, names=names, pure=False, priority=10)
        found = client.gather(futures)
    else:
        found = [_verify_strip(strip, out, names) for strip in strips]
    order = {r.key: i for i, r in enumerate(regions)}
    return sorted(problems + [p for f in found for p in f], key=lambda p: order[p.split(":")[0]])


def _check_records(
    out: str, regions: list[Region], written: Mapping[str, int]
) -> tuple[list[str], list[tuple[Region, int]]]:
    """(problems of the bookkeeping, (region, recorded CRC-32) of the regions to re-read)."""
    grp = zarr.open_group(out, mode="r")
    done, counts, sums = (np.asarray(grp[name][...]) for name in REGION_ARRAYS)
    problems, reread = [], []
    for region in regions:
        i = region.index
        if not done[i]:
            problems.append(f"{region.key}: not marked done")
        elif counts[i] != region.size:
            problems.append(f"{region.key}: {counts[i]} spectra recorded, {region.size} expected")
        elif region.key not in written:
            reread.append((region, int(sums[i])))
        elif int(sums[i]) != int(written[region.key]):
            problems.append(f"{region.key}: recorded CRC-32 differs from the one its task wrote and read back")
    return problems, reread


def _strips(regions: list[tuple[Region, int]], max_items: int = 1 << 16) -> Iterator[list[tuple[Region, int]]]:
    """Regions in groups read as one block: those sharing every slice but the last (a strip of a
    cube's rows; a run of a catalogue's objects), at most ``max_items`` positions a group."""
    groups: dict[tuple, list[tuple[Region, int]]] = {}
    for entry in regions:
        groups.setdefault(entry[0].slices[:-1], []).append(entry)
    for members in groups.values():
        members.sort(key=lambda e: e[0].slices[-1][1])
        batch: list[tuple[Region, int]] = []
        for entry in members:
            if batch and sum(r.size for r, _ in batch) + entry[0].size > max_items:
                yield batch
                batch = []
            batch.append(entry)
        yield batch


def _verify_strip(strip: list[tuple[Region, int]], out: str, names: list[str]) -> list[str]:
    """Problems of a strip of (region, recorded CRC-32): each region's CRC-32 recomputed over its
    part of one read of the strip (the same bytes as reading the region alone)."""
    first = strip[0][0]
    lead = first.block[:-1]
    lo, hi = first.slices[-1][1], max(r.slices[-1][2] for r, _ in strip)
    arrays = read_arrays(out, names, (*lead, slice(lo, hi)))
    missing = [name for name, values in arrays.items() if values is None]
    if missing:
        raise KeyError(f"{out} lacks {', '.join(missing)}")
    problems = []
    for region, crc in strip:
        part = (slice(None),) * len(lead) + (slice(region.slices[-1][1] - lo, region.slices[-1][2] - lo),)
        if region_checksum({k: v[part] for k, v in arrays.items()}) != crc:
            problems.append(f"{region.key}: CRC-32 of the stored outputs differs from the one written")
    return problems


def remove_partial_writes(path: str | os.PathLike) -> int:
    """Delete the ``<key>.<uuid>.partial`` temporaries that a write cut short (a killed worker) left in
    a store; returns how many. Call it only once every region is verified: they are never read."""
    removed = 0
    for partial in Path(path).rglob("*.partial"):
        try:
            partial.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed
