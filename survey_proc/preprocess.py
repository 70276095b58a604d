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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from survey_proc.stores._maps import Flag


@dataclass(frozen=True)
class InputSpec:
    """What a spectral model expects as input (the manifest's ``input`` section)."""

    wave_start: float
    wave_stop: float
    wave_step: float
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
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any]) -> InputSpec:
        wave = section["wave"]
        masks = section.get("masks", {})
        return cls(
            wave_start=float(wave["start"]), wave_stop=float(wave["stop"]), wave_step=float(wave["step"]),
            frame=section.get("frame", "rest"), medium=section.get("medium", "air"),
            channels=tuple(section.get("channels", ("flux", "error", "mask"))),
            normalise=section.get("normalise", "median"),
            normalise_window=(tuple(float(w) for w in section["normalise_window"])
                              if section.get("normalise_window") is not None else None),
            masks_rest=tuple(tuple(map(float, m)) for m in masks.get("rest", ())),
            masks_observed=tuple(tuple(map(float, m)) for m in masks.get("observed", ())),
            max_masked_fraction=float(section.get("max_masked_fraction", 0.5)),
            min_coverage=float(section.get("min_coverage", 0.99)),
            lsf=section.get("lsf"),
            extra={k: v for k, v in section.items() if k not in {
                "wave", "frame", "medium", "channels", "normalise", "normalise_window", "masks", "max_masked_fraction",
                "min_coverage", "lsf", "kind"}},
        )

    def to_manifest(self) -> dict[str, Any]:
        window = {"normalise_window": list(self.normalise_window)} if self.normalise == "window" else {}
        return {
            "kind": "spectrum", "frame": self.frame, "medium": self.medium,
            "wave": {"start": self.wave_start, "stop": self.wave_stop, "step": self.wave_step,
                     "units": "Angstrom"},
            "channels": list(self.channels), "normalise": self.normalise, **window,
            "masks": {"rest": [list(m) for m in self.masks_rest],
                      "observed": [list(m) for m in self.masks_observed]},
            "max_masked_fraction": self.max_masked_fraction, "min_coverage": self.min_coverage,
            "lsf": self.lsf, **self.extra,
        }

    @property
    def wave(self) -> np.ndarray:
        """The model's wavelength grid (Angstrom, in the model's frame)."""
        n = int(round((self.wave_stop - self.wave_start) / self.wave_step)) + 1
        return self.wave_start + self.wave_step * np.arange(n)


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

    @property
    def fit(self) -> np.ndarray:
        from survey_proc.stores._maps import NOT_FITTED

        return (self.flags & int(NOT_FITTED)) == 0


def in_ranges(wave: np.ndarray, ranges: Sequence[Sequence[float]]) -> np.ndarray:
    """Boolean array: wave inside any [lo, hi] range (broadcasts over leading dims of ``wave``)."""
    out = np.zeros(np.shape(wave), bool)
    for lo, hi in ranges:
        out |= (wave >= lo) & (wave <= hi)
    return out


