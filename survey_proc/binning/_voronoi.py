"""Voronoi binning of a cube to a target S/N (Cappellari & Copin 2003, the ``vorbin`` package): the numerics.

S/N is per Angstrom and measured exactly as the engine's ``snr`` map is (median over good pixels,
:func:`survey_proc.preprocess.snr_per_angstrom`), so ``--target-snr 30`` means the S/N a run will
report for the bin. Noise of neighbouring spaxels is taken as independent (no covariance term).
Bins are numbered in the order they complete when the cube is read a chunk at a time
(:func:`order_bins_by_chunk`), so that :mod:`._catalogue` writes them as it reads.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import zarr

from survey_proc import config
from survey_proc.errors import CubeError, OptionError, SurveyProcError
from survey_proc.preprocess import masked_median, snr_per_angstrom
from survey_proc.stores import SPECTRAL_DIM

#: the variable of a binned catalogue mapping each spaxel to its bin (-1: in no bin)
PIXEL_MAP = "bin_id"


@dataclass
class BinConfig:
    """Options of ``survey-proc bin`` (None: the dask.config default ``survey-proc.bin.*``).

    target_snr, min_snr : S/N per Angstrom of a bin, and under which a spaxel is left out.
    wave_range : rest-frame Angstrom (lo, hi) where S/N is measured; None: the whole cube.
    objects_per_chunk : bins per chunk of the catalogue (= per region when it is run).
    covariance_alpha : the noise of a bin of N spaxels is that of independent spaxels times
        (1 + alpha log10 N) (Garcia-Benito et al. 2015, CALIFA: alpha = 1.07); resampled IFU cubes
        (MUSE, CALIFA, MaNGA) have correlated neighbouring spaxels; 0: independent.
    """

    target_snr: float | None = None
    min_snr: float | None = None
    wave_range: tuple[float, float] | None = None
    objects_per_chunk: int | None = None
    covariance_alpha: float | None = None
    overwrite: bool = False

    def check(self) -> None:
        """Raise :class:`OptionError` for thresholds no binning can reach (on a resolved config)."""
        if not (np.isfinite(self.target_snr) and self.target_snr > 0):
            raise OptionError(f"--target-snr {self.target_snr:g}: give a finite S/N per Angstrom > 0 (e.g. 30)")
        if not (np.isfinite(self.min_snr) and self.min_snr >= 0):
            raise OptionError(f"--min-snr {self.min_snr:g}: give a finite S/N per Angstrom >= 0")
        if self.wave_range is not None and not (
            np.all(np.isfinite(self.wave_range)) and self.wave_range[0] < self.wave_range[1]
        ):
            raise OptionError(f"--wave-range {self.wave_range}: expected LO < HI, finite")
        if not (np.isfinite(self.covariance_alpha) and self.covariance_alpha >= 0):
            raise OptionError(f"--covariance-alpha {self.covariance_alpha:g}: give a finite value >= 0 (CALIFA: 1.07)")

    def resolved(self) -> BinConfig:
        get = config.get
        wr = self.wave_range if self.wave_range is not None else get("bin.wave-range")
        return BinConfig(
            target_snr=float(self.target_snr if self.target_snr is not None else get("bin.target-snr")),
            min_snr=float(self.min_snr if self.min_snr is not None else get("bin.min-snr")),
            wave_range=tuple(float(w) for w in wr) if wr else None,
            objects_per_chunk=int(self.objects_per_chunk or get("bin.objects-per-chunk")),
            covariance_alpha=float(
                self.covariance_alpha if self.covariance_alpha is not None else get("bin.covariance-alpha", 0.0)
            ),
            overwrite=self.overwrite,
        )


def spaxel_signal_noise(
    flux: np.ndarray, var: np.ndarray, mask: np.ndarray, in_window: np.ndarray, step: float
) -> tuple[np.ndarray, np.ndarray]:
    """Signal (median flux) and noise per Angstrom of spectra (n, nwave) inside ``in_window`` (nwave,).

    ``signal / noise`` is :func:`snr_per_angstrom`; spectra without good pixels get NaN.
    """
    with np.errstate(invalid="ignore"):
        good = ~np.asarray(mask, bool) & np.isfinite(flux) & np.isfinite(var) & (var > 0) & in_window[None, :]
    signal = masked_median(np.asarray(flux, np.float64), good)
    snr = snr_per_angstrom(np.asarray(flux, np.float64), np.asarray(var, np.float64), good, step)
    with np.errstate(divide="ignore", invalid="ignore"):
        noise = signal / snr
    return signal, noise


def read_block(grp: zarr.Group, block: tuple[int, int, int, int]) -> tuple[np.ndarray, ...]:
    """``flux``, ``var``, ``mask`` of the spaxels (y0:y1, x0:x1) of an open cube."""
    y0, y1, x0, x1 = block
    return tuple(np.asarray(grp[v][y0:y1, x0:x1]) for v in ("flux", "var", "mask"))


def chunk_blocks(ny: int, nx: int, cy: int, cx: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of the spatial chunks of a cube, row-major."""
    return [(y0, min(y0 + cy, ny), x0, min(x0 + cx, nx)) for y0 in range(0, ny, cy) for x0 in range(0, nx, cx)]


