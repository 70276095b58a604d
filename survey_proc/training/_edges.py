"""Edge de-shrinkage: estimates that are unbiased at the edges of the SSP grid.

A network trained with a Gaussian likelihood predicts the posterior mean. Near the edges of the
library's age and [M/H] grid the posterior is cut off by the grid, so its mean lies inside: a truth
at the oldest age is predicted younger, one at the lowest [M/H] richer (the regression to the mean
the published models show). The fix is the calibration curve read backwards:

1. on calibration spectra (synthesised with their own seed, never trained on), tabulate
   ``g(true | noise)`` = median prediction for a true value, in bins of the spectrum's noise
   (1 / median S/N per pixel, measured from the input by :func:`noise_level`, so the correction
   grows as the data get worse; binning on the predicted uncertainty instead would select on the
   residual, which the uncertainty is correlated with);
2. shrink each cell's offset from the identity by its significance and smooth it (so noise in the
   middle of the grid does not become a correction), and make each row increasing with a slope of
   at least ``1 / max_slope`` (inverting it amplifies noise at most ``max_slope`` times), working
   outwards from the middle; rows below ``min_snr`` stay the identity;
3. at run time invert it: the estimate is the true value whose median prediction is the observed
   one, and the uncertainty is multiplied by the local slope of the inverse and by a factor per
   noise row that makes 68 % of the calibration spectra fall inside it.

Estimates may then step a little beyond the grid (as an unbiased estimator must); where the
calibration finds no significant pull, ``g`` is the identity and nothing changes. The table is fitted
in NumPy and applied inside the exported TorchScript module by :func:`apply_edge_table`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class EdgeTable:
    """Median prediction ``table[i, j]`` of true value ``true[j]`` for noise level ``noise[i]``."""

    noise: np.ndarray  #: (ne,) bin centres of the noise level (1 / median S/N per pixel)
    true: np.ndarray  #: (nt,) bin centres of the true value (label units)
    table: np.ndarray  #: (ne, nt) median prediction, increasing along the last axis
    err_factor: np.ndarray | None = None  #: (ne,) uncertainty calibration per noise row (None: ones)

    def factors(self) -> np.ndarray:
        return np.ones(self.noise.size) if self.err_factor is None else self.err_factor

    def to_manifest(self) -> dict:
        return {
            "noise": self.noise.tolist(),
            "true": self.true.tolist(),
            "table": self.table.tolist(),
            "err_factor": self.factors().tolist(),
        }


def fit_edge_table(
    pred: np.ndarray,
    true: np.ndarray,
    noise: np.ndarray,
    lo: float,
    hi: float,
    n_true: int = 24,
    n_err: int = 6,
    max_slope: float = 3.0,
    min_count: int = 8,
    snr: np.ndarray | None = None,
    min_snr: float = 0.0,
    err: np.ndarray | None = None,
) -> EdgeTable:
    """Tabulate the median prediction against the truth on [lo, hi], per quantile bin of ``noise``.

    Rows whose spectra have a median ``snr`` (S/N per Angstrom as the engine measures it) below
    ``min_snr`` are the identity (no correction): at low S/N the pull towards the middle is strong,
    and undoing it would multiply the scatter and depend on how well the calibration spectra
    resemble the data; the correction fades in between the last identity row and the first
    corrected one.

    Each cell's offset from the identity is shrunk by its significance (factor 1 - (se / offset)^2,
    se the standard error of the cell's median), so the middle of the grid, where the offsets are
    noise, stays the identity, then smoothed with a [1, 2, 1] / 4 kernel, so slopes (which scale the
    uncertainties) do not jump from cell to cell. Cells with fewer than
    ``min_count`` spectra are interpolated from their row's neighbours; rows are made increasing
    with steps of at least (bin width) / ``max_slope``.

    With the predictions' uncertainties ``err``, each row also gets a factor that makes the corrected
    uncertainties hold 68.27 % of its spectra (the uncertainties calibrated per noise level).
    """
    snr = np.full(np.shape(pred), np.inf) if snr is None else snr
    unc = np.full(np.shape(pred), np.nan) if err is None else err
    pred, true, err, snr, unc = (np.asarray(a, np.float64) for a in (pred, true, noise, snr, unc))
    ok = np.isfinite(pred) & np.isfinite(true) & np.isfinite(err)
    pred, true, err, snr, unc = pred[ok], true[ok], err[ok], snr[ok], unc[ok]
    if pred.size < n_true * n_err * min_count:
        raise ValueError(f"{pred.size} calibration spectra are too few for a {n_err} x {n_true} edge table")
    edges_e = np.quantile(err, np.linspace(0.0, 1.0, n_err + 1))
    edges_t = np.linspace(lo, hi, n_true + 1)
    centres_t = 0.5 * (edges_t[1:] + edges_t[:-1])
    step = (edges_t[1] - edges_t[0]) / max_slope
    ie = np.clip(np.searchsorted(edges_e, err, side="right") - 1, 0, n_err - 1)
    it = np.clip(np.searchsorted(edges_t, true, side="right") - 1, 0, n_true - 1)
    rows, centres_e = [], []
    for i in np.unique(ie):  # (tied uncertainties leave some quantile bins empty)
        row = ie == i
        centres_e.append(np.median(err[row]))
        offset = np.full(n_true, np.nan)
        for j in range(n_true):
            cell = row & (it == j)
            if cell.sum() >= min_count:
                p = pred[cell]
                d = np.median(p) - centres_t[j]
                se = 1.2533 * 1.4826 * np.median(np.abs(p - np.median(p))) / np.sqrt(cell.sum())
                offset[j] = d * max(0.0, 1.0 - (se / d) ** 2) if d != 0 else 0.0
        have = np.isfinite(offset)
        if not have.any() or np.median(snr[row]) < min_snr:
            rows.append(centres_t.copy())
            continue
        offset = np.interp(centres_t, centres_t[have], offset[have])
        padded = np.concatenate([offset[:1], offset, offset[-1:]])
        offset = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]  # [1, 2, 1] / 4 smoothing
        med = centres_t + offset
        rows.append(_increasing_from_middle(med, step))
    table = np.array(rows)
    factors = np.ones(len(rows))
    if np.isfinite(unc).any():
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
        for k, i in enumerate(np.unique(ie)):
            row = (ie == i) & np.isfinite(unc) & (unc > 0)
            if row.sum() >= min_count:  # this row alone, with unit uncertainties: (estimate, slope)
                est, slope = apply_edge_table(
                    t(pred[row]),
                    t(np.ones(row.sum())),
                    t(err[row]),
                    t(centres_e[k : k + 1]),
                    t(centres_t),
                    t(table[k : k + 1]),
                    t([1.0]),
                )
                factors[k] = np.quantile(np.abs(est.numpy() - true[row]) / (unc[row] * slope.numpy()), 0.6827)
    return EdgeTable(np.array(centres_e), centres_t, table, factors)


def _increasing_from_middle(values: np.ndarray, step: float) -> np.ndarray:
    """``values`` made increasing with steps of at least ``step``, working outwards from the middle
    (a flat stretch near an edge moves that edge outwards instead of shifting the whole curve)."""
    out = values.astype(np.float64).copy()
    mid = out.size // 2
    for j in range(mid + 1, out.size):
        out[j] = max(out[j], out[j - 1] + step)
    for j in range(mid - 1, -1, -1):
        out[j] = min(out[j], out[j + 1] - step)
    return out


def noise_level(x: torch.Tensor, i_flux: int, i_error: int, i_mask: int, stride: int = 8) -> torch.Tensor:
    """1 / (median S/N per pixel) of each model input row (n, C, L), over unmasked pixels with an
    error (every ``stride``-th pixel: the median of a few hundred is plenty for a noise level, and
    the full sort would cost a quarter of the network's time); a row without any gives +inf.
    TorchScript-able."""
    flux, error = x[:, i_flux, ::stride], x[:, i_error, ::stride]
    good = error > 0
    if i_mask >= 0:
        good = good & (x[:, i_mask, ::stride] < 0.5)
    ratio = torch.where(
        good, flux / torch.where(good, error, torch.ones_like(error)), torch.full_like(flux, float("nan"))
    )
    snr = torch.nanmedian(ratio, dim=1).values
    return torch.where(snr > 0, 1.0 / snr, torch.full_like(snr, float("inf")))


def apply_edge_table(
    value: torch.Tensor,
    err: torch.Tensor,
    noise: torch.Tensor,
    noise_centres: torch.Tensor,
    true: torch.Tensor,
    table: torch.Tensor,
    err_factor: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert the table: (estimate, uncertainty) for predictions ``value`` with uncertainties ``err``
    from spectra of noise level ``noise``.

    Per row of the table the inverse is piecewise linear (slope 1 beyond the tabulated range); the
    rows are blended linearly in ``noise`` (the nearest row outside their range); the uncertainty is
    multiplied by the slope and by the row's ``err_factor`` (blended likewise). TorchScript-able.
    """
    n_rows = noise_centres.shape[0]
    estimates = []
    slopes = []
    for i in range(n_rows):
        g = table[i].contiguous()
        j = torch.clamp(torch.searchsorted(g, value.contiguous()) - 1, 0, g.shape[0] - 2)
        g0, g1 = g[j], g[j + 1]
        t0, t1 = true[j], true[j + 1]
        slope = (t1 - t0) / torch.clamp(g1 - g0, min=1e-9)
        est = t0 + (value - g0) * slope
        below, above = value < g[0], value > g[-1]
        est = torch.where(below, true[0] + (value - g[0]), est)
        est = torch.where(above, true[-1] + (value - g[-1]), est)
        slope = torch.where(below | above, torch.ones_like(slope), slope)
        estimates.append(est)
        slopes.append(slope * err_factor[i])
    if n_rows == 1:
        est, slope = estimates[0], slopes[0]
    else:
        est_rows, slope_rows = torch.stack(estimates), torch.stack(slopes)  # (rows, n)
        e = torch.clamp(noise, float(noise_centres[0]), float(noise_centres[-1]))
        k = torch.clamp(torch.searchsorted(noise_centres.contiguous(), e.contiguous()) - 1, 0, n_rows - 2)
        e0, e1 = noise_centres[k], noise_centres[k + 1]
        w = (e - e0) / torch.clamp(e1 - e0, min=1e-12)
        cols = torch.arange(value.shape[0], device=value.device)
        est = est_rows[k, cols] * (1 - w) + est_rows[k + 1, cols] * w
        slope = slope_rows[k, cols] * (1 - w) + slope_rows[k + 1, cols] * w
    finite = torch.isfinite(value)  # a non-finite prediction passes through unchanged
    return torch.where(finite, est, value), torch.where(finite, err * slope, err)
