"""One task: read a region of the input store, preprocess, estimate, write, mark done.

:func:`estimate_region` is the pure part (arrays in, arrays out); :func:`process_region` adds the
reads and writes. The region's outputs are written first, read back and checked against the CRC-32
of what was computed, and its ``region_done`` marker written last, each chunk write being atomic,
so a region is either complete, verified and marked, or recomputed (a failed check fails the task,
which Dask retries).
A task that finds its region already marked (its first attempt's worker died after marking, before
reporting back) returns what is recorded without writing the region again.
"""

from __future__ import annotations

import asyncio
import functools
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
import zarr.api.asynchronous as zarr_async
from zarr.core.sync import sync as zarr_sync

from survey_proc import config
from survey_proc.engine._template import Region, output_variables
from survey_proc.errors import CubeError, SurveyProcError
from survey_proc.estimators import Estimator, load_estimator, read_manifest
from survey_proc.stores import NOT_FITTED, Flag


@dataclass(frozen=True)
class RegionOptions:
    """What every task needs besides its region (small, picklable)."""

    cube: str
    out: str
    model: str
    redshift: float
    min_snr: float
    device: str = "cpu"
    threads: int = 1
    redshift_per_spectrum: bool = False  #: the store has a ``redshift`` per spectrum (a catalogue)


@dataclass
class RegionResult:
    """What a finished task reports back."""

    key: str
    spectra: int
    fitted: int
    flag_counts: dict[str, int]
    seconds: float
    estimator_seconds: float
    checksum: int
    worker: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    reused: bool = False  #: the region was found complete and was not written again


def estimate_region(
    flux: np.ndarray,
    var: np.ndarray,
    mask: np.ndarray,
    wave: np.ndarray,
    redshift: float | np.ndarray,
    estimator: Estimator,
    min_snr: float,
    lsf_fwhm: np.ndarray | None = None,
    timings: dict[str, float] | None = None,
    shape: tuple[int, ...] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, float]:
    """Estimates for spectra (n, nwave): ({name: (n, ...)}, flag (n,), snr (n,), estimator seconds).

    ``wave`` is the store's feature axis (wavelengths, or band names for photometry), ``shape``
    the spatial shape of the n pixels (for image models). ``lsf_fwhm`` (nwave,) is the data's
    instrumental FWHM in Angstrom, passed on to estimators that model the instrument (pPXF).
    ``timings``, if given, receives the wall and CPU seconds of preprocessing and of the estimator
    (``prepare``, ``prepare_cpu``, ``estimator``, ``estimator_cpu``).

    Spectra go through preprocessing and the estimator in blocks of :func:`stream_block`; the numbers
    do not depend on it (where a block has unfitted spectra, the network's batches are smaller than
    with the whole region at once, which can move outputs in the last bits of float32). Spectra that
    cannot be fitted get NaN outputs and their flag bits; non-finite estimator outputs are flagged
    FIT_FAILED; rules of the manifest (e.g. a novelty score above threshold) set their flags.
    """
    manifest = estimator.manifest
    input_spec = manifest.input
    n = flux.shape[0]
    block = stream_block(estimator, n)
    z_all = np.broadcast_to(np.asarray(redshift, np.float64), (n,))
    flags, snr, fit = np.zeros(n, np.uint8), np.full(n, np.nan), np.zeros(n, bool)
    parts: list[tuple[int, np.ndarray, dict]] = []  # (first row, rows estimated, outputs) per block
    spent = np.zeros(4)  # prepare wall, prepare CPU, estimator wall, estimator CPU
    for a in range(0, n, block):
        b = min(a + block, n)
        w0, c0 = time.perf_counter(), time.process_time()
        prep = input_spec.prepare_batch(
            flux[a:b], var[a:b], mask[a:b], wave, redshift if np.ndim(redshift) == 0 else z_all[a:b], shape=shape
        )
        w1, c1 = time.perf_counter(), time.process_time()
        flags[a:b], snr[a:b], fit[a:b] = prep.flags, prep.snr, prep.fit
        x_in, rows = prep.batch()  # rows: the pixels (of this block) the estimator's output rows belong to
        if prep.fit.any():
            parts.append((a, rows, estimator.predict(x_in, input_spec.batch_meta(z_all[a:b][rows], wave, lsf_fwhm))))
        del prep, x_in
        spent += (w1 - w0, c1 - c0, time.perf_counter() - w1, time.process_time() - c1)
    with np.errstate(invalid="ignore"):
        flags[np.isfinite(snr) & (snr < min_snr)] |= np.uint8(Flag.LOW_SNR)
    est_seconds = float(spent[2])
    if timings is not None:
        timings.update(prepare=spent[0], prepare_cpu=spent[1], estimator=spent[2], estimator_cpu=spent[3])
    outputs: dict[str, np.ndarray] = {}
    for name, extra, _, coords in output_variables(manifest):
        out_shape = (n, *tuple(len(coords[e]) for e in extra))
        full = np.full(out_shape, np.nan, np.float32)
        for a, rows, pred in parts:
            if name not in pred:
                raise KeyError(f"estimator {manifest.name} did not return '{name}' declared in its manifest")
            full[a : a + rows.size][rows] = pred[name]
        outputs[name] = full
    failed = np.zeros(n, bool)
    for spec in manifest.outputs:
        vals = outputs[spec.name].reshape(n, -1)
        failed |= fit & ~np.isfinite(vals).all(axis=1)
    flags[failed] |= np.uint8(Flag.FIT_FAILED)
    for flag_name, rule in manifest.flag_rules:
        with np.errstate(invalid="ignore"):
            hit = outputs[rule["output"]] > float(rule["threshold"])
        flags[hit] |= np.uint8(Flag[flag_name])
    not_fitted = (flags & np.uint8(NOT_FITTED)) != 0
    for spec in manifest.outputs:  # no numbers where no estimate was made
        outputs[spec.name][not_fitted] = np.nan
        if spec.error:
            outputs[f"{spec.name}_err"][not_fitted] = np.nan
    return outputs, flags, snr.astype(np.float32), est_seconds


