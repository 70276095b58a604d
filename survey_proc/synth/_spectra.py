"""Noise-free spectra of composite populations as an instrument sees them, in batches.

:class:`Synthesiser` prepares the library once for an instrument (LSF, redshift, output grid):
LSF-matched in the rest frame, normalised in the light window, rebinned to ln(lambda). Then each
batch is a matrix product (light fractions x templates), screen dust, a Gaussian LOSVD by FFT and a
resampling onto the observed grid — the model pPXF fits, so mocks and fits share one physics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from survey_proc.ssp import (
    C_KMS,
    LIGHT_WINDOW,
    SSPLibrary,
    attenuation_curve,
    log_wave_grid,
    losvd_convolve,
    match_lsf,
    resample,
)

#: nebular lines (air wavelengths, Angstrom) and flux relative to H-alpha before dust
EMISSION_LINES: dict[str, tuple[float, float]] = {
    "Hbeta": (4861.33, 1 / 2.86),
    "[OIII]4959": (4958.91, 0.5 / 2.86 / 2.98),
    "[OIII]5007": (5006.84, 0.5 / 2.86),
    "[NII]6548": (6548.05, 0.35 / 2.94),
    "Halpha": (6562.80, 1.0),
    "[NII]6583": (6583.45, 0.35),
    "[SII]6716": (6716.44, 0.2),
    "[SII]6731": (6730.82, 0.15),
}

#: :data:`EMISSION_LINES` plus the blue nebular lines an SDSS-like range (3800-8900 A observed)
#: reaches: [OII], [NeIII], H-delta, H-gamma (case B, ratios for a typical star-forming HII
#: region, Osterbrock & Ferland 2006) and [OI]6300
EMISSION_LINES_OPTICAL: dict[str, tuple[float, float]] = {
    "[OII]3726": (3726.03, 0.45 * 1.0),
    "[OII]3729": (3728.82, 0.45 * 1.2),
    "[NeIII]3869": (3868.75, 0.1 / 2.86),
    "Hdelta": (4101.74, 0.259 / 2.86),
    "Hgamma": (4340.47, 0.468 / 2.86),
    **EMISSION_LINES,
    "[OI]6300": (6300.30, 0.03),
}

#: line sets a training set can draw from (``TrainsetConfig.line_set``)
LINE_SETS = {"default": EMISSION_LINES, "optical": EMISSION_LINES_OPTICAL}

#: bright night-sky lines (air, observed frame, Angstrom) whose subtraction leaves residuals
SKY_LINES = (5577.34, 5889.95, 5895.92, 6300.30, 6363.78, 6863.96, 7340.89, 8344.60, 8399.17, 8827.10, 8885.85, 8919.64)


@dataclass
class Synthesiser:
    """Prepared library for one instrument set-up.

    Where the library does not reach the ends of ``wave_obs`` (at this redshift, with the velocity
    margin), the spectra are NaN there and unreliable within ``max_velocity`` of the library's ends:
    :func:`~survey_proc.synth.library_observed_range` gives the observed range that is sound.

    Parameters
    ----------
    lib : the SSP library.
    wave_obs : output wavelength grid, Angstrom (observed frame, linear or not).
    redshift : systemic redshift; the rest-frame grid is ``wave_obs / (1 + redshift)``.
    lsf_fwhm : callable giving the instrument FWHM (Angstrom) at observed wavelengths.
    velscale : ln(lambda) sampling of the internal grid, km/s per pixel.
    max_velocity : largest |velocity| + 5 sigma the internal grid leaves room for, km/s.
    dust_law : a law of the ``extinction`` package.
    """

    lib: SSPLibrary
    wave_obs: np.ndarray
    redshift: float
    lsf_fwhm: Callable[[np.ndarray], np.ndarray]
    velscale: float = 25.0
    max_velocity: float = 2500.0
    dust_law: str = "calzetti00"
    wave_log: np.ndarray = field(init=False, repr=False)
    templates: np.ndarray = field(init=False, repr=False)
    dust_curve: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        z1 = 1.0 + self.redshift
        margin = np.exp(self.max_velocity / C_KMS)
        # within the library: where it stops short of the output grid, the spectra there are NaN
        wmin = max(min(self.wave_obs[0] / z1 / margin, LIGHT_WINDOW[0]) - 5, self.lib.wave[0])
        wmax = min(max(self.wave_obs[-1] / z1 * margin, LIGHT_WINDOW[1]) + 5, self.lib.wave[-1])
        lib = self.lib.crop(wmin - 50, wmax + 50)
        # instrument FWHM in the rest frame: FWHM_obs(lambda (1+z)) / (1+z)
        fwhm_rest = self.lsf_fwhm(lib.wave * z1) / z1
        matched = match_lsf(lib.wave, lib.flux.reshape(-1, lib.wave.size), lib.fwhm, fwhm_rest)
        norm = lib.light_in_window().reshape(-1, 1)
        self.wave_log = log_wave_grid(wmin, wmax, self.velscale)
        self.templates = resample(lib.wave, matched / norm, self.wave_log).astype(np.float32)
        self.dust_curve = attenuation_curve(self.wave_log, self.dust_law).astype(np.float32)

    @property
    def n_templates(self) -> int:
        return self.templates.shape[0]

    def rest_frame(self, weights: np.ndarray, av: np.ndarray, velocity: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Spectra on the internal ln(lambda) rest grid, (n, nlog), unit mean light before dust."""
        n = weights.shape[0]
        flux = weights.reshape(n, -1).astype(np.float32) @ self.templates
        flux *= 10.0 ** (-0.4 * np.asarray(av, np.float32)[:, None] * self.dust_curve[None, :])
        return losvd_convolve(flux, self.velscale, velocity, sigma)

    def observe(
        self,
        weights: np.ndarray,
        av: np.ndarray,
        velocity: np.ndarray,
        sigma: np.ndarray,
        scale: np.ndarray | float = 1.0,
    ) -> np.ndarray:
        """Observed-frame spectra (n, len(wave_obs)), float32.

        ``weights`` (n, nmetal, nage) light fractions; ``av`` mag; ``velocity`` and ``sigma`` km/s
        relative to the systemic redshift; ``scale`` multiplies each spectrum (flux in the light
        window before dust).
        """
        rest = self.rest_frame(weights, av, velocity, sigma)
        out = resample(self.wave_log * (1.0 + self.redshift), rest, self.wave_obs)
        return (out * np.reshape(np.asarray(scale, np.float32), (-1, 1))).astype(np.float32)


