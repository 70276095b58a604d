"""What every input kind offers the engine (:class:`InputKind`) and what its preprocessing returns.

An input kind (the manifest's ``input.kind``: ``spectrum``, ``sed``, ``image``) is a frozen
dataclass subclassing :class:`InputKind`, registered in :data:`survey_proc.preprocess.INPUT_KINDS`.
The engine calls only the hooks declared here, each with a default a kind overrides where it
differs, so it never asks which kind it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from survey_proc.preprocess._covariance import resampling_covariance
from survey_proc.stores import NOT_FITTED


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


@dataclass(frozen=True)
class BatchMeta:
    """What an estimator may need about a batch besides its pixels (``Estimator.predict``'s ``meta``).

    redshift : (n,) of the spectra (or pixels) the estimator's rows belong to.
    lsf_fwhm_model : the data's instrumental FWHM (Angstrom) at the model's pixels in the model's
        frame, (nwave,) when all redshifts are equal, else (n, nwave); None where unknown or not
        spectral.
    norm : (n,) the normalisation divided out of each row's flux (the store's flux units), as
        :class:`Prepared` has it; None where the caller has none (the engine always passes it).
    sampling : how the data were resampled onto the model grid: (the data's wavelengths (m,), the
        model's pixels on them, (nwave,) when all redshifts are equal, else (n, nwave)); None where
        unknown or not spectral. :attr:`noise_covariance` is made from it.
    """

    redshift: np.ndarray
    lsf_fwhm_model: np.ndarray | None = None
    norm: np.ndarray | None = None
    sampling: tuple[np.ndarray, np.ndarray] | None = None

    @cached_property
    def noise_covariance(self) -> np.ndarray | None:
        """The covariance resampling onto the model grid leaves between neighbouring model pixels,
        relative to the data's variance (:func:`~survey_proc.preprocess.resampling_covariance`): (k, nwave)
        when all redshifts are equal, else (n, k, nwave); None without :attr:`sampling` (a fit then
        treats its pixels as independent). Made on first use: only the fits read it (with a redshift
        per spectrum, ~0.04 ms a spectrum)."""
        if self.sampling is None:
            return None
        return resampling_covariance(*self.sampling).astype(np.float32)


class InputKind:
    """The hooks the engine calls on a manifest's input spec, with their defaults.

    Subclasses are frozen dataclasses holding the manifest's ``input`` section. The engine opens the
    store of ``feature_dim``, checks it (:meth:`check_store`), reads each region grown by
    ``halo_pixels``, takes its feature axis through :meth:`feature_axis`, warms the kind up once
    per worker (:meth:`warm_up`), and for every batch calls :meth:`prepare_batch` and
    :meth:`batch_meta`; a kind with ``whole_regions`` gets a region in one batch.
    """

    kind: ClassVar[str] = ""  #: the manifest's ``input.kind``
    feature_dim: ClassVar[str] = "wave"  #: the store's last dim this kind reads
    whole_regions: ClassVar[bool] = False  #: a region is one input (a tile), not rows to batch
    halo_pixels: int = 0  #: neighbouring pixels a task reads around its region (written: the core only)

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any]) -> InputKind:
        """The spec of a manifest's ``input`` section."""
        raise NotImplementedError

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``input`` section of this spec."""
        raise NotImplementedError

    def check_store(self, ds: Any, redshift: float, path: str, model: str) -> None:
        """Fail early (:class:`~survey_proc.errors.CubeError`) when the store ``ds`` cannot be run."""

    def feature_axis(self, values: np.ndarray, medium: str | None = None) -> np.ndarray:
        """The store's feature axis as :meth:`prepare_batch` takes it, from the stored coordinate's
        ``values`` and its ``medium`` attribute (None if it has none)."""
        return np.asarray(values)

    def prepare_batch(
        self,
        flux: np.ndarray,
        var: np.ndarray,
        mask: np.ndarray,
        axis: np.ndarray,
        redshift: float | np.ndarray,
        shape: tuple[int, ...] | None = None,
    ) -> Prepared:
        """Data (n, nfeature) on the store's ``axis`` -> the model's input, flags and S/N.

        ``redshift``: scalar or (n,); ``shape``: the spatial shape of the n pixels (for tiles).
        """
        raise NotImplementedError

    def batch_meta(self, redshift: np.ndarray, axis: np.ndarray, lsf_fwhm: np.ndarray | None) -> BatchMeta:
        """The ``meta`` of ``Estimator.predict`` for rows at ``redshift`` (n,); ``lsf_fwhm`` is the
        store's instrumental FWHM along ``axis`` (None if it has none)."""
        return BatchMeta(redshift=np.asarray(redshift, np.float64))

    def lsf_offset_kms(self, axis: np.ndarray, lsf_fwhm: np.ndarray | None, redshift: float) -> float | None:
        """How much broader (km/s, > 0) or sharper (< 0) the data's instrumental resolution is than the
        one the model was trained with, added in quadrature (median over the model's range); None where
        the model declares no training LSF or the store has none."""
        return None

    def lsf_tolerance_kms(self) -> float:
        """The :meth:`lsf_offset_kms` beyond which every estimate is flagged ``lsf_mismatch``."""
        return 25.0

    def warm_up(self, axis: np.ndarray, redshift: float) -> None:
        """Load (or compile) what the first batch would, once per worker process, before the timed
        regions."""
