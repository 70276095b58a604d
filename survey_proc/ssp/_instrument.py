"""Instrument and physics applied to spectra: LSF matching, resampling, dust, kinematics.

Small pure NumPy functions; wavelengths in Angstrom, velocities in km/s.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy.special import erf

C_KMS = 299792.458
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def muse_lsf_fwhm(wave: np.ndarray) -> np.ndarray:
    """MUSE line-spread-function FWHM (Angstrom) at observed wavelength ``wave`` (Angstrom).

    Bacon et al. (2017), eq. 8: FWHM = 5.866e-8 l^2 - 9.187e-4 l + 6.040.
    """
    wave = np.asarray(wave, dtype=np.float64)
    return 5.866e-8 * wave**2 - 9.187e-4 * wave + 6.040


#: SDSS spectrograph FWHM (Angstrom) at observed vacuum wavelengths: medians over 300 A of
#: FWHM = 2.355 * wdisp * d(lambda) from the per-pixel ``wdisp`` of a real SDSS DR12 spectrum
#: (plate 522, fibre 396, NGC 4636, shipped in ppxf); blue arm R ~ 1800-2400, red arm R ~ 2000-2700
#: (Smee et al. 2013 quote R = 1500-2500 for the SDSS/BOSS spectrographs).
SDSS_LSF_KNOTS = (
    (
        3800.0,
        4100.0,
        4400.0,
        4700.0,
        5000.0,
        5300.0,
        5600.0,
        5900.0,
        6200.0,
        6500.0,
        6800.0,
        7100.0,
        7400.0,
        7700.0,
        8000.0,
        8300.0,
        8600.0,
        8900.0,
        9200.0,
    ),
    (2.10, 2.13, 2.18, 2.22, 2.25, 2.29, 2.33, 2.70, 3.26, 3.26, 3.26, 3.26, 3.26, 3.26, 3.27, 3.29, 3.32, 3.36, 3.40),
)


def sdss_lsf_fwhm(wave: np.ndarray) -> np.ndarray:
    """Typical SDSS line-spread FWHM (Angstrom) at observed vacuum wavelength ``wave`` (Angstrom).

    Interpolated in :data:`SDSS_LSF_KNOTS`; where a spectrum file carries its own ``wdisp`` the
    ingest uses that instead.
    """
    return np.interp(np.asarray(wave, dtype=np.float64), *SDSS_LSF_KNOTS)


def wdisp_to_fwhm(wave: np.ndarray, wdisp: np.ndarray) -> np.ndarray:
    """FWHM (Angstrom) from SDSS ``wdisp`` (Gaussian sigma in pixels of the log-lambda grid)."""
    wave = np.asarray(wave, dtype=np.float64)
    return 2.0 * np.sqrt(2.0 * np.log(2.0)) * np.asarray(wdisp, np.float64) * np.gradient(wave)


def vacuum_to_air(wave: np.ndarray) -> np.ndarray:
    """Air wavelengths (Angstrom) of vacuum wavelengths (Angstrom), Ciddor (1996) as in the SDSS
    idlutils (``pydl.goddard.astro.vactoair``); below 2000 A unchanged."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydl imports deprecated astropy test helpers
        from pydl.goddard.astro import vactoair
    return np.asarray(vactoair(np.asarray(wave, dtype=np.float64)), dtype=np.float64)