def fill_gaps(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace invalid entries of each row by linear interpolation between the nearest valid ones.

    Leading/trailing gaps take the nearest valid value; rows without any valid value become 0.
    """
    values = np.asarray(values, np.float32)
    out = np.where(valid, values, np.float32(0.0))
    rows = np.nonzero((~valid).any(axis=-1) & valid.any(axis=-1))[0]
    if rows.size == 0:
        return out
    v, ok = values[rows], valid[rows]
    n = v.shape[-1]
    idx = np.arange(n, dtype=np.int32)[None, :]
    prev = np.maximum.accumulate(np.where(ok, idx, -1), axis=-1)
    nxt = np.minimum.accumulate(np.where(ok, idx, n)[:, ::-1], axis=-1)[:, ::-1]
    p = np.where(prev >= 0, prev, nxt)
    q = np.where(nxt < n, nxt, p)
    vp = np.take_along_axis(v, p, axis=-1)
    vq = np.take_along_axis(v, q, axis=-1)
    t = np.where(q > p, (idx - p) / np.maximum(q - p, 1), 0.0).astype(np.float32)
    out[rows] = np.where(ok, v, vp + (vq - vp) * t)
    return out


def masked_median(values: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Median of each row over ``good`` entries (NaN for rows without any), vectorised.

    Bad entries are replaced alternately by +inf and -inf so a plain row median lands on the good
    values; with an odd number of bad entries it is the upper of the two middle good values.
    """
    bad_rank = np.cumsum(~good, axis=-1)
    fill = np.where(bad_rank % 2 == 1, np.inf, -np.inf).astype(values.dtype)
    with np.errstate(invalid="ignore"):  # rows without good values average +inf and -inf
        med = np.median(np.where(good, values, fill), axis=-1)
    return np.where(good.any(axis=-1), med, np.nan)


def snr_per_angstrom(flux: np.ndarray, var: np.ndarray, good: np.ndarray, step: float) -> np.ndarray:
    """Median S/N per Angstrom of each row over ``good`` pixels of width ``step`` Angstrom."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(good, flux / np.sqrt(np.where(good, var, 1.0)), 0.0)
    return masked_median(ratio, good) / np.sqrt(step)


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
            raise ValueError(f"normalise_window {lo}-{hi} A lies outside the model grid "
                             f"{spec.wave_start}-{spec.wave_stop} A")
        return masked_median(flux[:, sel], good[:, sel])
    raise ValueError(f"unknown normalisation {spec.normalise!r} (known: {', '.join(NORMALISATIONS)})")


def prepare(flux: np.ndarray, var: np.ndarray, mask: np.ndarray, wave: np.ndarray,
            redshift: float | np.ndarray, spec: InputSpec) -> Prepared:
    """Turn data spectra into a model's input.

    Parameters
    ----------
    flux, var, mask : (n, nwave) flux density, its variance, bad-pixel mask (True = bad).
    wave : (nwave,) data wavelengths (Angstrom, observed frame unless the data are rest frame).
    redshift : systemic redshift, scalar or (n,); use 0 for data already in the rest frame.
    spec : the model's :class:`InputSpec`.
    """
    flux = np.asarray(flux, np.float32)
    var = np.asarray(var, np.float32)
    n = flux.shape[0]
    with np.errstate(invalid="ignore"):
        bad = np.asarray(mask, bool) | ~np.isfinite(flux) | ~np.isfinite(var) | (var <= 0)
    flags = np.zeros(n, np.uint8)
    flags[bad.all(axis=1)] |= np.uint8(Flag.NO_DATA)

    z = np.asarray(redshift, np.float64)
    if z.ndim == 0 or np.all(z == z.flat[0]):
        z1 = np.full((1, 1), 1.0 + float(z.flat[0]))  # one grid shared by all rows: cheaper gathers
    else:
        z1 = (1.0 + z)[:, None]
    model_wave = spec.wave[None, :]
    # model grid expressed in the data's frame, and in the observed frame
    src = model_wave * z1 if spec.frame == "rest" else np.broadcast_to(model_wave, (z1.shape[0], model_wave.size))
    obs = src
    coverage = ((src >= wave[0]) & (src <= wave[-1])).mean(axis=1)
    flags[np.broadcast_to(coverage < spec.min_coverage, (n,))] |= np.uint8(Flag.OUT_OF_RANGE)

    idx = np.clip(np.searchsorted(wave, src) - 1, 0, wave.size - 2)
    w = ((src - wave[idx]) / (wave[idx + 1] - wave[idx])).astype(np.float32)
    outside = (src < wave[0]) | (src > wave[-1])
    if src.shape[0] == 1:
        def gather(a: np.ndarray, i: np.ndarray) -> np.ndarray:
            return a[:, i[0]]
    else:
        def gather(a: np.ndarray, i: np.ndarray) -> np.ndarray:
            return np.take_along_axis(a, i, 1)
    clean_flux = np.where(bad, np.float32(0.0), flux)  # 0 * NaN would leak NaN through a zero weight
    clean_var = np.where(bad, np.float32(0.0), var)
    f0, f1 = gather(clean_flux, idx), gather(clean_flux, idx + 1)
    v0, v1 = gather(clean_var, idx), gather(clean_var, idx + 1)
    b0, b1 = gather(bad, idx), gather(bad, idx + 1)
    m_bad = outside | (b0 & (w < 1)) | (b1 & (w > 0))
    with np.errstate(invalid="ignore"):
        m_flux = np.where(m_bad, np.float32(0.0), f0 * (1 - w) + f1 * w)
        m_var = np.where(m_bad, np.float32(0.0), v0 * (1 - w) ** 2 + v1 * w**2)
    m_bad = m_bad | in_ranges(model_wave if spec.frame == "rest" else model_wave / z1, spec.masks_rest)
    m_bad |= in_ranges(obs, spec.masks_observed)
    masked_fraction = m_bad.mean(axis=1)
    flags[masked_fraction > spec.max_masked_fraction] |= np.uint8(Flag.MASKED)

    good = ~m_bad
    norm = normalisation(m_flux, good, spec)
    flags[~(np.isfinite(norm) & (norm > 0))] |= np.uint8(Flag.NO_DATA)
    safe = np.where(np.isfinite(norm) & (norm > 0), norm, 1.0)[:, None]

    # S/N on native pixels inside the model range
    native_in = (wave[None, :] >= src[:, :1]) & (wave[None, :] <= src[:, -1:])
    step = float(np.median(np.diff(wave)))
    snr = snr_per_angstrom(flux, var, ~bad & native_in, step)

    chans = []
    for name in spec.channels:
        if name == "flux":
            chans.append(fill_gaps(m_flux / safe, good))
        elif name == "error":
            chans.append(np.where(good, np.sqrt(np.maximum(m_var, 0.0)) / safe, 0.0))
        elif name == "mask":
            chans.append(m_bad.astype(np.float32))
        else:
            raise ValueError(f"unknown input channel {name!r}")
    x = np.stack(chans, axis=1).astype(np.float32)
    x[~np.isfinite(x)] = 0.0
    return Prepared(x=x, flags=flags, snr=snr, norm=np.where(np.isfinite(norm), norm, np.nan))