def stream_block(estimator: Estimator, n: int) -> int:
    """Spectra prepared and estimated together within a region: the estimator's batch (on CPUs a
    few hundred: the model input of a whole region, ~40 MB, would be a fresh mmap per region and
    leave the caches before the network reads it), the whole region for estimators without one
    and for input kinds whose regions go in whole (an image model's tile)."""
    batch = estimator.batch_size
    if not batch or estimator.manifest.input.whole_regions:
        return max(n, 1)
    return max(int(batch), 1)


def region_checksum(arrays: Mapping[str, np.ndarray]) -> int:
    """CRC-32 over the arrays' bytes in name order (verifies a region's outputs as stored)."""
    crc = 0
    for name in sorted(arrays):
        crc = zlib.crc32(np.ascontiguousarray(arrays[name]).tobytes(), crc)
    return crc


@functools.lru_cache(maxsize=16)
def read_feature_axis(cube: str, model: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The store's feature axis as the model's input kind takes it (wavelengths in the model's
    medium, or band names) and the store's instrumental FWHM along it (Angstrom; None where the
    store has none), once per process. ``model``: the path of the model's manifest."""
    spec = read_manifest(Path(model)).input
    grp = zarr.open_group(cube, mode="r")
    coord = grp[spec.feature_dim]
    axis = spec.feature_axis(coord[:], coord.attrs.get("medium"))
    if "lsf_fwhm" in grp:
        return axis, np.asarray(grp["lsf_fwhm"][:], np.float64)
    fwhm = grp.attrs.get("lsf_fwhm")
    return axis, (np.full(axis.size, float(fwhm)) if fwhm is not None else None)