def air_to_vacuum(wave: np.ndarray) -> np.ndarray:
    """Vacuum wavelengths (Angstrom) of air wavelengths (Angstrom), the inverse of
    :func:`vacuum_to_air` (``pydl.goddard.astro.airtovac``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydl.goddard.astro import airtovac
    return np.asarray(airtovac(np.asarray(wave, dtype=np.float64)), dtype=np.float64)


def to_medium(wave: np.ndarray, medium: str, target: str) -> np.ndarray:
    """Wavelengths (Angstrom) given in ``medium`` (air|vacuum) expressed in ``target``."""
    if medium == target:
        return np.asarray(wave, dtype=np.float64)
    if (medium, target) == ("vacuum", "air"):
        return vacuum_to_air(wave)
    if (medium, target) == ("air", "vacuum"):
        return air_to_vacuum(wave)
    raise ValueError(f"unknown wavelength medium conversion {medium!r} -> {target!r} (air|vacuum)")


def gaussian_pixel_weights(sigma_pix: np.ndarray, half_width: int) -> np.ndarray:
    """Pixel-integrated Gaussian kernels, one per row: shape (len(sigma_pix), 2*half_width+1).

    Integrating over each pixel (rather than sampling the Gaussian at its centre) keeps the kernel
    normalised and exact for widths well under one pixel; sigma 0 gives a delta function.
    """
    sigma = np.maximum(np.asarray(sigma_pix, dtype=np.float64), 1e-6)[:, None]
    k = np.arange(-half_width, half_width + 1, dtype=np.float64)[None, :]
    s2 = np.sqrt(2.0) * sigma
    w = 0.5 * (erf((k + 0.5) / s2) - erf((k - 0.5) / s2))
    return w / w.sum(axis=1, keepdims=True)


def convolve_variable_gaussian(flux: np.ndarray, sigma_pix: np.ndarray) -> np.ndarray:
    """Convolve spectra (..., npix) with a Gaussian whose sigma (pixels) varies per output pixel.

    Edges are padded with the edge value. ``sigma_pix`` has shape (npix,).
    """
    flux = np.asarray(flux)
    sigma_pix = np.broadcast_to(np.asarray(sigma_pix, dtype=np.float64), flux.shape[-1:])
    half = max(int(np.ceil(4.0 * sigma_pix.max())), 1)
    weights = gaussian_pixel_weights(sigma_pix, half).astype(flux.dtype, copy=False)
    pad = [(0, 0)] * (flux.ndim - 1) + [(half, half)]
    padded = np.pad(flux, pad, mode="edge")
    out = np.zeros_like(flux)
    n = flux.shape[-1]
    for j in range(2 * half + 1):
        out += weights[:, j] * padded[..., j : j + n]
    return out


def match_lsf(
    wave: np.ndarray, flux: np.ndarray, fwhm_from: float | np.ndarray, fwhm_to: float | np.ndarray
) -> np.ndarray:
    """Degrade spectra of resolution ``fwhm_from`` to ``fwhm_to`` (both Angstrom, scalar or per-wave).

    Where the target is sharper than the input no deconvolution is attempted (the difference is
    clipped at zero), as pPXF does. ``wave`` must be a linear grid.
    """
    step = float(wave[1] - wave[0])
    diff2 = np.asarray(fwhm_to, dtype=np.float64) ** 2 - np.asarray(fwhm_from, dtype=np.float64) ** 2
    sigma_pix = np.sqrt(np.clip(diff2, 0.0, None)) * FWHM_TO_SIGMA / step
    sigma_pix = np.broadcast_to(sigma_pix, np.shape(wave))
    return convolve_variable_gaussian(flux, sigma_pix)


def log_wave_grid(wmin: float, wmax: float, velscale: float) -> np.ndarray:
    """Wavelengths (Angstrom) equally spaced in ln(lambda) with ``velscale`` km/s per pixel."""
    dln = velscale / C_KMS
    n = int(np.floor(np.log(wmax / wmin) / dln)) + 1
    return wmin * np.exp(dln * np.arange(n))


def resample(wave_in: np.ndarray, flux: np.ndarray, wave_out: np.ndarray) -> np.ndarray:
    """Linear interpolation of spectra (..., nin) onto ``wave_out``; NaN outside the input range."""
    idx = np.clip(np.searchsorted(wave_in, wave_out) - 1, 0, wave_in.size - 2)
    w = (wave_out - wave_in[idx]) / (wave_in[idx + 1] - wave_in[idx])
    out = flux[..., idx] * (1.0 - w) + flux[..., idx + 1] * w
    outside = (wave_out < wave_in[0]) | (wave_out > wave_in[-1])
    if outside.any():
        out = out.astype(np.result_type(out, np.float32), copy=False)
        out[..., outside] = np.nan
    return out


def losvd_convolve(flux_log: np.ndarray, velscale: float, velocity: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Shift and broaden spectra sampled in ln(lambda) by Gaussian line-of-sight velocity distributions.

    ``flux_log`` (nspec, npix) with ``velscale`` km/s per pixel; ``velocity`` and ``sigma`` (nspec,)
    km/s. Uses the analytic Fourier transform of the Gaussian, exact also for sigma below one pixel
    (Cappellari 2017). Positive velocity moves features to longer wavelengths.
    """
    flux_log = np.atleast_2d(flux_log)
    npix = flux_log.shape[-1]
    nfft = 1 << int(np.ceil(np.log2(npix * 1.25)))
    ft = np.fft.rfft(flux_log, n=nfft, axis=-1)
    omega = 2.0 * np.pi * np.fft.rfftfreq(nfft)[None, :]
    mu = (np.asarray(velocity, dtype=np.float64) / velscale)[:, None]
    sig = (np.asarray(sigma, dtype=np.float64) / velscale)[:, None]
    kernel = np.exp(-0.5 * (omega * sig) ** 2 - 1j * omega * mu)
    return np.fft.irfft(ft * kernel, n=nfft, axis=-1)[..., :npix].astype(flux_log.dtype, copy=False)


def _dust_law(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """A(lambda)/A_V for a named law of the ``extinction`` package."""
    import extinction

    laws = {
        "calzetti00": lambda w: extinction.calzetti00(w, 1.0, 4.05),
        "ccm89": lambda w: extinction.ccm89(w, 1.0, 3.1),
        "odonnell94": lambda w: extinction.odonnell94(w, 1.0, 3.1),
        "fitzpatrick99": lambda w: extinction.fitzpatrick99(w, 1.0, 3.1),
    }
    if name not in laws:
        raise ValueError(f"unknown dust law {name!r}; choose one of {sorted(laws)}")
    return laws[name]


def attenuation_curve(wave: np.ndarray, law: str = "calzetti00") -> np.ndarray:
    """A(lambda)/A_V (mag per mag) at rest-frame ``wave`` (Angstrom) for a law from ``extinction``."""
    return _dust_law(law)(np.ascontiguousarray(wave, dtype=np.float64))


#: the Milky Way's extinction law for foreground corrections (Fitzpatrick 1999, R_V = 3.1)
FOREGROUND_LAW = "fitzpatrick99, R_V = 3.1"


def foreground_correction(wave: np.ndarray, ebv: float) -> np.ndarray:
    """The factor 10**(0.4 A(lambda)) that undoes a Milky Way foreground of colour excess ``ebv`` (mag)
    at observed ``wave`` (Angstrom): Fitzpatrick (1999) with R_V = 3.1, as SFD/Schlafly maps assume."""
    return np.power(10.0, 0.4 * 3.1 * float(ebv) * attenuation_curve(wave, "fitzpatrick99"))


def attenuate(wave: np.ndarray, flux: np.ndarray, av: np.ndarray | float, law: str = "calzetti00") -> np.ndarray:
    """Screen attenuation: flux * 10**(-0.4 A_V k(lambda)); ``av`` scalar or (nspec,) mag."""
    k = attenuation_curve(wave, law)
    av = np.asarray(av, dtype=np.float64)
    factor = 10.0 ** (-0.4 * av[..., None] * k) if av.ndim else 10.0 ** (-0.4 * av * k)
    return (flux * factor).astype(flux.dtype, copy=False)
