"""One task: read a region of the input store, estimate, commit it to the maps store.

:func:`process_region` reads the region (with a halo for kinds that declare one), runs
:func:`~survey_proc.engine._estimate.estimate_region` and writes the region's outputs with
:func:`survey_proc.stores.commit_region`: written, read back and checked against their CRC-32,
marked done last, so a region is either complete, verified and marked, or recomputed (a failed
check fails the task, which Dask retries). A task that finds its region already marked (its first
attempt's worker died after marking, before reporting back) returns what is recorded without
writing the region again. :func:`setup_worker` loads and warms the model once per worker.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from survey_proc import config
from survey_proc.engine._estimate import estimate_region, flag_counts
from survey_proc.engine._template import MASS_DENSITY, MASS_FLUX
from survey_proc.errors import CubeError
from survey_proc.estimators import Estimator, load_estimator, read_manifest
from survey_proc.stores import FLAG_DTYPE, NOT_FITTED, Flag, Region, commit_region, is_done, read_arrays, region_record


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
    run_flags: int = 0  #: flag bits every estimate of the run gets (e.g. ``lsf_mismatch``)
    mw_ebv: float = 0.0  #: Milky Way foreground E(B-V) undone before the estimator sees the spectra
    lsf_offset_kms: float = 0.0  #: the data's LSF against the model's training LSF (signed, in quadrature)
    #: log10 of what turns the fit's log_mass_flux into log10 Sigma* (M_sun/kpc^2); None: not derived
    mass_density_dex: float | None = None


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


@dataclass
class RegionInputs:
    """A region's data as read: ``flux``, ``var``, ``mask`` (*spatial, nfeature) of the region grown by
    its halo, the redshift (scalar, or one per spectrum), and the region's ``core`` in the window."""

    flux: np.ndarray
    var: np.ndarray
    mask: np.ndarray
    redshift: float | np.ndarray
    core: tuple[slice, ...]


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


def read_region_inputs(
    cube_path: str, region: Region, with_redshift: bool = False, window: tuple[slice, ...] | None = None
) -> dict[str, np.ndarray | None]:
    """``flux``, ``var``, ``mask`` (and ``redshift``) of a region (or of ``window``, the region
    with its halo), read concurrently.

    A chunk that cannot be read raises a CubeError naming the store, the variable and the region.
    """
    index = window if window is not None else region.block
    names = ["flux", "var", "mask"] + (["redshift"] if with_redshift else [])
    try:
        return read_arrays(cube_path, names, index)
    except Exception:  # a truncated or corrupt chunk: the codec's own error type; find which variable
        _raise_damaged(cube_path, region, names, index)
        raise


def _raise_damaged(cube_path: str, region: Region, names: list[str], index: tuple[slice, ...]) -> None:
    """Raise a CubeError naming the first of ``names`` that cannot be read at ``index``."""
    cube = zarr.open_group(cube_path, mode="r", zarr_format=3)
    where = ", ".join(f"{d} {a}:{b}" for d, a, b in region.slices)
    for name in names:
        try:
            np.asarray(cube[name][index]) if name in cube else None
        except Exception as exc:
            raise CubeError(
                f"{cube_path}: variable '{name}' cannot be read at {region.key} ({where}): "
                f"{type(exc).__name__}: {exc} (the store is damaged there)"
            ) from None


def _read_window(region: Region, opts: RegionOptions, halo: int) -> RegionInputs:
    """The region's inputs; with a ``halo``, grown by as many neighbouring pixels (only the core is
    written)."""
    window, core = region.block, tuple(slice(None) for _ in region.slices)
    if halo:
        shape = zarr.open_group(opts.cube, mode="r", zarr_format=3)["flux"].shape
        window, core = halo_window(region, halo, dict(zip((d for d, _, _ in region.slices), shape)))
    read = read_region_inputs(opts.cube, region, with_redshift=opts.redshift_per_spectrum, window=window)
    redshift: float | np.ndarray = opts.redshift
    if read.get("redshift") is not None:  # catalogues carry one redshift per object
        redshift = np.asarray(read["redshift"], np.float64)
    return RegionInputs(read["flux"], read["var"], read["mask"], redshift, core)


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


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


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


def _recorded_result(out: zarr.Group, region: Region, t0: float) -> RegionResult:
    """The result of a region already complete in the store (nothing is written)."""
    counts, fitted = flag_counts(np.asarray(out["flag"][region.block]))
    spectra, checksum = region_record(out, region)
    return RegionResult(
        key=region.key,
        spectra=spectra,
        fitted=fitted,
        flag_counts=counts,
        seconds=time.perf_counter() - t0,
        estimator_seconds=0.0,
        checksum=checksum,
        worker=_worker_name(),
        reused=True,
    )


