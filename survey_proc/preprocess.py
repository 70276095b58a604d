"""Preprocessing declared by a model's manifest: data spectra -> the model's input tensor.

The engine and the training-set generator call the same :func:`prepare`, so a model sees at run
time exactly the kind of input it was trained on. Pure NumPy; wavelengths in Angstrom.

The ``input`` section of a manifest (see :class:`InputSpec`) declares the frame of the model grid
(``rest``: data wavelengths are divided by 1+z; ``observed``: used as they are), the grid itself,
the normalisation (``median`` of the whole model range, or ``window``: median inside
``normalise_window``, Angstrom in the model's frame), masked wavelength ranges (rest and observed
frame), the channels and the limits
under which a spectrum is not fitted.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from survey_proc import _prepare_fused
from survey_proc.ssp import log_wave_grid
from survey_proc.stores import Flag


@dataclass(frozen=True)
class InputSpec:
    """What a spectral model expects as input (the manifest's ``input`` section).

    The model grid is linear (``wave_step`` Angstrom per pixel, the default) or, for estimators that
    work in ln(lambda) such as pPXF, logarithmic (``velscale`` km/s per pixel); give exactly one.
    """

    kind: ClassVar[str] = "spectrum"
    feature_dim: ClassVar[str] = "wave"  #: the store's last dim this kind reads
    halo_pixels: ClassVar[int] = 0  #: neighbouring pixels a task reads around its region

    wave_start: float
    wave_stop: float
    wave_step: float | None = None
    frame: str = "rest"
    medium: str = "air"
    channels: tuple[str, ...] = ("flux", "error", "mask")
    normalise: str = "median"
    normalise_window: tuple[float, float] | None = None  #: Angstrom, model frame; for "window"
    masks_rest: tuple[tuple[float, float], ...] = ()
    masks_observed: tuple[tuple[float, float], ...] = ()
    max_masked_fraction: float = 0.5
    min_coverage: float = 0.99
    lsf: Any = None
    velscale: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.wave_step is None) == (self.velscale is None):
            raise ValueError(
                "an input grid needs exactly one of wave.step (Angstrom, linear grid) and "
                f"wave.velscale (km/s, ln-lambda grid); got step={self.wave_step}, "
                f"velscale={self.velscale}"
            )
        if (self.wave_step or self.velscale) <= 0 or self.wave_stop <= self.wave_start:
            raise ValueError(
                f"bad input grid {self.wave_start}-{self.wave_stop} A, step={self.wave_step}, velscale={self.velscale}"
            )

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any]) -> InputSpec:
        wave = section["wave"]
        masks = section.get("masks", {})
        return cls(
            wave_start=float(wave["start"]),
            wave_stop=float(wave["stop"]),
            wave_step=float(wave["step"]) if wave.get("step") is not None else None,
            velscale=float(wave["velscale"]) if wave.get("velscale") is not None else None,
            frame=section.get("frame", "rest"),
            medium=section.get("medium", "air"),
            channels=tuple(section.get("channels", ("flux", "error", "mask"))),
            normalise=section.get("normalise", "median"),
            normalise_window=(
                tuple(float(w) for w in section["normalise_window"])
                if section.get("normalise_window") is not None
                else None
            ),
            masks_rest=tuple(tuple(map(float, m)) for m in masks.get("rest", ())),
            masks_observed=tuple(tuple(map(float, m)) for m in masks.get("observed", ())),
            max_masked_fraction=float(section.get("max_masked_fraction", 0.5)),
            min_coverage=float(section.get("min_coverage", 0.99)),
            lsf=section.get("lsf"),
            extra={
                k: v
                for k, v in section.items()
                if k
                not in {
                    "wave",
                    "frame",
                    "medium",
                    "channels",
                    "normalise",
                    "normalise_window",
                    "masks",
                    "max_masked_fraction",
                    "min_coverage",
                    "lsf",
                    "kind",
                }
            },
        )

    def to_manifest(self) -> dict[str, Any]:
        window = {"normalise_window": list(self.normalise_window)} if self.normalise == "window" else {}
        grid = {"step": self.wave_step} if self.velscale is None else {"velscale": self.velscale}
        return {
            "kind": "spectrum",
            "frame": self.frame,
            "medium": self.medium,
            "wave": {"start": self.wave_start, "stop": self.wave_stop, **grid, "units": "Angstrom"},
            "channels": list(self.channels),
            "normalise": self.normalise,
            **window,
            "masks": {"rest": [list(m) for m in self.masks_rest], "observed": [list(m) for m in self.masks_observed]},
            "max_masked_fraction": self.max_masked_fraction,
            "min_coverage": self.min_coverage,
            "lsf": self.lsf,
            **self.extra,
        }

    @property
    def wave(self) -> np.ndarray:
        """The model's wavelength grid (Angstrom, in the model's frame): linear or ln-lambda."""
        if self.velscale is not None:
            return log_wave_grid(self.wave_start, self.wave_stop, self.velscale)
        n = int(round((self.wave_stop - self.wave_start) / self.wave_step)) + 1
        return self.wave_start + self.wave_step * np.arange(n)

    def prepare_batch(
        self,
        flux: np.ndarray,
        var: np.ndarray,
        mask: np.ndarray,
        axis: np.ndarray,
        redshift: float | np.ndarray,
        shape: tuple[int, ...] | None = None,
    ) -> Prepared:
        """:func:`prepare` (``axis`` is the store's ``wave``; ``shape`` is not needed)."""
        return prepare(flux, var, mask, axis, redshift, self)

    def check_store(self, ds: Any, redshift: float, path: str, model: str) -> None:
        """Fail early (CubeError) when no spectrum of ``ds`` can cover the model's wavelength range."""
        from survey_proc.errors import CubeError

        wave = ds["wave"].values
        if "object" in ds["flux"].dims:
            return  # per-object redshifts: coverage is judged (and flagged) per spectrum
        need = self.wave * (1 + redshift) if self.frame == "rest" else self.wave
        inside = ((need >= wave[0]) & (need <= wave[-1])).mean()
        if inside < self.min_coverage:
            frame = f"{self.frame}-frame"
            raise CubeError(
                f"{path}: the cube covers {wave[0]:.0f}-{wave[-1]:.0f} A (observed) = "
                f"{wave[0] / (1 + redshift):.0f}-{wave[-1] / (1 + redshift):.0f} A rest frame at z={redshift:g}, "
                f"but model {model} needs {self.wave_start:.0f}-{self.wave_stop:.0f} A {frame} "
                f"({inside:.0%} covered, {self.min_coverage:.0%} required): every spectrum would be "
                "flagged out_of_range. Choose a model for this wavelength range."
            )


@dataclass
class Prepared:
    """A batch ready for an estimator.

    x : (n, nchannels, nwave) float32 model input (NaN-free).
    flags : (n,) uint8 :class:`Flag` bits set by preprocessing.
    snr : (n,) median S/N per Angstrom over the model range (native pixels).
    norm : (n,) normalisation divided out of flux (flux units).
    fit : (n,) bool, spectra to give to the estimator (no NOT_FITTED flag).
    """

    x: np.ndarray
    flags: np.ndarray
    snr: np.ndarray
    norm: np.ndarray
    per_pixel: bool = True  #: False: ``x`` is one tile (1, C, H, W) whose outputs cover every pixel

    @property
    def fit(self) -> np.ndarray:
        from survey_proc.stores import NOT_FITTED

        return (self.flags & int(NOT_FITTED)) == 0

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(estimator input, rows): the pixels (n,) bool the estimator's output rows belong to.

        Per-pixel kinds give the estimator only the pixels to fit; a tile goes in whole and its
        outputs cover every pixel in raster order (unfitted ones are blanked afterwards).
        """
        if self.per_pixel:
            fit = self.fit
            return (self.x if fit.all() else self.x[fit]), fit  # no copy when every pixel is fitted
        return self.x, np.ones(self.flags.shape[0], bool)


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
    (:func:`survey_proc._prepare_fused.grid_rows`, the same numbers; ~10x cheaper than NumPy's
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
    coverage = ((src >= wave[0]) & (src <= wave[-1])).mean(axis=1)
    if z1.shape[0] > 1 and compiled is not False and _prepare_fused.available():
        src = np.ascontiguousarray(src)
        idx = np.empty(src.shape, np.int64)
        w = np.empty(src.shape, np.float32)
        static_bad = np.empty(src.shape, bool)
        _prepare_fused.grid_rows(wave, src, idx, w, static_bad)
        if rest.shape[0] == 1:  # a rest-frame model: its rest-frame masks are the same for every row
            static_bad |= in_ranges(rest, spec.masks_rest)
        elif spec.masks_rest:
            _prepare_fused.mark_ranges(np.ascontiguousarray(rest), _ranges(spec.masks_rest), static_bad)
        if spec.masks_observed:
            _prepare_fused.mark_ranges(src, _ranges(spec.masks_observed), static_bad)
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
    _prepare_fused.resample_rows(
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
    _prepare_fused.median_rows(snr_values, n_snr, rs.width, snr_median)
    snr[:] = snr_median / np.sqrt(step) + 0.0  # +0.0, not -0.0
    med = np.full(n, np.nan, np.float32)
    _prepare_fused.median_rows(filled, n_good, length, med)
    safe = _flag_and_normalise(rs, spec, length - n_good, med, flags, norm)
    channel = {name: (spec.channels.index(name) if name in spec.channels else -1) for name in KNOWN_CHANNELS}
    _prepare_fused.write_channels(m_flux, m_var, m_bad, safe, x, channel["flux"], channel["error"], channel["mask"])


#: input channels a spectral model may declare
KNOWN_CHANNELS = ("flux", "error", "mask")


def _fused_applies(spec: InputSpec) -> bool:
    """The fused pass covers ``median`` normalisation and the known channels."""
    return (
        _prepare_fused.available()
        and spec.normalise == "median"
        and all(name in KNOWN_CHANNELS for name in spec.channels)
    )


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
        (``survey_proc._prepare_fused``, the same numbers); None: where it applies and Numba is
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


def estimator_meta(redshift: np.ndarray, wave: np.ndarray, lsf_fwhm: np.ndarray | None, spec: InputSpec) -> dict:
    """What an estimator may need besides the pixels (the ``meta`` of ``Estimator.predict``).

    ``redshift`` (n,); ``lsf_fwhm_model``: the data's instrumental FWHM (Angstrom) at the model's
    pixels in the model's frame — (nwave,) when all redshifts are equal, else (n, nwave).
    """
    redshift = np.asarray(redshift, np.float64)
    meta: dict = {"redshift": redshift}
    if lsf_fwhm is not None and redshift.size:
        if spec.frame == "rest":
            same = np.ptp(redshift) == 0
            z1 = 1.0 + (redshift[:1, None] if same else redshift[:, None])
            fwhm = np.interp(spec.wave[None, :] * z1, wave, lsf_fwhm) / z1
            meta["lsf_fwhm_model"] = fwhm[0] if same else fwhm
        else:
            meta["lsf_fwhm_model"] = np.interp(spec.wave, wave, lsf_fwhm)
    return meta


#: input kind (the manifest's ``input.kind``) -> "module:class" of its spec. A spec class has
#: ``from_manifest``, ``to_manifest``, ``feature_dim`` (the store's last dim: ``wave`` or ``band``),
#: ``halo_pixels``, ``prepare_batch(flux, var, mask, axis, redshift, shape)`` and
#: ``check_store(ds, redshift, path, model)``; the engine calls only these.
INPUT_KINDS: dict[str, str] = {
    "spectrum": "survey_proc.preprocess:InputSpec",
    "sed": "survey_proc.preprocess_bands:SEDInputSpec",
    "image": "survey_proc.preprocess_bands:ImageInputSpec",
}


def input_spec(section: Mapping[str, Any]) -> Any:
    """The spec object of a manifest's ``input`` section, by its declared ``kind``."""
    kind = section.get("kind", "spectrum")
    target = INPUT_KINDS.get(kind)
    if target is None:
        raise ValueError(f"unknown input kind {kind!r}; known: {', '.join(INPUT_KINDS)}")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name).from_manifest(section)
