"""One task: read a region of the input store, preprocess, estimate, write, mark done.

:func:`estimate_region` is the pure part (arrays in, arrays out); :func:`process_region` adds the
reads and writes. The region's outputs are written first and its ``region_done`` marker last, each
chunk write being atomic, so a region is either complete and marked or recomputed on the next run.
"""

from __future__ import annotations

import functools
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import zarr

from survey_proc.estimators import load_estimator
from survey_proc.estimators._base import Estimator
from survey_proc.preprocess import prepare
from survey_proc.ssp import to_medium
from survey_proc.stores._maps import NOT_FITTED, Flag
from survey_proc.engine._template import Region, output_variables


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


def model_meta(redshift: np.ndarray, wave: np.ndarray, lsf_fwhm: np.ndarray | None, manifest) -> dict:
    """What an estimator may need besides the pixels: redshifts and the data's FWHM at its pixels."""
    meta: dict = {"redshift": redshift}
    if lsf_fwhm is not None:
        spec = manifest.input
        if spec.frame == "rest":
            z1 = 1.0 + (redshift[:, None] if np.ptp(redshift) > 0 else redshift[:1, None])
            fwhm = np.interp(spec.wave[None, :] * z1, wave, lsf_fwhm) / z1
            meta["lsf_fwhm_model"] = fwhm if fwhm.shape[0] > 1 else fwhm[0]
        else:
            meta["lsf_fwhm_model"] = np.interp(spec.wave, wave, lsf_fwhm)
    return meta


def estimate_region(flux: np.ndarray, var: np.ndarray, mask: np.ndarray, wave: np.ndarray,
                    redshift: float | np.ndarray, estimator: Estimator, min_snr: float,
                    lsf_fwhm: np.ndarray | None = None,
                    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, float]:
    """Estimates for spectra (n, nwave): ({name: (n, ...)}, flag (n,), snr (n,), estimator seconds).

    ``lsf_fwhm`` (nwave,) is the data's instrumental FWHM in Angstrom, passed on to estimators
    that model the instrument (pPXF).

    Spectra that cannot be fitted get NaN outputs and their flag bits; non-finite estimator
    outputs are flagged FIT_FAILED; rules of the manifest (e.g. a novelty score above threshold)
    set their flags.
    """
    manifest = estimator.manifest
    prep = prepare(flux, var, mask, wave, redshift, manifest.input)
    n = flux.shape[0]
    flags = prep.flags.copy()
    with np.errstate(invalid="ignore"):
        flags[np.isfinite(prep.snr) & (prep.snr < min_snr)] |= np.uint8(Flag.LOW_SNR)
    fit = prep.fit
    outputs: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    if fit.any():
        z = np.broadcast_to(np.asarray(redshift, np.float64), (n,))[fit]
        pred = estimator.predict(prep.x[fit], model_meta(z, wave, lsf_fwhm, manifest))
    else:
        pred = {}
    est_seconds = time.perf_counter() - t0
    for name, extra, _, coords in output_variables(manifest):
        shape = (n,) + tuple(len(coords[e]) for e in extra)
        full = np.full(shape, np.nan, np.float32)
        if fit.any():
            if name not in pred:
                raise KeyError(f"estimator {manifest.name} did not return '{name}' declared in its manifest")
            full[fit] = pred[name]
        outputs[name] = full
    failed = np.zeros(n, bool)
    for spec in manifest.outputs:
        vals = outputs[spec.name].reshape(n, -1)
        failed |= fit & ~np.isfinite(vals).all(axis=1)
    flags[failed] |= np.uint8(Flag.FIT_FAILED)
    for rule_name, rule in manifest.flag_rules.items():
        with np.errstate(invalid="ignore"):
            hit = outputs[rule["output"]] > float(rule["threshold"])
        flags[hit] |= np.uint8(Flag[rule_name])
    not_fitted = (flags & np.uint8(NOT_FITTED)) != 0
    for spec in manifest.outputs:  # no numbers where no estimate was made
        outputs[spec.name][not_fitted] = np.nan
        if spec.error:
            outputs[f"{spec.name}_err"][not_fitted] = np.nan
    return outputs, flags, prep.snr.astype(np.float32), est_seconds