def _without_foreground(flux: np.ndarray, var: np.ndarray, wave: np.ndarray, ebv: float):
    """Flux and variance with a Milky Way foreground of ``ebv`` undone (as they are where it is 0)."""
    if not ebv:
        return flux, var
    from survey_proc.ssp import foreground_correction

    factor = foreground_correction(wave, ebv).astype(np.float32)
    return flux * factor, var * factor**2


def correct_sigma_for_lsf(outputs: dict[str, np.ndarray], offset_kms: float) -> np.ndarray:
    """A network's sigma (and its error) for data whose LSF differs from its training LSF by
    ``offset_kms`` in quadrature (> 0: broader): the lines it saw were that much broader, so
    sigma^2 - offset |offset|, in place. Returns where sigma is not resolved beyond the offset (a
    network's sigma at or below 0, which a network can give far from its training set, is not)."""
    sigma = outputs["sigma"].astype(np.float64)
    with np.errstate(invalid="ignore"):
        squared = np.sign(sigma) * sigma**2 - offset_kms * abs(offset_kms)
        unresolved = np.isfinite(sigma) & (squared <= 0)
        corrected = np.sqrt(np.clip(squared, 0.0, None))
        if "sigma_err" in outputs:
            ratio = np.where(corrected > 0, sigma / np.where(corrected > 0, corrected, 1.0), np.nan)
            outputs["sigma_err"] = (outputs["sigma_err"] * ratio).astype(np.float32)
    outputs["sigma"] = corrected.astype(np.float32)
    return unresolved


def mass_surface_density(outputs: dict[str, np.ndarray], offset_dex: float) -> dict[str, np.ndarray]:
    """``log_mass_surface_density`` and its error from the fit's ``log_mass_flux`` (same error: the
    offset is exact)."""
    return {
        MASS_DENSITY: (outputs[MASS_FLUX] + np.float32(offset_dex)).astype(np.float32),
        f"{MASS_DENSITY}_err": outputs[f"{MASS_FLUX}_err"].astype(np.float32),
    }


def _region_outputs(inputs: RegionInputs, estimator: Estimator, opts: RegionOptions) -> tuple[dict, float, dict]:
    """(the region's arrays to write: outputs, ``flag``, ``snr`` at its core; estimator seconds;
    timings of preprocessing and the estimator)."""
    wave, lsf = read_feature_axis(opts.cube, opts.model)
    shape = inputs.flux.shape[:-1]
    n = int(np.prod(shape))
    flux, var = _without_foreground(inputs.flux.reshape(n, -1), inputs.var.reshape(n, -1), wave, opts.mw_ebv)
    est = estimate_region(
        flux,
        var,
        inputs.mask.reshape(n, -1),
        wave,
        inputs.redshift,
        estimator,
        opts.min_snr,
        lsf,
        shape=shape,
    )
    if opts.lsf_offset_kms and "sigma" in est.outputs:
        unresolved = correct_sigma_for_lsf(est.outputs, opts.lsf_offset_kms)
        est.flags[unresolved & ((est.flags & FLAG_DTYPE(NOT_FITTED)) == 0)] |= FLAG_DTYPE(Flag.LSF_MISMATCH)
    if opts.mass_density_dex is not None:
        est.outputs.update(mass_surface_density(est.outputs, opts.mass_density_dex))
    if opts.run_flags:
        est.flags[(est.flags & FLAG_DTYPE(NOT_FITTED)) == 0] |= FLAG_DTYPE(opts.run_flags)
    core = inputs.core
    arrays = {name: values.reshape(shape + values.shape[1:])[core] for name, values in est.outputs.items()}
    arrays["flag"] = est.flags.reshape(shape)[core]
    arrays["snr"] = est.snr.reshape(shape)[core]
    return arrays, est.estimator_seconds, est.timings


def process_region(region: Region, opts: RegionOptions) -> RegionResult:
    """Read, estimate and write one region; returns counts and a checksum of what was written."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    limit_io_threads(opts)  # also on workers that joined (or were restarted) after the setup
    out = zarr.open_group(opts.out, mode="r", zarr_format=3)
    if is_done(out, region):
        return _recorded_result(out, region, t0)
    estimator = load_estimator(opts.model, device=opts.device, threads=opts.threads)  # once per process
    t_load, c_load = time.perf_counter(), time.process_time()
    inputs = _read_window(region, opts, estimator.manifest.input.halo_pixels)
    t_read, c_read = time.perf_counter(), time.process_time()
    arrays, est_seconds, timings = _region_outputs(inputs, estimator, opts)
    t_est, c_est = time.perf_counter(), time.process_time()
    checksum = commit_region(opts.out, region, arrays)
    t_end, c_end = time.perf_counter(), time.process_time()
    counts, fitted = flag_counts(arrays["flag"].ravel())
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
        spectra=region.size,
        fitted=fitted,
        flag_counts=counts,
        seconds=t_end - t0,
        estimator_seconds=est_seconds,
        checksum=checksum,
        worker=_worker_name(),
        timings=timings,
    )
