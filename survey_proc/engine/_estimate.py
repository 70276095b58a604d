"""The pure part of a task: a region's data in, its maps, flags and S/N out (no store touched).

Spectra go through the input kind's ``prepare_batch`` and the estimator in blocks of
:func:`stream_block`; outputs are assembled per manifest output, flagged (low S/N, failed fits,
the manifest's flag rules) and blanked where no estimate was made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from survey_proc.engine._template import output_variables
from survey_proc.estimators import Estimator, Manifest
from survey_proc.stores import FLAG_DTYPE, NOT_FITTED, Flag


@dataclass
class Estimates:
    """What :func:`estimate_region` made of n spectra.

    outputs : {name: (n, ...)} float32 for every variable of :func:`output_variables`.
    flags : (n,) uint16 :class:`~survey_proc.stores.Flag` bits; snr : (n,) float32.
    estimator_seconds : wall seconds in the estimator.
    timings : wall and CPU seconds of preprocessing and of the estimator (``prepare``,
        ``prepare_cpu``, ``estimator``, ``estimator_cpu``).
    """

    outputs: dict[str, np.ndarray]
    flags: np.ndarray
    snr: np.ndarray
    estimator_seconds: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Blocks:
    """What the blocks of a region gave: flags, S/N and the spectra fitted (n,), the estimator's
    outputs per block (first row, rows estimated, outputs), and the seconds spent."""

    flags: np.ndarray
    snr: np.ndarray
    fit: np.ndarray
    parts: list[tuple[int, np.ndarray, dict]] = field(default_factory=list)
    spent: np.ndarray = field(default_factory=lambda: np.zeros(4))  #: prepare wall, CPU; estimator wall, CPU


def estimate_region(
    flux: np.ndarray,
    var: np.ndarray,
    mask: np.ndarray,
    wave: np.ndarray,
    redshift: float | np.ndarray,
    estimator: Estimator,
    min_snr: float,
    lsf_fwhm: np.ndarray | None = None,
    shape: tuple[int, ...] | None = None,
) -> Estimates:
    """Estimates for spectra (n, nwave).

    ``wave`` is the store's feature axis (wavelengths, or band names for photometry), ``shape``
    the spatial shape of the n pixels (for image models). ``lsf_fwhm`` (nwave,) is the data's
    instrumental FWHM in Angstrom, passed on to estimators that model the instrument (pPXF).

    Spectra go through preprocessing and the estimator in blocks of :func:`stream_block`; the numbers
    do not depend on it (where a block has unfitted spectra, the network's batches are smaller than
    with the whole region at once, which can move outputs in the last bits of float32). Spectra that
    cannot be fitted get NaN outputs and their flag bits; non-finite estimator outputs are flagged
    FIT_FAILED; rules of the manifest (e.g. a novelty score above threshold) set their flags.
    """
    blocks = _run_blocks(flux, var, mask, wave, redshift, estimator, lsf_fwhm, shape)
    flags = blocks.flags
    with np.errstate(invalid="ignore"):
        flags[np.isfinite(blocks.snr) & (blocks.snr < min_snr)] |= FLAG_DTYPE(Flag.LOW_SNR)
    outputs = _assemble(estimator.manifest, flux.shape[0], blocks.parts)
    _flag_and_blank(estimator.manifest, outputs, flags, blocks.fit)
    spent = blocks.spent
    timings = {"prepare": spent[0], "prepare_cpu": spent[1], "estimator": spent[2], "estimator_cpu": spent[3]}
    return Estimates(outputs, flags, blocks.snr.astype(np.float32), float(spent[2]), timings)


def _run_blocks(
    flux: np.ndarray,
    var: np.ndarray,
    mask: np.ndarray,
    wave: np.ndarray,
    redshift: float | np.ndarray,
    estimator: Estimator,
    lsf_fwhm: np.ndarray | None,
    shape: tuple[int, ...] | None,
) -> _Blocks:
    """Prepare and estimate the spectra a block of :func:`stream_block` at a time."""
    spec = estimator.manifest.input
    n = flux.shape[0]
    z_all = np.broadcast_to(np.asarray(redshift, np.float64), (n,))
    out = _Blocks(np.zeros(n, FLAG_DTYPE), np.full(n, np.nan), np.zeros(n, bool))
    block = stream_block(estimator, n)
    for a in range(0, n, block):
        b = min(a + block, n)
        w0, c0 = time.perf_counter(), time.process_time()
        z = redshift if np.ndim(redshift) == 0 else z_all[a:b]
        prep = spec.prepare_batch(flux[a:b], var[a:b], mask[a:b], wave, z, shape=shape)
        w1, c1 = time.perf_counter(), time.process_time()
        out.flags[a:b], out.snr[a:b], out.fit[a:b] = prep.flags, prep.snr, prep.fit
        x_in, rows = prep.batch()  # rows: the pixels (of this block) the estimator's output rows belong to
        if prep.fit.any():
            meta = replace(spec.batch_meta(z_all[a:b][rows], wave, lsf_fwhm), norm=prep.norm[rows])
            out.parts.append((a, rows, estimator.predict(x_in, meta)))
        del prep, x_in
        out.spent += (w1 - w0, c1 - c0, time.perf_counter() - w1, time.process_time() - c1)
    return out


def _assemble(manifest: Manifest, n: int, parts: list[tuple[int, np.ndarray, dict]]) -> dict[str, np.ndarray]:
    """Every output variable (n, ...) from the blocks' outputs; NaN where no block estimated."""
    outputs: dict[str, np.ndarray] = {}
    for name, extra, _, coords in output_variables(manifest):
        full = np.full((n, *tuple(len(coords[e]) for e in extra)), np.nan, np.float32)
        for a, rows, pred in parts:
            if name not in pred:
                raise KeyError(f"estimator {manifest.name} did not return '{name}' declared in its manifest")
            full[a : a + rows.size][rows] = pred[name]
        outputs[name] = full
    return outputs


