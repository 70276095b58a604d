"""The spectral input kind: what a spectral model's manifest declares (:class:`InputSpec`).

The ``input`` section of a manifest declares the frame of the model grid (``rest``: data
wavelengths are divided by 1+z; ``observed``: used as they are), the grid itself, the normalisation
(``median`` of the whole model range, or ``window``: median inside ``normalise_window``, Angstrom in
the model's frame), masked wavelength ranges (rest and observed frame), the channels and the limits
under which a spectrum is not fitted. Wavelengths in Angstrom.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from survey_proc.errors import CoverageError
from survey_proc.preprocess._kinds import BatchMeta, InputKind, Prepared
from survey_proc.preprocess._prepare import prepare
from survey_proc.ssp import C_KMS, log_wave_grid, muse_lsf_fwhm, sdss_lsf_fwhm, to_medium

#: instrumental FWHM curves (Angstrom at observed wavelengths) a network may have been trained with,
#: by the name in its manifest's ``input.lsf_trained.curve``
TRAINED_LSF = {"muse": muse_lsf_fwhm, "sdss": sdss_lsf_fwhm}
#: how far (km/s in quadrature) the engine's correction of a network's sigma for the data's LSF holds,
#: unless a manifest's ``input.lsf_trained.tolerance_kms`` says otherwise
LSF_TOLERANCE_KMS = 60.0

#: keys of a manifest's ``input`` section that :class:`InputSpec` reads (the rest is kept in ``extra``)
_SECTION_KEYS = {
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


@dataclass(frozen=True)
class InputSpec(InputKind):
    """What a spectral model expects as input (the manifest's ``input`` section with ``kind: spectrum``).

    The model grid is linear (``wave_step`` Angstrom per pixel, the default) or, for estimators that
    work in ln(lambda) such as pPXF, logarithmic (``velscale`` km/s per pixel); give exactly one.
    """

    kind: ClassVar[str] = "spectrum"

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
            extra={k: v for k, v in section.items() if k not in _SECTION_KEYS},
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
        """Fail early (CoverageError) when no spectrum of ``ds`` can cover the model's wavelength range: at
        the cube's redshift, or, for a store of objects with their own redshifts, at none of theirs."""
        wave = ds["wave"].values
        z = _store_redshifts(ds, redshift)
        inside = self.coverage(wave[0], wave[-1], z)
        if inside.max() >= self.min_coverage:
            return
        lo, hi = float(z.min()), float(z.max())
        at = f"at z={lo:g}" if lo == hi else f"at z={lo:g}-{hi:g} (its objects' redshifts)"
        raise CoverageError(
            f"{path}: the cube covers {wave[0]:.0f}-{wave[-1]:.0f} A (observed) = "
            f"{wave[0] / (1 + hi):.0f}-{wave[-1] / (1 + lo):.0f} A rest frame {at}, "
            f"but model {model} needs {self.wave_start:.0f}-{self.wave_stop:.0f} A {self.frame}-frame "
            f"({np.floor(1000 * inside.max()) / 10:g}% covered, {self.min_coverage:.0%} required): every "
            "spectrum would be flagged out_of_range. Choose a model for this wavelength range."
        )

    def coverage(self, start: float, stop: float, z: np.ndarray) -> np.ndarray:
        """The share of the model's pixels (n,) that observed wavelengths ``start``-``stop`` reach at each
        redshift ``z`` (n,) (the model's frame: rest or observed)."""
        grid = np.sort(self.wave)
        z1 = 1.0 + np.asarray(z, np.float64) if self.frame == "rest" else np.ones(np.shape(z))
        n_in = np.searchsorted(grid, stop / z1, side="right") - np.searchsorted(grid, start / z1, side="left")
        return n_in / grid.size

    def feature_axis(self, values: np.ndarray, medium: str | None = None) -> np.ndarray:
        """The store's wavelengths (Angstrom, float64) in the model's medium: SDSS data (vacuum)
        meet E-MILES models (air) here."""
        wave = np.asarray(values, np.float64)
        if self.medium and medium and medium != self.medium:
            wave = to_medium(wave, medium, self.medium)
        return wave

    def lsf_offset_kms(self, axis: np.ndarray, lsf_fwhm: np.ndarray | None, redshift: float) -> float | None:
        """The data's LSF against ``input.lsf_trained.curve``, over the observed range the model reads:
        the median of sign(F_d - F_t) c sqrt(|F_d^2 - F_t^2|) / (2.355 lambda)."""
        trained = (self.extra.get("lsf_trained") or {}).get("curve")
        if trained is None or lsf_fwhm is None:
            return None
        z1 = 1.0 + float(redshift) if self.frame == "rest" else 1.0
        wave, fwhm = np.asarray(axis, np.float64), np.asarray(lsf_fwhm, np.float64)
        inside = (wave >= self.wave_start * z1) & (wave <= self.wave_stop * z1) & np.isfinite(fwhm)
        if not inside.any():
            return None
        data, model = fwhm[inside], TRAINED_LSF[trained](wave[inside])
        diff = np.sign(data - model) * np.sqrt(np.abs(data**2 - model**2)) / 2.355 / wave[inside] * C_KMS
        return float(np.median(diff))

    def lsf_tolerance_kms(self) -> float:
        """``input.lsf_trained.tolerance_kms`` (default :data:`LSF_TOLERANCE_KMS`): how far the engine's
        correction of a network's sigma for the LSF offset holds; beyond it every estimate is flagged
        ``lsf_mismatch``."""
        return float((self.extra.get("lsf_trained") or {}).get("tolerance_kms", LSF_TOLERANCE_KMS))

    def batch_meta(self, redshift: np.ndarray, axis: np.ndarray, lsf_fwhm: np.ndarray | None) -> BatchMeta:
        """:func:`estimator_meta`: the data's instrumental FWHM at the model's pixels."""
        return estimator_meta(redshift, axis, lsf_fwhm, self)

    def warm_up(self, axis: np.ndarray, redshift: float) -> None:
        """Two spectra through :meth:`prepare_batch`: loads (or compiles) its compiled passes."""
        ones = np.ones((2, axis.size), np.float32)
        self.prepare_batch(ones, ones, np.zeros(ones.shape, bool), axis, redshift)


def estimator_meta(redshift: np.ndarray, wave: np.ndarray, lsf_fwhm: np.ndarray | None, spec: InputSpec) -> BatchMeta:
    """What an estimator may need besides the pixels (the ``meta`` of ``Estimator.predict``).

    ``redshift`` (n,); ``lsf_fwhm_model``: the data's instrumental FWHM (Angstrom) at the model's
    pixels in the model's frame — (nwave,) when all redshifts are equal, else (n, nwave);
    ``sampling``: the data's wavelengths and the model's pixels on them, from which
    ``noise_covariance`` is made where a fit asks for it.
    """
    redshift = np.asarray(redshift, np.float64)
    if not redshift.size:
        return BatchMeta(redshift=redshift)
    same = spec.frame != "rest" or np.ptp(redshift) == 0
    z1 = 1.0 + (redshift[:1, None] if same else redshift[:, None])
    src = spec.wave[None, :] * z1 if spec.frame == "rest" else spec.wave[None, :]  # the model grid, data frame
    sampling = (np.asarray(wave, np.float64), src[0] if same else src)
    if lsf_fwhm is None:
        return BatchMeta(redshift=redshift, sampling=sampling)
    fwhm = np.interp(src, wave, lsf_fwhm) / (z1 if spec.frame == "rest" else 1.0)
    return BatchMeta(redshift=redshift, lsf_fwhm_model=fwhm[0] if same else fwhm, sampling=sampling)


def _store_redshifts(ds: Any, redshift: float) -> np.ndarray:
    """The redshifts a store's spectra are at: its objects' own (``redshift`` along ``object``, the
    distinct finite values), else ``redshift``."""
    if "object" in ds["flux"].dims and "redshift" in ds and ds["redshift"].dims == ("object",):
        z = np.asarray(ds["redshift"].values, np.float64)
        z = np.unique(z[np.isfinite(z)])
        if z.size:
            return z
    return np.array([float(redshift)])