def covariance_factor(npix: np.ndarray | int, alpha: float) -> np.ndarray:
    """How much larger the noise of a co-add of ``npix`` spaxels is than if they were independent:
    1 + alpha log10(npix) (Garcia-Benito et al. 2015)."""
    return 1.0 + alpha * np.log10(np.maximum(np.asarray(npix, np.float64), 1.0))


def voronoi_bins(
    signal: np.ndarray, noise: np.ndarray, target_snr: float, min_snr: float, alpha: float = 0.0
) -> np.ndarray:
    """Bin number (ny, nx) of every spaxel (-1: left out) from Voronoi binning to ``target_snr``.

    Spaxels with no data or S/N below ``min_snr`` are left out. If every spaxel already reaches the
    target, each is its own bin. ``alpha``: the noise of a bin grows by :func:`covariance_factor`.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = signal / noise
    usable = np.isfinite(snr) & (snr >= min_snr) & (noise > 0) & (signal > 0)
    bin_id = np.full(signal.shape, -1, np.int32)
    yy, xx = np.nonzero(usable)
    if yy.size == 0:
        raise CubeError(f"no spaxel reaches the binning minimum S/N {min_snr:g} per Angstrom: nothing to bin")
    s, n = signal[usable], noise[usable]
    if np.min(s / n) >= target_snr:
        bin_id[usable] = np.arange(yy.size, dtype=np.int32)
        return bin_id
    total = s.sum() / np.sqrt((n**2).sum()) / covariance_factor(s.size, alpha)
    if total < target_snr:
        raise CubeError(
            f"all {yy.size} usable spaxels together reach S/N {total:.1f} per Angstrom, below "
            f"the target {target_snr:g}: lower --target-snr"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vorbin announces its successor (powerbin) on every call
        try:
            from vorbin.voronoi_2d_binning import voronoi_2d_binning
        except ImportError as exc:
            raise SurveyProcError(
                "survey-proc bin needs the vorbin package, which is not installed (pip install 'survey-proc[binning]')"
            ) from exc
        classe, *_ = voronoi_2d_binning(
            xx.astype(np.float64),
            yy.astype(np.float64),
            s,
            n,
            target_snr,
            cvt=True,
            pixelsize=1.0,
            plot=False,
            quiet=True,
            wvt=False,
            **({"sn_func": _correlated_snr(alpha)} if alpha > 0 else {}),
        )
    bin_id[usable] = np.asarray(classe, np.int32)
    return bin_id


def _correlated_snr(alpha: float):
    """vorbin's S/N of a bin with the covariance factor."""

    def sn_func(index, signal, noise):
        return np.sum(signal[index]) / np.sqrt(np.sum(noise[index] ** 2)) / covariance_factor(np.size(index), alpha)

    return sn_func