def rule_hits(rule: dict, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """Where a manifest's flag rule fires: the output above ``threshold`` (or ``above``), or below ``below``."""
    values = outputs[rule["output"]]
    hit = np.zeros(values.shape, bool)
    with np.errstate(invalid="ignore"):
        if "threshold" in rule or "above" in rule:
            hit |= values > float(rule.get("above", rule.get("threshold")))
        if "below" in rule:
            hit |= values < float(rule["below"])
    return hit


def _flag_and_blank(manifest: Manifest, outputs: dict[str, np.ndarray], flags: np.ndarray, fit: np.ndarray) -> None:
    """FIT_FAILED where a fitted spectrum's outputs are not finite, the manifest's flag rules, and
    NaN outputs where no estimate was made (in place)."""
    n = flags.shape[0]
    failed = np.zeros(n, bool)
    for spec in manifest.outputs:
        failed |= fit & ~np.isfinite(outputs[spec.name].reshape(n, -1)).all(axis=1)
    flags[failed] |= FLAG_DTYPE(Flag.FIT_FAILED)
    for flag_name, rule in manifest.flag_rules:
        flags[rule_hits(rule, outputs)] |= FLAG_DTYPE(Flag[flag_name])
    not_fitted = (flags & FLAG_DTYPE(NOT_FITTED)) != 0
    for spec in manifest.outputs:  # no numbers where no estimate was made
        outputs[spec.name][not_fitted] = np.nan
        for err in (f"{spec.name}_err", f"{spec.name}_sys_err") if spec.error else ():
            if err in outputs:
                outputs[err][not_fitted] = np.nan


def stream_block(estimator: Estimator, n: int) -> int:
    """Spectra prepared and estimated together within a region: the estimator's batch (on CPUs a
    few hundred: the model input of a whole region, ~40 MB, would be a fresh mmap per region and
    leave the caches before the network reads it), the whole region for estimators without one
    and for input kinds whose regions go in whole (an image model's tile)."""
    batch = estimator.batch_size
    if not batch or estimator.manifest.input.whole_regions:
        return max(n, 1)
    return max(int(batch), 1)


def flag_counts(flags: np.ndarray) -> tuple[dict[str, int], int]:
    """Spectra per flag bit, and spectra fitted (no NOT_FITTED bit)."""
    counts = {f.name.lower(): int(((flags & FLAG_DTYPE(f)) != 0).sum()) for f in Flag}
    return counts, int(((flags & FLAG_DTYPE(NOT_FITTED)) == 0).sum())
