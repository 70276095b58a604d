"""What a store's data look like on disk: chunks present, regions complete, a fingerprint of the content.

Metadata say what a store should hold; these check that it does, reading as little as they can:

- :func:`data_problems`: in a store filled region by region (the bookkeeping of
  :func:`~._regions.with_region_arrays` fits its arrays), every region must be marked done, and a
  region with a chunk missing from the store must still give the CRC-32 recorded when it was
  written (its writers store every chunk, so there a missing chunk is damage; a faithful copy made
  with another tool may leave out chunks equal to the fill value, and then the CRC-32 still holds).
  In other stores (another tool's, or survey-proc's from before the bookkeeping), which may leave
  out chunks that would be all fill value, a chunk stored for ``flux`` but not for ``var`` (or the
  reverse) is what gives a deleted chunk away.
- :func:`content_fingerprint`: a short hash of the data, for run signatures, so that a store
  rewritten with other data at the same path is recognised: over the fingerprint its writer
  recorded (:data:`FINGERPRINT_ATTR`, a hash over the regions' CRC-32), the key and size of every
  chunk of the data arrays, and the bytes of a few of them.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Sequence

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync as zarr_sync

from survey_proc.stores._regions import Region, read_arrays, recorded_regions, region_checksum

#: store attribute holding the fingerprint of its content, written once the store is complete
FINGERPRINT_ATTR = "content_fingerprint"
#: the data arrays of input stores (cubes, catalogues, photometry)
DATA_ARRAYS = ("flux", "var", "mask")
_REGION_DONE, _REGION_CHECKSUM = "region_done", "region_checksum"


def stored_chunks(arr: zarr.Array) -> dict[tuple[int, ...], int]:
    """Grid position -> size in bytes of every chunk of ``arr`` present in its store."""
    prefix = f"{arr.path}/" if arr.path else ""
    expected = {arr.metadata.encode_chunk_key(c): c for c in itertools.product(*(range(n) for n in arr.cdata_shape))}

    async def sizes() -> dict[tuple[int, ...], int]:
        found = {}
        async for key in arr.store.list_prefix(prefix):
            coords = expected.get(key[len(prefix) :])
            if coords is not None:
                found[coords] = int(await arr.store.getsize(key))
        return found

    return zarr_sync(sizes())


def missing_chunks(arr: zarr.Array) -> list[tuple[int, ...]]:
    """Grid positions of the chunks of ``arr`` absent from its store (they would read as fill value)."""
    present = stored_chunks(arr)
    return [c for c in itertools.product(*(range(n) for n in arr.cdata_shape)) if c not in present]


def data_problems(path: str | os.PathLike, names: Sequence[str] = DATA_ARRAYS) -> list[str]:
    """Problems with the data of an input store on disk: regions not marked done, chunks missing."""
    grp = zarr.open_group(str(path), mode="r", use_consolidated=False)
    recorded = recorded_regions(grp)
    if recorded is None:
        return _unpaired_chunks(grp, [n for n in names if n in grp])
    regions, written = recorded
    done = np.asarray(grp[_REGION_DONE][...])
    problems = []
    if not done.all():
        problems.append(
            f"the store is incomplete: {int((done == 0).sum())} of {done.size} regions were never "
            "finished (the command that wrote it was cut short); run it again, it resumes"
        )
    missing = {n: missing_chunks(grp[n]) for n in written}
    damaged = _regions_changed(path, grp, regions, written, missing)
    for name, chunks in missing.items():
        lost = [c for c in chunks if _region_of(grp[name], c, regions) in damaged]
        if lost:
            problems.append(_missing(grp[name], name, lost))
    return problems


def _regions_changed(
    path, grp: zarr.Group, regions: list[Region], names: list[str], missing: dict[str, list[tuple[int, ...]]]
) -> set[str]:
    """Keys of the regions holding a missing chunk whose arrays no longer give their recorded CRC-32."""
    suspects = {_region_of(grp[n], c, regions) for n, chunks in missing.items() for c in chunks}
    sums = np.asarray(grp[_REGION_CHECKSUM][...])
    changed = set()
    for region in regions:
        if region.key in suspects and region_checksum(read_arrays(path, names, region.block)) != int(
            sums[region.index]
        ):
            changed.add(region.key)
    return changed


def _region_of(arr: zarr.Array, coords: tuple[int, ...], regions: list[Region]) -> str:
    """The key of the region holding chunk ``coords`` of ``arr`` (regions are unions of chunks)."""
    starts = [c * n for c, n in zip(coords, arr.chunks)]
    for region in regions:
        if all(a <= s < b for (_, a, b), s in zip(region.slices, starts)):
            return region.key
    return ""


def _unpaired_chunks(grp: zarr.Group, present: list[str]) -> list[str]:
    """Chunks stored for one of ``flux`` and ``var`` but not the other (stores without bookkeeping)."""
    stored = {n: set(stored_chunks(grp[n])) for n in present if n in ("flux", "var")}
    if len(stored) < 2 or stored["flux"] == stored["var"]:
        return []
    problems = []
    for name, other in (("flux", "var"), ("var", "flux")):
        lost = sorted(stored[other] - stored[name])
        if lost:
            problems.append(_missing(grp[name], name, lost, other))
    return problems


def _missing(arr: zarr.Array, name: str, chunks: list[tuple[int, ...]], other: str | None = None) -> str:
    """One problem naming the missing chunks of ``name`` (the first few by position)."""
    dims = arr.metadata.dimension_names or tuple(f"dim_{i}" for i in range(arr.ndim))
    size = arr.chunks

    def where(c: tuple[int, ...]) -> str:
        return ", ".join(
            f"{d} {i * n}:{min((i + 1) * n, s)}"
            for d, i, n, s in zip(dims, c, size, arr.shape)
            if arr.cdata_shape[dims.index(d)] > 1
        )

    shown = "; ".join(where(c) or "the whole array" for c in chunks[:3]) + (" ..." if len(chunks) > 3 else "")
    also = f" although '{other}' has them" if other else ""
    return (
        f"variable '{name}': {len(chunks)} of {arr.nchunks} chunks are missing from the store{also} "
        f"({shown}); they would read as {arr.fill_value}, so the store is damaged: write it again "
        "(survey-proc ingest / mock / bin), or restore it"
    )


def content_fingerprint(path: str | os.PathLike, names: Sequence[str] = DATA_ARRAYS) -> str:
    """A short hash of a store's data (see the module docstring for what it covers)."""
    grp = zarr.open_group(str(path), mode="r", use_consolidated=False)
    h = hashlib.sha256(str(grp.attrs.get(FINGERPRINT_ATTR, "")).encode())
    for name in [n for n in names if n in grp]:
        arr = grp[name]
        chunks = sorted(stored_chunks(arr).items())
        h.update(f"{name}{arr.shape}{arr.dtype}{chunks}".encode())
        for i in sorted({0, len(chunks) // 2, len(chunks) - 1}) if chunks else ():
            h.update(_chunk_bytes(arr, chunks[i][0]))
    return h.hexdigest()[:16]


def region_fingerprint(path: str | os.PathLike) -> str:
    """Hash over the CRC-32 of every region of a complete store filled region by region, and its
    one-dimensional arrays (coordinates, per-object tables): what its writer records as
    :data:`FINGERPRINT_ATTR`."""
    grp = zarr.open_group(str(path), mode="r", use_consolidated=False)
    h = hashlib.sha256(b"regions")
    h.update(np.ascontiguousarray(np.asarray(grp[_REGION_CHECKSUM][...], np.uint32)).tobytes())
    for name in sorted(grp.array_keys()):
        arr = grp[name]
        if arr.ndim == 1 and not name.startswith("region_") and arr.nbytes < 1 << 24:
            h.update(name.encode())
            h.update(np.ascontiguousarray(np.asarray(arr[...])).tobytes())
    return h.hexdigest()[:16]


def record_fingerprint(path: str | os.PathLike) -> str:
    """Compute the fingerprint of a complete store filled region by region and record it in its attributes."""
    value = region_fingerprint(path)
    zarr.open_group(str(path), mode="r+").attrs[FINGERPRINT_ATTR] = value
    return value


def _chunk_bytes(arr: zarr.Array, coords: tuple[int, ...]) -> bytes:
    """The stored (encoded) bytes of one chunk."""
    prefix = f"{arr.path}/" if arr.path else ""
    buf = zarr_sync(arr.store.get(prefix + arr.metadata.encode_chunk_key(coords), prototype=default_buffer_prototype()))
    return b"" if buf is None else buf.to_bytes()
