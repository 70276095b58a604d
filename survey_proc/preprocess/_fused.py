"""The hot path of :func:`survey_proc.preprocess.prepare`, fused per spectrum (Numba).

Two compiled passes replace some thirty NumPy passes over a block of spectra, whether they share
one model grid (a cube: one redshift) or each has its own (a catalogue: one redshift per object).
One reads each spectrum once (bad-pixel mask, S/N values, resampling), the other writes the model
input (normalisation, gap filling, channels). The two medians between them (S/N and
normalisation) are found by radix selection (:func:`median_rows`: counts of the values' leading
bits, then of the next bits among those holding the rank), about twice as fast as NumPy's
partition on these rows, which was faster than a compiled quickselect. The arithmetic is the
NumPy path's, operation by operation in float32, so the numbers are the same bit for bit
(``tests/test_preprocess.py`` compares both on damaged spectra); the NumPy path stays for
``window`` normalisation and where Numba is missing.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the NumPy path usable
    numba = None


def available() -> bool:
    """Whether the fused path can run (Numba imports)."""
    return numba is not None


def _left_column(wave, s, i):
    """(i, k) for the model pixel at ``s`` on the data grid ``wave`` (m,), walking on from ``i`` (s grows
    along a row): i = searchsorted(wave, s, "left"), k the data column left of s, clipped to [0, m - 2]
    (searchsorted puts NaN after everything)."""
    m = wave.size
    while i < m and wave[i] < s:
        i += 1
    return i, min(max((m if s != s else i) - 1, 0), m - 2)


def grid_rows(wave, src, left, right_w, outside):
    """The model grid ``src`` (g, L) (Angstrom, in the data's frame, increasing along each row) on the
    data grid ``wave`` (m,): ``left`` (g, L) the data column left of each model pixel (clipped to
    [0, m - 2]), ``right_w`` its float32 interpolation weight of ``left + 1``, ``outside`` True
    beyond the data. What NumPy's searchsorted gives, by one walk along both grids per row."""
    g, length = src.shape
    m = wave.size
    for r in range(g):
        i = 0
        for j in range(length):
            s = src[r, j]
            i, k = _left_column(wave, s, i)
            left[r, j] = k
            right_w[r, j] = np.float32((s - wave[k]) / (wave[k + 1] - wave[k]))
            outside[r, j] = s < wave[0] or s > wave[m - 1]


def covariance_rows(wave, src, lags, out):
    """:func:`~survey_proc.preprocess.resampling_covariance` of model grids ``src`` (g, L) (increasing
    along each row) on the data grid ``wave`` (m,), into ``out`` (g, 1 + len(lags), L) float64: the
    same numbers as its NumPy path, by one walk along both grids per row and no temporaries."""
    g, length = src.shape
    left = np.empty(length, np.int64)
    w1 = np.empty(length)
    for r in range(g):
        i = 0
        for j in range(length):
            s = src[r, j]
            i, k = _left_column(wave, s, i)
            left[j] = k
            w1[j] = min(max((s - wave[k]) / (wave[k + 1] - wave[k]), 0.0), 1.0)
        for j in range(length):
            a1 = w1[j]
            a0 = 1.0 - a1
            out[r, 0, j] = a0 * a0 + a1 * a1
            for q in range(lags.size):
                lag = lags[q]
                v = 0.0
                if j + lag < length:
                    b1 = w1[j + lag]
                    b0 = 1.0 - b1
                    if left[j + lag] == left[j]:  # the same two data pixels
                        v = a0 * b0 + a1 * b1
                    elif left[j + lag] == left[j] + 1:  # the right one of j is the left one of j + lag
                        v = a1 * b0
                out[r, 1 + q, j] = v


def mark_ranges(coord, ranges, out):
    """``out[r, j] |= lo <= coord[r, j] <= hi`` for each [lo, hi] of ``ranges`` (R, 2); the rows of
    ``coord`` (g, L) increase, so each range is two binary searches per row."""
    for r in range(coord.shape[0]):
        row = coord[r]
        for q in range(ranges.shape[0]):
            a = np.searchsorted(row, ranges[q, 0], side="left")
            b = np.searchsorted(row, ranges[q, 1], side="right")
            for j in range(a, b):
                out[r, j] = True


def resample_rows(
    flux,
    var,
    mask,
    left,
    right_w,
    static_bad,
    native,
    keep_pos,
    snr_values,
    m_flux,
    m_var,
    m_bad,
    filled,
    n_snr,
    n_good,
):
    """Phase 1, one spectrum at a time: flux, var, mask (n, m) are the data columns the grid
    touches; left, right_w, static_bad (g, L) the grid and native (g, m) the columns inside its
    range, for all spectra (g = 1) or one row per spectrum (g = n, per-object redshifts).

    Writes ``snr_values`` (n, m): flux / sqrt(var) of the good native pixels, +inf elsewhere;
    ``m_flux``, ``m_var``, ``m_bad`` (n, L): the spectra on the model grid; ``filled`` (n, K): m_flux
    at the K columns outside the static masks (``keep_pos`` (L,): their position, -1 for the others),
    +inf where bad; ``n_snr``, ``n_good`` (n,): the good entries (the medians' inputs, as
    ``masked_median`` builds them).
    """
    n, m = flux.shape
    length = left.shape[1]
    each = left.shape[0] > 1
    bad = np.empty(m, np.bool_)
    clean_f = np.empty(m, np.float32)
    clean_v = np.empty(m, np.float32)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    inf = np.float32(np.inf)
    for r in range(n):
        q = r if each else 0  # the row of the grid
        count = 0
        for c in range(m):
            f, v = flux[r, c], var[r, c]
            b = mask[r, c] or not np.isfinite(f) or not (v > 0 and v < np.inf)
            bad[c] = b
            clean_f[c] = zero if b else f
            clean_v[c] = one if b else v
            if not b and native[q, c]:
                snr_values[r, c] = clean_f[c] / np.sqrt(clean_v[c])
                count += 1
            else:
                snr_values[r, c] = inf
        n_snr[r] = count
        count = 0
        for j in range(length):
            lj = left[q, j]
            w1 = right_w[q, j]
            w0 = one - w1
            mb = static_bad[q, j] or (bad[lj] and w1 < 1) or (bad[lj + 1] and w1 > 0)
            m_bad[r, j] = mb
            m_flux[r, j] = clean_f[lj] * w0 + clean_f[lj + 1] * w1
            m_var[r, j] = clean_v[lj] * (w0 * w0) + clean_v[lj + 1] * (w1 * w1)
            if keep_pos[j] >= 0:
                filled[r, keep_pos[j]] = inf if mb else m_flux[r, j]
            if not mb:
                count += 1
        n_good[r] = count


def median_rows(filled, n_good, length, out):
    """:func:`survey_proc.preprocess.median_of_filled` in compiled code, the same numbers: ``filled``
    (n, K) holds each row's ``n_good`` good values and +inf elsewhere; the rows are of ``length``
    entries. The order statistics are found by :func:`_kth` instead of a partition (``filled`` is
    left as it is). ``out`` keeps its value for rows without good values."""
    n, width = filled.shape
    hist = np.empty(8192, np.int32)
    cand = np.empty(width, np.uint32)
    word = np.empty(1, np.uint32)  # a key's float32, read through a view
    two = np.float32(2.0)
    inf = np.float32(np.inf)
    last = width - 1
    for r in range(n):
        g = n_good[r]
        if g <= 0:
            continue
        upper = length // 2 - (length - g) // 2  # the rank among the good values (see masked_median)
        k = min(upper, last)
        row = filled[r]
        hi_v = _kth(row, k, hist, cand, word) if upper < g else inf
        if length % 2 == 0:
            lo_k = min(max(upper - 1, 0), last)  # the ranks median_of_filled reads
            if upper - 1 >= g:
                lo_v = inf
            elif lo_k == k and upper < g:
                lo_v = hi_v
            else:
                lo_v = _kth(row, lo_k, hist, cand, word)
            out[r] = (lo_v + hi_v) / two
        else:
            out[r] = hi_v


def _sortable(bits):
    """The float32 with these bits as an unsigned key in the same order (negative values reversed)."""
    return ~bits if bits >> np.uint32(31) else bits | np.uint32(0x80000000)


def _kth(row, k, hist, cand, word):
    """The k-th smallest (0-based) value of a float32 row, as a partition finds it (+inf and -inf in
    their places, NaN after everything): radix selection on order-preserving uint32 keys, 13 + 10
    + 9 bits. Each level counts the keys' next digit, keeps the keys whose digit holds rank k, and
    stops when one key is left; values spread over any range take at most three levels. ``hist``,
    ``cand`` and ``word`` (1,) are scratch."""
    bits = row.view(np.uint32)
    m = bits.size
    top = np.uint32(19)
    for j in range(8192):
        hist[j] = 0
    for i in range(m):
        hist[_sortable(bits[i]) >> top] += 1
    digit, k = _digit_of_rank(hist, 8192, k)
    c = 0
    for i in range(m):
        key = _sortable(bits[i])
        if key >> top == digit:
            cand[c] = key
            c += 1
    for shift, size in ((np.uint32(9), 1024), (np.uint32(0), 512)):
        if c == 1:
            break
        for j in range(size):
            hist[j] = 0
        low = np.uint32(size - 1)
        for i in range(c):
            hist[(cand[i] >> shift) & low] += 1
        digit, k = _digit_of_rank(hist, size, k)
        kept = 0
        for i in range(c):
            if ((cand[i] >> shift) & low) == digit:
                cand[kept] = cand[i]
                kept += 1
        c = kept
    key = cand[0]  # all keys left are equal
    word[0] = key & np.uint32(0x7FFFFFFF) if key >> np.uint32(31) else ~key
    return word.view(np.float32)[0]


def _digit_of_rank(hist, size, k):
    """The digit whose count holds rank k, and k's rank among the keys with that digit."""
    for j in range(size):
        if k < hist[j]:
            return np.uint32(j), k
        k -= hist[j]
    return np.uint32(size - 1), k


def write_channels(m_flux, m_var, m_bad, safe, x, i_flux, i_error, i_mask):
    """Phase 2: the model input ``x`` (n, C, L) from the resampled spectra and their float32
    normalisations ``safe`` (n,); channel indices ``i_*`` (-1: absent). Gaps of the flux channel
    are filled as :func:`survey_proc.preprocess.fill_gaps` does; no NaN or inf reaches ``x``."""
    n, length = m_flux.shape
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for r in range(n):
        if i_flux >= 0:
            out = x[r, i_flux]
            _fill_row(m_flux[r], m_bad[r], safe[r], out)
            for j in range(length):
                if not np.isfinite(out[j]):
                    out[j] = zero
        if i_error >= 0:
            for j in range(length):
                e = zero if m_bad[r, j] else np.sqrt(m_var[r, j]) / safe[r]
                x[r, i_error, j] = e if np.isfinite(e) else zero
        if i_mask >= 0:
            for j in range(length):
                x[r, i_mask, j] = one if m_bad[r, j] else zero


def _fill_row(m_flux, m_bad, safe, out):
    """``fill_gaps(m_flux / safe, ~m_bad)`` of one row, into ``out``."""
    length = m_flux.size
    prev = -1
    for j in range(length):
        if not m_bad[j]:
            out[j] = m_flux[j] / safe
            if j - prev > 1:
                _fill_gap(out, prev, j, length)
            prev = j
    if prev < length - 1:
        _fill_gap(out, prev, length, length)


def _fill_gap(out, p, q, length):
    """Fill ``out[p + 1:q]`` between the valid entries p and q as fill_gaps does: p = -1 or q =
    ``length`` where the row ends (the nearest valid value), zeros where the row has none."""
    start, stop = p + 1, q
    if p < 0 and q >= length:
        for j in range(length):
            out[j] = np.float32(0.0)
        return
    if p < 0:
        p = q
    if q >= length:
        q = p
    vp, vq = out[p], out[q]
    for j in range(start, stop):
        t = np.float32((j - p) / max(q - p, 1)) if q > p else np.float32(0.0)
        out[j] = vp + (vq - vp) * t


if numba is not None:
    _fill_gap = numba.njit(cache=True, nogil=True)(_fill_gap)
    _fill_row = numba.njit(cache=True, nogil=True)(_fill_row)
    _sortable = numba.njit(cache=True, nogil=True, inline="always")(_sortable)
    _digit_of_rank = numba.njit(cache=True, nogil=True)(_digit_of_rank)
    _kth = numba.njit(cache=True, nogil=True)(_kth)
    median_rows = numba.njit(cache=True, nogil=True)(median_rows)
    _left_column = numba.njit(cache=True, nogil=True, inline="always")(_left_column)
    grid_rows = numba.njit(cache=True, nogil=True)(grid_rows)
    covariance_rows = numba.njit(cache=True, nogil=True)(covariance_rows)
    mark_ranges = numba.njit(cache=True, nogil=True)(mark_ranges)
    resample_rows = numba.njit(cache=True, nogil=True)(resample_rows)
    write_channels = numba.njit(cache=True, nogil=True)(write_channels)