def order_bins_by_chunk(bin_id: np.ndarray, cy: int, cx: int) -> tuple[np.ndarray, np.ndarray]:
    """Relabel bins so they complete in chunk order; returns (new bin_id, last chunk of each new bin).

    A bin's *last chunk* is the last chunk (row-major) holding one of its spaxels. Numbering bins by
    last chunk, then centroid, makes the bins completed after reading chunk k a contiguous block of
    labels, so the co-added spectra are written in order while only bins crossing the current
    chunk are held in memory.
    """
    ny, nx = bin_id.shape
    yy, xx = np.indices((ny, nx))
    chunk = (yy // cy) * (-(-nx // cx)) + xx // cx
    inside = bin_id >= 0
    labels = bin_id[inside]
    nbins = int(labels.max()) + 1
    last = np.full(nbins, -1, np.int64)
    np.maximum.at(last, labels, chunk[inside])
    npix = np.bincount(labels, minlength=nbins)
    ybar = np.bincount(labels, yy[inside], minlength=nbins) / npix
    xbar = np.bincount(labels, xx[inside], minlength=nbins) / npix
    order = np.lexsort((xbar, ybar, last))
    rank = np.empty(nbins, np.int32)
    rank[order] = np.arange(nbins, dtype=np.int32)
    new = np.where(inside, rank[np.maximum(bin_id, 0)], -1).astype(np.int32)
    return new, last[order]


def coadd(
    flux: np.ndarray, var: np.ndarray, mask: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sums over spectra (m, nwave) sharing a label: (labels, sum flux, sum var, good count) per label.

    Bad pixels (masked, NaN, var <= 0) are left out of the sums and counted out of ``good``.
    """
    with np.errstate(invalid="ignore"):
        good = ~np.asarray(mask, bool) & np.isfinite(flux) & np.isfinite(var) & (var > 0)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    g = good[order]
    f = np.where(g, flux[order], 0.0).astype(np.float64)
    v = np.where(g, var[order], 0.0).astype(np.float64)
    return (
        sorted_labels[starts],
        np.add.reduceat(f, starts, axis=0),
        np.add.reduceat(v, starts, axis=0),
        np.add.reduceat(g.astype(np.int32), starts, axis=0),
    )


def finish_bins(
    sum_flux: np.ndarray, sum_var: np.ndarray, n_good: np.ndarray, npix: np.ndarray, alpha: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Co-added flux, its variance and mask of bins (k, nwave) of ``npix`` spaxels each.

    Where some spaxels are bad at a wavelength the sum of the good ones is scaled by
    ``npix / n_good`` (variance by its square); a wavelength where fewer than half the spaxels are
    good is masked. ``alpha`` > 0: the variance grows by the square of :func:`covariance_factor`.
    """
    npix = np.asarray(npix, np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(n_good > 0, npix / n_good, 0.0)
    bad = 2 * n_good < npix
    flux = np.where(bad, np.nan, sum_flux * scale).astype(np.float32)
    corr = covariance_factor(npix, alpha) ** 2
    var = np.where(bad, np.nan, sum_var * scale**2 * corr).astype(np.float32)
    return flux, var, bad


def measure_snr(
    cube_path: str,
    wave: np.ndarray,
    redshift: float,
    wave_range: tuple[float, float] | None,
    chunks: tuple[int, int],
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Signal and noise per Angstrom (ny, nx) of every spaxel, one chunk at a time."""
    grp = zarr.open_group(cube_path, mode="r")
    rest = wave / (1.0 + redshift) if grp[SPECTRAL_DIM].attrs.get("frame", "observed") == "observed" else wave
    window = np.ones(wave.size, bool) if wave_range is None else (rest >= wave_range[0]) & (rest <= wave_range[1])
    if window.sum() < 2:
        raise CubeError(
            f"{cube_path}: the S/N window {wave_range} (rest frame) holds {int(window.sum())} "
            f"wavelengths of the cube ({rest[0]:.0f}-{rest[-1]:.0f} A rest frame)"
        )
    step = float(np.median(np.diff(wave)))
    signal = np.full(shape, np.nan)
    noise = np.full(shape, np.nan)
    for block in chunk_blocks(*shape, *chunks):
        y0, y1, x0, x1 = block
        flux, var, mask = read_block(grp, block)
        n = (y1 - y0) * (x1 - x0)
        s, e = spaxel_signal_noise(flux.reshape(n, -1), var.reshape(n, -1), mask.reshape(n, -1), window, step)
        signal[y0:y1, x0:x1] = s.reshape(y1 - y0, x1 - x0)
        noise[y0:y1, x0:x1] = e.reshape(y1 - y0, x1 - x0)
    return signal, noise