def region_checksum(arrays: Mapping[str, np.ndarray]) -> int:
    """CRC-32 over the arrays' bytes in name order (verifies a region after the run)."""
    crc = 0
    for name in sorted(arrays):
        crc = zlib.crc32(np.ascontiguousarray(arrays[name]).tobytes(), crc)
    return crc


@functools.lru_cache(maxsize=16)
def _wave_and_lsf(cube: str, medium: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The cube's wavelengths (in ``medium``, the model's, when given) and instrumental FWHM per
    wavelength (Angstrom), once per process."""
    grp = zarr.open_group(cube, mode="r")
    wave = np.asarray(grp["wave"][:], np.float64)
    data_medium = grp["wave"].attrs.get("medium")
    if medium and data_medium and data_medium != medium:  # e.g. SDSS (vacuum) data, E-MILES (air) model
        wave = to_medium(wave, data_medium, medium)
    if "lsf_fwhm" in grp:
        return wave, np.asarray(grp["lsf_fwhm"][:], np.float64)
    fwhm = grp.attrs.get("lsf_fwhm")
    return wave, (np.full(wave.size, float(fwhm)) if fwhm is not None else None)


def _open(path: str, mode: str) -> zarr.Group:
    return zarr.open_group(path, mode=mode, zarr_format=3)


def process_region(region: Region, opts: RegionOptions) -> RegionResult:
    """Read, estimate and write one region; returns counts and a checksum of what was written."""
    t0 = time.perf_counter()
    estimator = load_estimator(opts.model, device=opts.device, threads=opts.threads)
    cube = _open(opts.cube, "r")
    sel = region.selection()
    dims = tuple(d for d, _, _ in region.slices)
    index = tuple(sel[d] for d in dims)
    flux = np.asarray(cube["flux"][index])
    var = np.asarray(cube["var"][index])
    mask = np.asarray(cube["mask"][index])
    t_read = time.perf_counter()
    spatial_shape = flux.shape[:-1]
    n = int(np.prod(spatial_shape))
    redshift: float | np.ndarray = opts.redshift
    if "redshift" in cube and dims == ("object",):  # catalogues carry one redshift per object
        redshift = np.asarray(cube["redshift"][index], np.float64)
    wave, lsf = _wave_and_lsf(opts.cube, estimator.manifest.input.medium)
    outputs, flags, snr, est_seconds = estimate_region(
        flux.reshape(n, -1), var.reshape(n, -1), mask.reshape(n, -1), wave, redshift,
        estimator, opts.min_snr, lsf)
    t_est = time.perf_counter()

    arrays = {name: values.reshape(spatial_shape + values.shape[1:]) for name, values in outputs.items()}
    arrays["flag"] = flags.reshape(spatial_shape)
    arrays["snr"] = snr.reshape(spatial_shape)
    out = _open(opts.out, "r+")
    for name, values in arrays.items():
        out[name][index] = values
    checksum = region_checksum(arrays)
    marker = tuple(slice(i, i + 1) for i in region.index)
    out["region_spectra"][marker] = np.full((1,) * len(marker), n, np.int32)
    out["region_checksum"][marker] = np.full((1,) * len(marker), checksum, np.uint32)
    out["region_done"][marker] = np.ones((1,) * len(marker), np.uint8)  # last: marks completion
    t_end = time.perf_counter()

    counts = {f.name.lower(): int(((flags & np.uint8(f)) != 0).sum()) for f in Flag}
    fitted = int(((flags & np.uint8(NOT_FITTED)) == 0).sum())
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = "local"
    return RegionResult(key=region.key, spectra=n, fitted=fitted, flag_counts=counts, seconds=t_end - t0,
                        estimator_seconds=est_seconds, checksum=checksum, worker=worker,
                        timings={"read": t_read - t0, "estimate": t_est - t_read, "write": t_end - t_est})


def read_region_outputs(out: str, region: Region, names: list[str]) -> dict[str, np.ndarray]:
    """Arrays of a region as stored (used to verify checksums)."""
    grp = _open(out, "r")
    sel = region.selection()
    index = tuple(sel[d] for d, _, _ in region.slices)
    return {name: np.asarray(grp[name][index]) for name in names}
