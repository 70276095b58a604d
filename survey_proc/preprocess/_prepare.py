"""Spectra -> a spectral model's input: resampling onto the model grid, masks, normalisation, S/N, flags.

:func:`prepare` is the engine's hot path and the training sets' too. Blocks of rows go either
through NumPy (:func:`_prepare_rows`) or through the compiled passes of :mod:`._fused`
(:func:`_prepare_fused_rows`), which give the same numbers bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from survey_proc.preprocess import _fused
from survey_proc.preprocess._kinds import Prepared
from survey_proc.preprocess._numeric import fill_gaps, in_ranges, masked_median, snr_per_angstrom
from survey_proc.stores import Flag

if TYPE_CHECKING:
    from survey_proc.preprocess._spectrum import InputSpec


@dataclass(frozen=True)
class _Resampling:
    """How a model grid samples a data grid: shared by all rows (g = 1) or one row per spectrum.

    lo, hi : the data columns the model grid touches (a crop of the data); ``width`` all columns.
    left : (g, L) data column (relative to ``lo``) left of each model pixel; ``right_w`` its
        interpolation weight of column ``left + 1``.
    static_bad : (g, L) model pixels outside the data or inside a declared mask.
    native : (g, hi - lo) data columns inside the model's range (S/N is measured on them).
    coverage : (g,) fraction of the model grid the data cover.
    """

    lo: int
    hi: int
    width: int
    left: np.ndarray
    right_w: np.ndarray
    static_bad: np.ndarray
    native: np.ndarray
    coverage: np.ndarray


def _ranges(ranges: Sequence[Sequence[float]]) -> np.ndarray:
    return np.asarray(ranges, np.float64).reshape(-1, 2)


def _resampling(
    wave: np.ndarray, redshift: float | np.ndarray, n: int, spec: InputSpec, compiled: bool | None = None
) -> _Resampling:
    """How ``spec``'s grid samples the data grid ``wave`` at ``redshift`` (scalar or (n,)).

    ``compiled``: with per-object redshifts (a grid per row), walk the grids in compiled code
    (:func:`._fused.grid_rows`, the same numbers; ~10x cheaper than NumPy's
    searchsorted and range tests on (n, L) arrays); None: where Numba is present, False: NumPy only.
    """
    z = np.asarray(redshift, np.float64)
    if z.ndim == 0 or np.all(z == z.flat[0]):
        z1 = np.full((1, 1), 1.0 + float(z.flat[0]))  # one grid shared by all rows: cheaper gathers
    else:
        z1 = (1.0 + np.broadcast_to(z, (n,)))[:, None]
    model_wave = spec.wave[None, :]
    # the model grid expressed in the data's frame (= the observed frame: masks_observed apply)
    src = model_wave * z1 if spec.frame == "rest" else np.broadcast_to(model_wave, (z1.shape[0], model_wave.size))
    rest = model_wave if spec.frame == "rest" else model_wave / z1  # the model grid in the rest frame
    rows_z = np.broadcast_to(z, (n,)) if z1.shape[0] > 1 else z.reshape(-1)[:1]
    coverage = spec.coverage(wave[0], wave[-1], rows_z)  # as the store's refusal judges it
    if z1.shape[0] > 1 and compiled is not False and _fused.available():
        src = np.ascontiguousarray(src)
        idx = np.empty(src.shape, np.int64)
        w = np.empty(src.shape, np.float32)
        static_bad = np.empty(src.shape, bool)
        _fused.grid_rows(wave, src, idx, w, static_bad)
        if rest.shape[0] == 1:  # a rest-frame model: its rest-frame masks are the same for every row
            static_bad |= in_ranges(rest, spec.masks_rest)
        elif spec.masks_rest:
            _fused.mark_ranges(np.ascontiguousarray(rest), _ranges(spec.masks_rest), static_bad)
        if spec.masks_observed:
            _fused.mark_ranges(src, _ranges(spec.masks_observed), static_bad)
    else:
        idx = np.clip(np.searchsorted(wave, src) - 1, 0, wave.size - 2)
        w = ((src - wave[idx]) / (wave[idx + 1] - wave[idx])).astype(np.float32)
        static_bad = (src < wave[0]) | (src > wave[-1])
        static_bad |= in_ranges(rest, spec.masks_rest)
        static_bad |= in_ranges(src, spec.masks_observed)
    lo, hi = int(idx.min()), int(idx.max()) + 2
    crop = wave[None, lo:hi]
    native = (crop >= src[:, :1]) & (crop <= src[:, -1:])
    return _Resampling(lo, hi, wave.size, idx - lo, w, static_bad, native, coverage)


def _gather(a: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return np.take(a, cols[0], axis=1) if cols.shape[0] == 1 else np.take_along_axis(a, cols, 1)


def _flag_and_normalise(
    rs: _Resampling, spec: InputSpec, n_bad: np.ndarray, med: np.ndarray, flags: np.ndarray, norm: np.ndarray
) -> np.ndarray:
    """Flags from coverage, masked fraction (``n_bad`` of the model's pixels) and the normalisation
    ``med`` (flux units), set in ``flags``; ``norm`` filled; returns the float32 divisors (1 where
    ``med`` is unusable)."""
    med = med + np.float32(0.0)  # a median of zeros is +0.0 whichever zeros the row has
    flags[np.broadcast_to(rs.coverage < spec.min_coverage, flags.shape)] |= np.uint8(Flag.OUT_OF_RANGE)
    flags[n_bad / rs.left.shape[1] > spec.max_masked_fraction] |= np.uint8(Flag.MASKED)
    usable = np.isfinite(med) & (med > 0)
    flags[~usable] |= np.uint8(Flag.NO_DATA)  # includes spectra without any valid pixel
    norm[:] = np.where(np.isfinite(med), med, np.nan)
    return np.where(usable, med, 1.0).astype(np.float32)


def _prepare_rows(
    flux: np.ndarray,
    var: np.ndarray,
    mask: np.ndarray,
    rs: _Resampling,
    spec: InputSpec,
    step: float,
    x: np.ndarray,
    flags: np.ndarray,
    snr: np.ndarray,
    norm: np.ndarray,
) -> None:
    """:func:`prepare` for a block of rows (already cropped to the columns of ``rs``), in place."""
    with np.errstate(invalid="ignore"):
        bad = mask | ~np.isfinite(flux) | ~((var > 0) & (var < np.inf))
    clean_flux = np.where(bad, np.float32(0.0), flux)  # 0 * NaN would leak NaN through a zero weight
    clean_var = np.where(bad, np.float32(1.0), var)
    left, w1 = rs.left, rs.right_w
    w0 = np.float32(1.0) - w1
    m_bad = rs.static_bad | (_gather(bad, left) & (w1 < 1)) | (_gather(bad, left + 1) & (w1 > 0))
    m_flux = _gather(clean_flux, left) * w0 + _gather(clean_flux, left + 1) * w1
    m_var = _gather(clean_var, left) * (w0 * w0) + _gather(clean_var, left + 1) * (w1 * w1)
    good = ~m_bad
    safe = _flag_and_normalise(rs, spec, m_bad.sum(axis=1), normalisation(m_flux, good, spec), flags, norm)[:, None]
    snr[:] = snr_per_angstrom(clean_flux, clean_var, ~bad & rs.native, step, rs.width) + 0.0  # +0.0, not -0.0

    for k, name in enumerate(spec.channels):
        if name == "flux":
            x[:, k] = fill_gaps(m_flux / safe, good)
        elif name == "error":
            x[:, k] = np.where(good, np.sqrt(m_var) / safe, np.float32(0.0))
        elif name == "mask":
            x[:, k] = m_bad
        else:
            raise ValueError(f"unknown input channel {name!r}")


def _prepare_fused_rows(
    flux: np.ndarray,
    var: np.ndarray,
    mask: np.ndarray,
    rs: _Resampling,
    spec: InputSpec,
    step: float,
    x: np.ndarray,
    flags: np.ndarray,
    snr: np.ndarray,
    norm: np.ndarray,
) -> None:
    """:func:`_prepare_rows` in compiled passes and compiled medians (same numbers), for rows sharing
    one grid or (per-object redshifts) each on its own."""
    n, length = x.shape[0], rs.left.shape[1]
    snr_values = np.empty(flux.shape, np.float32)
    m_flux, m_var = np.empty((n, length), np.float32), np.empty((n, length), np.float32)
    m_bad = np.empty((n, length), bool)
    keep = ~rs.static_bad.all(axis=0)  # the medians leave out the columns bad in every row (the values
    keep_pos = np.where(keep, np.cumsum(keep) - 1, -1)  # do not depend on it: bad entries are +inf)
    filled = np.empty((n, int(keep.sum())), np.float32)
    n_snr, n_good = np.empty(n, np.int64), np.empty(n, np.int64)
    _fused.resample_rows(
        flux,
        var,
        mask,
        rs.left,
        rs.right_w,
        rs.static_bad,
        rs.native,
        keep_pos,
        snr_values,
        m_flux,
        m_var,
        m_bad,
        filled,
        n_snr,
        n_good,
    )
    snr_median = np.full(n, np.nan, np.float32)
    _fused.median_rows(snr_values, n_snr, rs.width, snr_median)
    snr[:] = snr_median / np.sqrt(step) + 0.0  # +0.0, not -0.0
    med = np.full(n, np.nan, np.float32)
    _fused.median_rows(filled, n_good, length, med)
    safe = _flag_and_normalise(rs, spec, length - n_good, med, flags, norm)
    channel = {name: (spec.channels.index(name) if name in spec.channels else -1) for name in KNOWN_CHANNELS}
    _fused.write_channels(m_flux, m_var, m_bad, safe, x, channel["flux"], channel["error"], channel["mask"])


#: input channels a spectral model may declare
KNOWN_CHANNELS = ("flux", "error", "mask")


def _fused_applies(spec: InputSpec) -> bool:
    """The fused pass covers ``median`` normalisation and the known channels."""
    return _fused.available() and spec.normalise == "median" and all(name in KNOWN_CHANNELS for name in spec.channels)


#: normalisation methods an InputSpec may declare
NORMALISATIONS = ("median", "window")


def normalisation(flux: np.ndarray, good: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Per-row normalisation (flux units) of spectra on the model grid, as ``spec`` declares.

    ``median``: masked median over the whole model range. ``window``: masked median over
    ``spec.normalise_window`` (Angstrom, model frame), e.g. 4950-5050 A for "normalised at 5000 A";
    a row with no good pixel there gets NaN (and is flagged no_data by :func:`prepare`).
    """
    if spec.normalise == "median":
        return masked_median(flux, good)
    if spec.normalise == "window":
        if spec.normalise_window is None:
            raise ValueError("normalise 'window' needs normalise_window (Angstrom, model frame)")
        lo, hi = spec.normalise_window
        sel = (spec.wave >= lo) & (spec.wave <= hi)
        if not sel.any():
            raise ValueError(
                f"normalise_window {lo}-{hi} A lies outside the model grid {spec.wave_start}-{spec.wave_stop} A"
            )
        return masked_median(flux[:, sel], good[:, sel])
    raise ValueError(f"unknown normalisation {spec.normalise!r} (known: {', '.join(NORMALISATIONS)})")


def prepare(
    flux: np.ndarray,
    var: np.ndarray,
    mask: np.ndarray,
    wave: np.ndarray,
    redshift: float | np.ndarray,
    spec: InputSpec,
    block: int = 128,
    fused: bool | None = None,
) -> Prepared:
    """Turn data spectra into a model's input.

    Parameters
    ----------
    flux, var, mask : (n, nwave) flux density, its variance, bad-pixel mask (True = bad).
    wave : (nwave,) data wavelengths (Angstrom, observed frame unless the data are rest frame).
    redshift : systemic redshift, scalar or (n,); use 0 for data already in the rest frame.
    spec : the model's :class:`InputSpec`.
    block : rows processed together (small enough for the CPU cache; the result does not depend on it).
    fused : compute each spectrum in compiled passes, on one grid for all or one per spectrum
        (:mod:`survey_proc.preprocess._fused`, the same numbers); None: where it applies and Numba is
        present, False: NumPy only.

    Only the data columns the model grid touches are read; pixels are linearly interpolated onto
    the model grid (variances with the squared weights), declared masks applied, each spectrum
    divided by its median over unmasked model pixels, gaps filled by interpolation in the flux
    channel, and flags set for spectra without data, outside the model range or mostly masked.
    """
    flux = np.asarray(flux, np.float32)
    var = np.asarray(var, np.float32)
    mask = np.asarray(mask, bool)
    wave = np.asarray(wave, np.float64)
    n = flux.shape[0]
    z = np.asarray(redshift, np.float64)
    # one grid for all rows, or (per-object redshifts) a grid per row, made a block at a time so its
    # (rows, model pixels) arrays stay as small as the block's data
    if z.ndim and z.size not in (1, n):
        raise ValueError(f"{z.size} redshifts for {n} spectra")
    if z.size == 0:  # no spectra (and no redshifts): any grid will do
        z = np.zeros(())
    shared = _resampling(wave, z, n, spec) if z.ndim == 0 or np.all(z == z.flat[0]) else None
    step = float(np.median(np.diff(wave)))
    x = np.empty((n, len(spec.channels), spec.wave.size), np.float32)
    flags = np.zeros(n, np.uint8)
    snr = np.empty(n, np.float64)
    norm = np.empty(n, np.float64)
    compiled = fused is not False and _fused_applies(spec)
    rows = _prepare_fused_rows if compiled else _prepare_rows
    for a in range(0, n, block):
        b = min(a + block, n)
        rs = shared if shared is not None else _resampling(wave, np.broadcast_to(z, (n,))[a:b], b - a, spec)
        rows(
            flux[a:b, rs.lo : rs.hi],
            var[a:b, rs.lo : rs.hi],
            mask[a:b, rs.lo : rs.hi],
            rs,
            spec,
            step,
            x[a:b],
            flags[a:b],
            snr[a:b],
            norm[a:b],
        )
    if not compiled and not np.isfinite(x).all():  # the compiled pass writes no NaN or inf
        x[~np.isfinite(x)] = 0.0
    return Prepared(x=x, flags=flags, snr=snr, norm=norm)
