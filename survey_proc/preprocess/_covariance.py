"""The noise covariance that resampling onto a model grid leaves between neighbouring pixels.

:func:`~survey_proc.preprocess.prepare` interpolates each spectrum linearly onto the model grid and
gives each model pixel its own variance (the data's, with the squared weights), which is right pixel
by pixel; but two model pixels that draw on the same data pixel share its noise. A fit that treats
the pixels as independent then counts that noise twice: on a MUSE cube (1.25 A pixels) resampled to
64 km/s, ``--method fit``'s velocity and sigma scattered 1.18-1.23x their curvature errors over noise
realisations, and 1.0x on data already on the model grid (``python -m benchmarks.fit_errors``).

:func:`resampling_covariance` gives, per model pixel, that covariance relative to a locally constant
data variance (lags 0, 1, 2: enough while a model pixel is wider than half a data pixel), and
:func:`error_inflation` the factor by which it grows a fitted parameter's variance: exact for a
parameter whose derivative is constant across a few pixels (e.g. a flux scale), ~right for the
kinematics and the populations, whose derivatives change over several pixels.
"""

from __future__ import annotations

import numpy as np

from survey_proc.preprocess import _fused

#: the lags (model pixels) :func:`resampling_covariance` holds besides 0
LAGS = (1, 2)


def resampling_covariance(wave: np.ndarray, src: np.ndarray) -> np.ndarray:
    """(..., 1 + len(LAGS), L): the covariance of linearly interpolated model pixels at ``src`` (..., L)
    (their positions on the data grid ``wave`` (m,)), in units of the data's variance, between each
    model pixel and itself (``w0^2 + w1^2``) and the pixels ``LAGS`` further on (0 past the end).
    Compiled (:func:`~survey_proc.preprocess._fused.covariance_rows`) where the grids increase, as
    model grids do: with a redshift per spectrum, 0.02 ms a spectrum of the fit's grid against NumPy's
    0.7."""
    src = np.asarray(src, np.float64)
    wave = np.asarray(wave, np.float64)
    rows = src.reshape(-1, src.shape[-1])
    if _fused.available() and rows.size and (np.diff(rows, axis=1) > 0).all():
        out = np.empty((rows.shape[0], 1 + len(LAGS), rows.shape[1]))
        _fused.covariance_rows(wave, rows, np.asarray(LAGS, np.int64), out)
        return out.reshape(*src.shape[:-1], *out.shape[1:])
    return _resampling_covariance_numpy(wave, src)


def _resampling_covariance_numpy(wave: np.ndarray, src: np.ndarray) -> np.ndarray:
    """:func:`resampling_covariance` in NumPy (any ``src``)."""
    left = np.clip(np.searchsorted(wave, src) - 1, 0, wave.size - 2)
    w1 = np.clip((src - wave[left]) / (wave[left + 1] - wave[left]), 0.0, 1.0)
    w0 = 1.0 - w1
    out = np.zeros((*src.shape[:-1], 1 + len(LAGS), src.shape[-1]))
    out[..., 0, :] = w0 * w0 + w1 * w1
    for k, lag in enumerate(LAGS, start=1):
        a, b = left[..., :-lag], left[..., lag:]
        same = w0[..., :-lag] * w0[..., lag:] + w1[..., :-lag] * w1[..., lag:]  # the same two data pixels
        next_ = w1[..., :-lag] * w0[..., lag:]  # the right one of j is the left one of j + lag
        out[..., k, :-lag] = np.where(b == a, same, np.where(b == a + 1, next_, 0.0))
    return out


def error_inflation(cov: np.ndarray, good: np.ndarray) -> np.ndarray:
    """(n,) the factor a fitted parameter's variance grows by when pixels ``good`` (n, L), weighted by
    their own variance as independent, share the noise :func:`resampling_covariance` ``cov`` ((k, L)
    for all rows, or (n, k, L)) describes: 1 + 2 sum_j sum_lag W_j W_j+lag C_j,j+lag / sum_j W_j, with
    W = 1 / C_jj on the good pixels. 1 for a row without good pixels."""
    good = np.asarray(good, bool)
    cov = np.broadcast_to(cov, good.shape[:1] + cov.shape[-2:])
    w = np.where(good, 1.0 / np.maximum(cov[:, 0], 1e-12), 0.0)
    shared = np.zeros(good.shape[0])
    for k, lag in enumerate(LAGS, start=1):
        shared += (w[:, :-lag] * w[:, lag:] * cov[:, k, :-lag]).sum(1)
    total = w.sum(1)
    return np.where(total > 0, 1.0 + 2.0 * shared / np.where(total > 0, total, 1.0), 1.0)


def batch_error_inflation(meta, x: np.ndarray) -> np.ndarray:
    """(n,) :func:`error_inflation` of a batch ``x`` (n, 3, L: flux, error, mask channels) with its
    :class:`~survey_proc.preprocess.BatchMeta` (good pixels: unmasked, finite, error > 0): 1.46 for a
    MUSE cube's 1.25 A pixels at 64 km/s; 1 for data on the model grid, or without
    ``meta.noise_covariance``."""
    if meta is None or getattr(meta, "noise_covariance", None) is None:
        return np.ones(x.shape[0])
    with np.errstate(invalid="ignore"):
        good = (x[:, 2] < 0.5) & (x[:, 1] > 0) & np.isfinite(x[:, 0]) & np.isfinite(x[:, 1])
    return error_inflation(meta.noise_covariance, good)
