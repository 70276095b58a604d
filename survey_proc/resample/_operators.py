"""Flux-conserving resampling and Gaussian PSF matching of band images, as separable linear operators.

A photometric store's images sit on an axis-aligned grid described by one pixel scale (no WCS), so
bringing them to another scale and seeing is a linear map applied along y and then x:

    out = A_y  img  A_x^T,      A = R K

- ``K`` (n_in x n_in): the 1-D Gaussian that widens the seeing from ``psf_in`` to ``psf_out``:
  sigma_k^2 = sigma_out^2 - sigma_in^2 - s_out^2 / 12 (the output pixel's own top-hat, as a Gaussian
  of the same variance, is taken off: the models were trained on point-sampled, Gaussian-blurred
  images). Zeros outside the image, as the mocks' seeing (flux near an edge leaks out).
- ``R`` (n_out x n_in): the share of each input pixel inside each output pixel (exact 1-D overlaps of
  the pixel intervals; the output grid centred on the input's). Each input pixel's flux is divided
  among the output pixels it overlaps, so pixel fluxes (not surface brightnesses) are conserved: the
  sum over the output equals the sum over the input pixels it covers. For an aligned grid this is
  what an exact polygon-overlap reprojection (``reproject.reproject_exact``) computes, up to its
  sky-projection terms; done here as matrices it also gives the exact variance of every output pixel
  of independent inputs, ``A_y^2 var A_x^2^T``.

Masked pixels carry no weight: each output is the weighted sum of the good inputs scaled up by the
share of its weight they hold (normalised convolution); an output more than half of whose weight
comes from masked inputs is masked. The output pixels' noise is correlated (the variance given is
each pixel's own).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: FWHM / sigma of a Gaussian
FWHM_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: output pixels with less than this share of their weight from good inputs are masked
MIN_GOOD_WEIGHT = 0.5


def overlap_matrix(n_in: int, scale_in: float, scale_out: float) -> np.ndarray:
    """(n_out, n_in): the share of input pixel i inside output pixel j along one axis; the output grid
    (``n_out = floor(n_in scale_in / scale_out)`` pixels) centred on the input's."""
    n_out = int(np.floor(n_in * scale_in / scale_out + 1e-9))
    if n_out < 1:
        raise ValueError(f"{n_in} pixels of {scale_in:g} arcsec make no pixel of {scale_out:g} arcsec")
    offset = 0.5 * (n_in * scale_in - n_out * scale_out)
    out_lo = offset + scale_out * np.arange(n_out)[:, None]
    in_lo = scale_in * np.arange(n_in)[None, :]
    inter = np.minimum(out_lo + scale_out, in_lo + scale_in) - np.maximum(out_lo, in_lo)
    return np.clip(inter, 0.0, None) / scale_in


def gaussian_matrix(n: int, sigma_pixels: float) -> np.ndarray:
    """(n, n): a 1-D Gaussian of ``sigma_pixels`` (the identity for 0), each column a pixel's light
    spread over its neighbours (the kernel sampled at pixel centres, normalised to 1 over all pixels:
    what falls outside the image is lost)."""
    if sigma_pixels <= 0:
        return np.eye(n)
    half = int(np.ceil(5 * sigma_pixels))
    taps = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (taps / sigma_pixels) ** 2)
    kernel /= kernel.sum()
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    return np.where(np.abs(d) <= half, kernel[np.clip(d + half, 0, taps.size - 1)], 0.0)


def matching_sigma(psf_in: float, psf_out: float, scale_out: float) -> float:
    """The Gaussian sigma (arcsec) that takes a seeing of FWHM ``psf_in`` to ``psf_out`` on pixels of
    ``scale_out`` (the output pixel's top-hat taken off; 0 where that alone is as broad); ValueError
    if the input's seeing is already broader than ``psf_out``."""
    var = (psf_out / FWHM_SIGMA) ** 2 - (psf_in / FWHM_SIGMA) ** 2 - scale_out**2 / 12.0
    if psf_in > psf_out * (1 + 1e-6):
        raise ValueError(
            f"the images' seeing ({psf_in:g} arcsec FWHM) is already broader than the {psf_out:g} arcsec "
            "the target asks for; images cannot be sharpened"
        )
    return float(np.sqrt(max(var, 0.0)))


@dataclass(frozen=True)
class Resampling:
    """The separable operator of one resampling: ``a_y`` (ny_out, ny_in), ``a_x`` (nx_out, nx_in)."""

    a_y: np.ndarray
    a_x: np.ndarray
    scale_in: float
    scale_out: float
    psf_in: float
    psf_out: float
    sigma_kernel_arcsec: float

    @classmethod
    def between(cls, shape: tuple[int, int], scale_in: float, scale_out: float, psf_in: float, psf_out: float):
        """The operator from images of ``shape`` (ny, nx) at ``scale_in`` and seeing ``psf_in`` (FWHM,
        arcsec) to ``scale_out`` and ``psf_out``."""
        sigma = matching_sigma(psf_in, psf_out, scale_out)
        a_y, a_x = (overlap_matrix(n, scale_in, scale_out) @ gaussian_matrix(n, sigma / scale_in) for n in shape)
        return cls(a_y, a_x, scale_in, scale_out, psf_in, psf_out, sigma)

    @property
    def shape_out(self) -> tuple[int, int]:
        return self.a_y.shape[0], self.a_x.shape[0]

    def apply(self, flux: np.ndarray, var: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
        """(flux, var, mask) of band images (ny, nx, nband) on the output grid (masked: NaN flux)."""
        good = ~np.asarray(mask, bool) & np.isfinite(flux) & np.isfinite(var)
        f = np.where(good, flux, 0.0).astype(np.float64)
        v = np.where(good, var, 0.0).astype(np.float64)
        w = good.astype(np.float64)
        total = self._sum(np.ones_like(w), self.a_y, self.a_x)
        held = self._sum(w, self.a_y, self.a_x)
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where(held > 0, total / held, 0.0)
            out_f = self._sum(f, self.a_y, self.a_x) * gain
            out_v = self._sum(v, self.a_y**2, self.a_x**2) * gain**2
            out_mask = ~(held >= MIN_GOOD_WEIGHT * total) | (total <= 0)
        out_f = np.where(out_mask, np.nan, out_f)
        out_v = np.where(out_mask, np.nan, out_v)
        return out_f.astype(np.float32), out_v.astype(np.float32), out_mask

    @staticmethod
    def _sum(img: np.ndarray, a_y: np.ndarray, a_x: np.ndarray) -> np.ndarray:
        return np.einsum("iy,yxb,jx->ijb", a_y, img, a_x, optimize=True)
