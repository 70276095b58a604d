"""Whole stores written region by region: the recipe of mock, ingest, synthetic photometry and binning.

:func:`write_store` is :mod:`._regions`' lifecycle (template -> create or resume -> commit each
region -> verify) inside :func:`~._output.staged_output` (the output policy, a lock, a hidden sibling
renamed into place when complete). A writer gives the template, its regions and ``compute(region)
-> {name: values}``; the regions are computed here (in threads) or as tasks on a Dask client, each
committed by whoever computed it. A rerun of a write cut short resumes: the sibling holds the same
signature, and only the regions not marked done are computed. The finished store records a
fingerprint of its content (:func:`~._integrity.record_fingerprint`) and its metadata are consolidated.

Writers whose regions cannot be computed one at a time (binning co-adds bins that span chunks) use
the same pieces themselves: :func:`staged_output`, :func:`create_or_resume`, :func:`commit_region`,
:func:`finish_store`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc import progress
from survey_proc.errors import SurveyProcError
from survey_proc.stores._cube import consolidate
from survey_proc.stores._integrity import record_fingerprint
from survey_proc.stores._output import staged_output
from survey_proc.stores._regions import (
    REGION_DONE,
    Region,
    commit_region,
    create_or_resume,
    pending_regions,
    remove_partial_writes,
    stored_signature,
    verify_regions,
)

log = logging.getLogger(__name__)

#: computes a region's arrays: name -> values at ``region.block``
Compute = Callable[[Region], Mapping[str, np.ndarray]]


class StoreVerifyError(SurveyProcError):
    """A store read back after its regions were written is not what was written."""


@dataclass(frozen=True)
class StoreWrite:
    """What :func:`write_store` did."""

    path: str
    regions: int  #: regions of the store
    resumed: int  #: regions found finished by an earlier, cut-short write (not computed again)
    fingerprint: str  #: of the content (recorded in the store's attributes)


def write_store(
    out: str | os.PathLike,
    template: xr.Dataset,
    regions: list[Region],
    compute: Compute,
    *,
    signature: str,
    what: str,
    names: Sequence[str],
    inputs: Sequence[str | os.PathLike] = (),
    replace: bool = True,
    groups: Mapping[str, xr.Dataset] | None = None,
    threads: int = 1,
    client=None,
    desc: str = "regions",
) -> StoreWrite:
    """Write a whole store at ``out`` region by region, resumable, verified, and in place only when complete.

    ``names``: the arrays each region writes. ``replace``: an existing survey-proc store at ``out``
    may be replaced (else refused). ``threads``: regions computed at once here; ``client``: a Dask
    client to compute them on instead (``compute`` must then pickle).
    """
    if REGION_DONE in template:  # what each region writes, for the checks of validate and run
        template = template.copy()
        template[REGION_DONE].attrs = {**template[REGION_DONE].attrs, "region_arrays": list(names)}
    with staged_output(out, inputs=inputs, replace=replace, what=what) as staging:
        begin = begin_store(staging, template, signature, what, groups)
        pending = pending_regions(staging, regions) if begin else regions
        if begin and pending:
            log.info(f"resuming {out}: {len(regions) - len(pending)} of {len(regions)} regions already done")
        written = fill_regions(staging, pending, compute, threads=threads, client=client, desc=desc)
        fingerprint = finish_store(staging, regions, names, written, client)
    return StoreWrite(str(out), len(regions), len(regions) - len(pending), fingerprint)


def begin_store(
    staging: Path, template: xr.Dataset, signature: str, what: str, groups: Mapping[str, xr.Dataset] | None = None
) -> bool:
    """Set up (or resume: True) the staged store; a staged store of another write is replaced."""
    recorded = stored_signature(staging)
    other = recorded is not None and recorded != signature
    return create_or_resume(staging, template, signature, overwrite=other, what=what, groups=groups, lock=False)


def fill_regions(
    path: str | os.PathLike, regions: list[Region], compute: Compute, *, threads: int = 1, client=None, desc: str
) -> dict[str, int]:
    """Compute and commit every region; returns region key -> CRC-32 of what was committed.

    In ``threads`` threads here, or as tasks on a Dask ``client``; the first failure is raised once
    the work in flight has stopped (nothing more is started).
    """
    path = str(path)
    with progress.bar(len(regions), desc, unit="region") as advance:
        if client is not None:
            return _fill_on_client(client, path, regions, compute, advance)
        if threads <= 1 or len(regions) <= 1:
            written = {}
            for region in regions:
                written[region.key] = commit_region(path, region, compute(region))
                advance(1)
            return written
        return _fill_in_threads(path, regions, compute, threads, advance)


def _commit(region: Region, path: str, compute: Compute) -> tuple[str, int]:
    return region.key, commit_region(path, region, compute(region))


def _fill_in_threads(
    path: str, regions: list[Region], compute: Compute, threads: int, advance: Callable[[int], None]
) -> dict[str, int]:
    written: dict[str, int] = {}
    with ThreadPoolExecutor(min(threads, len(regions))) as pool:
        futures = {pool.submit(_commit, r, path, compute) for r in regions}
        while futures:
            done, futures = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    for f in futures:
                        f.cancel()
                    raise future.exception()  # type: ignore[misc]
                key, crc = future.result()
                written[key] = crc
                advance(1)
    return written


def _fill_on_client(
    client, path: str, regions: list[Region], compute: Compute, advance: Callable[[int], None]
) -> dict[str, int]:
    from distributed import as_completed

    futures = client.map(_commit, regions, path=path, compute=compute, pure=False)
    written: dict[str, int] = {}
    try:
        for future in as_completed(futures):
            key, crc = future.result()
            written[key] = crc
            advance(1)
    except BaseException:
        client.cancel(futures)
        raise
    return written


def finish_store(
    path: str | os.PathLike, regions: list[Region], names: Sequence[str], written: Mapping[str, int], client=None
) -> str:
    """Verify every region, clear the temporaries of cut-short writes, record the content's
    fingerprint, consolidate the metadata; returns the fingerprint."""
    problems = verify_regions(path, regions, list(names), client, written)
    if problems:
        raise StoreVerifyError(f"{path}: verification failed after writing:\n  - " + "\n  - ".join(problems[:20]))
    remove_partial_writes(path)
    fingerprint = record_fingerprint(path)
    consolidate(path)
    return fingerprint