def emission_line_spectra(
    wave_obs: np.ndarray,
    redshift: float,
    halpha_flux: np.ndarray,
    velocity: np.ndarray,
    sigma_gas: np.ndarray,
    av: np.ndarray,
    lsf_fwhm: Callable[[np.ndarray], np.ndarray],
    dust_law: str = "calzetti00",
    lines: dict[str, tuple[float, float]] | None = None,
) -> np.ndarray:
    """Gaussian nebular lines (n, len(wave_obs)) in flux density units per Angstrom.

    ``halpha_flux`` is the unattenuated H-alpha line flux (flux density x Angstrom); the other lines
    follow ``lines`` (default :data:`EMISSION_LINES`; air wavelengths, ratio to H-alpha), all attenuated
    by the screen ``av`` (mag) at their wavelengths.
    """
    n = np.size(halpha_flux)
    out = np.zeros((n, wave_obs.size), np.float32)
    lines = EMISSION_LINES if lines is None else lines
    rest = np.array([w for w, _ in lines.values()])
    ratio = np.array([r for _, r in lines.values()])
    k = attenuation_curve(rest, dust_law)
    z1 = (1 + redshift) * (1 + np.asarray(velocity, np.float64) / C_KMS)
    for j in range(rest.size):
        centre = rest[j] * z1  # (n,)
        sig = np.sqrt((centre * np.asarray(sigma_gas) / C_KMS) ** 2 + (lsf_fwhm(centre) / 2.3548) ** 2)
        amp = np.asarray(halpha_flux) * ratio[j] * 10 ** (-0.4 * np.asarray(av) * k[j])
        lo, hi = np.searchsorted(wave_obs, [centre.min() - 8 * sig.max(), centre.max() + 8 * sig.max()])
        if hi <= lo:
            continue
        w = wave_obs[lo:hi][None, :]
        out[:, lo:hi] += (
            amp[:, None]
            / (np.sqrt(2 * np.pi) * sig[:, None])
            * np.exp(-0.5 * ((w - centre[:, None]) / sig[:, None]) ** 2)
        )
    return out


def sky_line_profile(
    wave_obs: np.ndarray, lsf_fwhm: Callable[[np.ndarray], np.ndarray], lines: tuple[float, ...] = SKY_LINES
) -> np.ndarray:
    """(nlines, nwave) unit-peak Gaussian profiles of sky lines at the instrument resolution."""
    lines_arr = np.asarray([w for w in lines if wave_obs[0] < w < wave_obs[-1]])
    sig = lsf_fwhm(lines_arr) / 2.3548
    return np.exp(-0.5 * ((wave_obs[None, :] - lines_arr[:, None]) / sig[:, None]) ** 2)
