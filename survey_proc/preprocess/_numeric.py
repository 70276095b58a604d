"""Row-wise numerics of preprocessing: ranges, gap filling, masked medians, S/N per Angstrom (NumPy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def in_ranges(wave: np.ndarray, ranges: Sequence[Sequence[float]]) -> np.ndarray:
    """Boolean array: wave inside any [lo, hi] range (broadcasts over leading dims of ``wave``)."""
    out = np.zeros(np.shape(wave), bool)
    for lo, hi in ranges:
        out |= (wave >= lo) & (wave <= hi)
    return out


def fill_gaps(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace invalid entries of each row by linear interpolation between the nearest valid ones.

    Leading/trailing gaps take the nearest valid value; rows without any valid value become 0.
    Works on the runs of invalid entries, so its cost grows with the number of invalid entries.
    """
    values = np.ascontiguousarray(values, np.float32)
    valid = np.ascontiguousarray(valid, bool)
    out = np.where(valid, values, np.float32(0.0))
    if out.ndim != 2 or out.size == 0:
        return out
    _n, length = out.shape
    bad = np.flatnonzero(~valid.ravel())
    if bad.size == 0:
        return out
    col = bad % length
    # runs of consecutive invalid entries within a row
    new_run = np.ones(bad.size, bool)
    new_run[1:] = (np.diff(bad) != 1) | (col[1:] == 0)
    first = np.flatnonzero(new_run)
    run_start = bad[first]
    run_end = bad[np.append(first[1:], bad.size) - 1]
    has_left = (run_start % length) != 0
    has_right = (run_end % length) != length - 1
    left = np.where(has_left, run_start - 1, run_end + 1)  # nearest valid entry on each side,
    right = np.where(has_right, run_end + 1, left)  # or the other side's at a row edge
    whole_row = ~has_left & ~has_right
    flat = values.ravel()
    run = np.cumsum(new_run) - 1
    p, q = left[run], right[run]
    if whole_row.any():  # rows without any valid entry: point at themselves, zeroed below
        p, q = np.where(whole_row[run], bad, p), np.where(whole_row[run], bad, q)
    vp, vq = flat[p], flat[q]
    t = np.where(q > p, (bad - p) / np.maximum(q - p, 1), 0.0).astype(np.float32)
    filled = vp + (vq - vp) * t
    if whole_row.any():
        filled[whole_row[run]] = 0.0
    out.reshape(-1)[bad] = filled
    return out


def masked_median(values: np.ndarray, good: np.ndarray, width: int | None = None) -> np.ndarray:
    """Median of each row over ``good`` entries (NaN for rows without any), vectorised.

    Defined as the plain median of the row (of ``width`` entries, default the row length; columns
    beyond are bad) with its bad entries replaced alternately by +inf and -inf, which lands on the
    good values; with an odd number of bad entries it is the upper of the two middle good values.
    Computed as one or two order statistics of the good values at ranks that depend only on the
    number of bad entries, so rows with the same count share one ``np.partition``.
    """
    values = np.asarray(values)
    good = np.asarray(good, bool)
    n = values.shape[0]
    length = int(width if width is not None else values.shape[-1])
    out = np.full(n, np.nan, np.result_type(values.dtype, np.float32))
    keep = good.any(axis=0)
    if n == 0 or not keep.any():
        return out
    n_good = good.sum(axis=-1)
    dtype = values.dtype if values.dtype.kind == "f" else out.dtype
    if keep.all():
        filled, bad = np.array(values, dtype=dtype), ~good
    else:  # columns bad in every row (declared masks) do not take part
        filled = np.compress(keep, values, axis=-1).astype(dtype, copy=False)
        bad = ~np.compress(keep, good, axis=-1)
    np.copyto(filled, np.inf, where=bad)  # one copy of the values, partitioned in place below
    return median_of_filled(filled, n_good, length, out)


def median_of_filled(filled: np.ndarray, n_good: np.ndarray, length: int, out: np.ndarray) -> np.ndarray:
    """:func:`masked_median` from ``filled`` (n, k): each row's good values, +inf elsewhere
    (partitioned in place), ``n_good`` (n,) good values per row, rows of ``length`` entries; into
    ``out`` (n,), which keeps its value (NaN) for rows without good values."""
    n = filled.shape[0]
    # bad entries: (width - n_good) // 2 at -inf (sorted first), the rest at +inf (sorted last)
    upper = length // 2 - (length - n_good) // 2  # rank among the good values
    lower = upper - 1 if length % 2 == 0 else upper
    last = filled.shape[-1] - 1
    for rank in np.unique(upper[n_good > 0]):
        rows = np.flatnonzero((upper == rank) & (n_good > 0))
        k = min(int(rank), last)
        part = filled if rows.size == n else filled[rows]
        part.partition(k, axis=-1)  # in place: partitioning permutes a row, keeping its values
        g = n_good[rows]
        hi_v = np.where(rank < g, part[:, k], np.inf).astype(out.dtype)
        if length % 2 == 0:
            # the next smaller order statistic is the largest entry left of the partition point
            lo_k = min(max(int(rank) - 1, 0), last)
            below = part[:, lo_k] if lo_k == k else part[:, :k].max(axis=-1)
            lo_v = np.where(lower[rows] < g, below, np.inf).astype(out.dtype)
            out[rows] = np.mean(np.stack([lo_v, hi_v], axis=-1), axis=-1)
        else:
            out[rows] = hi_v
    return out


def snr_per_angstrom(
    flux: np.ndarray, var: np.ndarray, good: np.ndarray, step: float, width: int | None = None
) -> np.ndarray:
    """Median S/N per Angstrom of each row over ``good`` pixels of width ``step`` Angstrom.

    ``width``: the length of the rows the median is defined over (see :func:`masked_median`).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = flux / np.sqrt(var)
    return masked_median(ratio, good, width) / np.sqrt(step)