def halo_window(region: Region, halo: int, sizes: Mapping[str, int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(slices to read, the region's core inside them): the region grown by ``halo`` pixels on every
    side along its dims, clipped to the store's ``sizes``."""
    read, core = [], []
    for d, a, b in region.slices:
        lo, hi = max(a - halo, 0), min(b + halo, sizes[d])
        read.append(slice(lo, hi))
        core.append(slice(a - lo, b - lo))
    return tuple(read), tuple(core)


def _open(path: str, mode: str) -> zarr.Group:
    return zarr.open_group(path, mode=mode, zarr_format=3)


def read_arrays(path: str, names: list[str], index: tuple[slice, ...]) -> dict[str, np.ndarray | None]:
    """The ``index`` block of each named array of a store, read concurrently (None if absent)."""
    return zarr_sync(_read_arrays(path, names, index))


async def _read_arrays(path: str, names: list[str], index: tuple[slice, ...]) -> dict[str, np.ndarray | None]:
    grp = await zarr_async.open_group(store=path, mode="r", zarr_format=3)
    present = [name for name in names if await grp.contains(name)]
    arrays = await asyncio.gather(*[grp.getitem(name) for name in present])
    values = await asyncio.gather(*[a.getitem(index) for a in arrays])
    return {name: np.asarray(values[present.index(name)]) if name in present else None for name in names}


def write_region_outputs(
    path: str,
    index: tuple[slice, ...],
    arrays: Mapping[str, np.ndarray],
    region_index: tuple[int, ...],
    spectra: int,
    checksum: int,
) -> None:
    """Write a region's outputs and bookkeeping concurrently, read the outputs back and check their
    CRC-32 against ``checksum``, then write its ``region_done`` marker last.

    Raises :class:`RegionWriteError` (the region stays unmarked) when what the store returns is not
    what was written.
    """
    zarr_sync(_write_region_outputs(path, index, arrays, region_index, spectra, checksum))


class RegionWriteError(SurveyProcError):
    """A region's outputs read back from the store differ from those written."""


async def _write_region_outputs(
    path: str,
    index: tuple[slice, ...],
    arrays: Mapping[str, np.ndarray],
    region_index: tuple[int, ...],
    spectra: int,
    checksum: int,
) -> None:
    grp = await zarr_async.open_group(store=path, mode="r+", zarr_format=3)
    names = [*list(arrays), "region_spectra", "region_checksum", "region_done"]
    handles = dict(zip(names, await asyncio.gather(*[grp.getitem(name) for name in names])))
    marker = tuple(slice(i, i + 1) for i in region_index)
    one = (1,) * len(marker)
    await asyncio.gather(
        *[handles[name].setitem(index, values) for name, values in arrays.items()],
        handles["region_spectra"].setitem(marker, np.full(one, spectra, np.int32)),
        handles["region_checksum"].setitem(marker, np.full(one, checksum, np.uint32)),
    )
    stored = await asyncio.gather(*[handles[name].getitem(index) for name in arrays])
    if region_checksum({name: np.asarray(v) for name, v in zip(arrays, stored)}) != checksum:
        where = ", ".join(f"{s.start}:{s.stop}" for s in index)
        raise RegionWriteError(
            f"{path}: the outputs read back at [{where}] differ from those written "
            "(CRC-32); the region is left unmarked"
        )
    await handles["region_done"].setitem(marker, np.ones(one, np.uint8))  # last: marks completion


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def flag_counts(flags: np.ndarray) -> tuple[dict[str, int], int]:
    """Spectra per flag bit, and spectra fitted (no NOT_FITTED bit)."""
    counts = {f.name.lower(): int(((flags & np.uint8(f)) != 0).sum()) for f in Flag}
    return counts, int(((flags & np.uint8(NOT_FITTED)) == 0).sum())


def _recorded_result(out: zarr.Group, region: Region, index: tuple, marker: tuple, t0: float) -> RegionResult:
    """The result of a region already complete in the store (nothing is written)."""
    flags = np.asarray(out["flag"][index])
    counts, fitted = flag_counts(flags)
    return RegionResult(
        key=region.key,
        spectra=int(out["region_spectra"][marker].item()),
        fitted=fitted,
        flag_counts=counts,
        seconds=time.perf_counter() - t0,
        estimator_seconds=0.0,
        checksum=int(out["region_checksum"][marker].item()),
        worker=_worker_name(),
        reused=True,
    )


def read_region_inputs(
    cube_path: str, region: Region, with_redshift: bool = False, window: tuple[slice, ...] | None = None
) -> dict[str, np.ndarray | None]:
    """``flux``, ``var``, ``mask`` (and ``redshift``) of a region (or of ``window``, the region
    with its halo), read concurrently.

    A chunk that cannot be read raises a CubeError naming the store, the variable and the region.
    """
    index = window if window is not None else tuple(slice(a, b) for _, a, b in region.slices)
    names = ["flux", "var", "mask"] + (["redshift"] if with_redshift else [])
    try:
        return read_arrays(cube_path, names, index)
    except Exception:  # a truncated or corrupt chunk: the codec's own error type; find which variable
        cube = _open(cube_path, "r")
        where = ", ".join(f"{d} {a}:{b}" for d, a, b in region.slices)
        for name in names:
            try:
                np.asarray(cube[name][index]) if name in cube else None
            except Exception as exc:
                raise CubeError(
                    f"{cube_path}: variable '{name}' cannot be read at {region.key} ({where}): "
                    f"{type(exc).__name__}: {exc} (the store is damaged there)"
                ) from None
        raise


def limit_io_threads(opts: RegionOptions) -> None:
    """Size Zarr's decoding thread pool for this process (``survey-proc.run.io-threads``).

    ``auto``: in a Dask worker as many threads as the worker has, so that workers sharing a machine
    do not each decompress with a pool as large as the machine (measured: 2 workers on 2 cores,
    ~15 % more spectra/s with 1 thread each); a GPU worker of ``local-cuda``, which has the cores
    as threads, keeps that many. Outside a worker (``--cluster none``): ``opts.threads`` on CPUs,
    Zarr's own default on GPUs.
    """
    wanted = config.get("run.io-threads", "auto")
    if wanted in (None, "auto"):
        nthreads = _worker_threads()
        wanted = nthreads or (None if opts.device.startswith("cuda") else max(1, int(opts.threads or 1)))
    elif int(wanted) < 1:
        raise ValueError(f"survey-proc.run.io-threads must be auto or at least 1, not {wanted!r}")
    if wanted is not None and zarr.config.get("threading.max_workers", None) != int(wanted):
        zarr.config.set({"threading.max_workers": int(wanted)})


def _worker_threads() -> int | None:
    """Threads of the Dask worker running this code, or None outside one."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def setup_worker(opts: RegionOptions) -> float:
    """Load the estimator (and its imports) into this worker's process ahead of its first region.

    The engine runs this once per worker when the cluster is up (the ``setup`` of the template ->
    setup -> per-region write pattern), so the timed regions measure the steady state and the
    one-off cost is reported on its own. Returns the seconds it took.
    """
    t0 = time.perf_counter()
    limit_io_threads(opts)
    estimator = load_estimator(opts.model, device=opts.device, threads=opts.threads)
    axis, _ = read_feature_axis(opts.cube, opts.model)
    estimator.manifest.input.warm_up(axis, opts.redshift)
    estimator.warm_up()
    return time.perf_counter() - t0


def process_region(region: Region, opts: RegionOptions) -> RegionResult:
    """Read, estimate and write one region; returns counts and a checksum of what was written."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    sel = region.selection()
    dims = tuple(d for d, _, _ in region.slices)
    index = tuple(sel[d] for d in dims)
    marker = tuple(slice(i, i + 1) for i in region.index)
    limit_io_threads(opts)  # also on workers that joined (or were restarted) after the setup
    out = _open(opts.out, "r")
    if out["region_done"][marker].item():
        return _recorded_result(out, region, index, marker, t0)
    estimator = load_estimator(opts.model, device=opts.device, threads=opts.threads)  # once per process
    spec = estimator.manifest.input
    t_load, c_load = time.perf_counter(), time.process_time()
    wave, lsf = read_feature_axis(opts.cube, opts.model)
    # image models see the region plus a halo of neighbouring pixels; only the core is written
    window, core = index, tuple(slice(None) for _ in dims)
    if spec.halo_pixels:
        window, core = halo_window(region, spec.halo_pixels, dict(zip(dims, _open(opts.cube, "r")["flux"].shape)))
    read = read_region_inputs(opts.cube, region, with_redshift=opts.redshift_per_spectrum, window=window)
    flux, var, mask = read["flux"], read["var"], read["mask"]
    t_read, c_read = time.perf_counter(), time.process_time()
    spatial_shape = flux.shape[:-1]
    n = int(np.prod(spatial_shape))
    redshift: float | np.ndarray = opts.redshift
    if read.get("redshift") is not None:  # catalogues carry one redshift per object
        redshift = np.asarray(read["redshift"], np.float64)
    timings: dict[str, float] = {}
    outputs, flags, snr, est_seconds = estimate_region(
        flux.reshape(n, -1),
        var.reshape(n, -1),
        mask.reshape(n, -1),
        wave,
        redshift,
        estimator,
        opts.min_snr,
        lsf,
        timings,
        shape=spatial_shape,
    )
    t_est, c_est = time.perf_counter(), time.process_time()

    arrays = {name: values.reshape(spatial_shape + values.shape[1:])[core] for name, values in outputs.items()}
    arrays["flag"] = flags.reshape(spatial_shape)[core]
    arrays["snr"] = snr.reshape(spatial_shape)[core]
    flags = arrays["flag"].ravel()
    n = region.size
    checksum = region_checksum(arrays)
    write_region_outputs(opts.out, index, arrays, region.index, n, checksum)
    t_end, c_end = time.perf_counter(), time.process_time()

    counts, fitted = flag_counts(flags)
    timings.update(
        load=t_load - t0,
        read=t_read - t_load,
        read_cpu=c_read - c_load,
        estimate=t_est - t_read,
        write=t_end - t_est,
        write_cpu=c_end - c_est,
        cpu=c_end - cpu0,
    )
    return RegionResult(
        key=region.key,
        spectra=n,
        fitted=fitted,
        flag_counts=counts,
        seconds=t_end - t0,
        estimator_seconds=est_seconds,
        checksum=checksum,
        worker=_worker_name(),
        timings=timings,
    )
