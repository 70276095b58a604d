"""Synthetic photometry: spectra integrated through filter curves (AB fluxes, magnitudes, variance).

For a photon-counting detector the AB flux density of a spectrum f_lambda through a response R is

    f_nu = int f_lambda R lambda dlambda / int R c / lambda dlambda

(e.g. Fukugita et al. 1996; the convention ``speclite`` uses). On a sampled spectrum both integrals
are sums with trapezoid weights, so f_nu = sum(a_i f_i) / sum(b_i) and, for independent pixels,
var(f_nu) = sum(a_i^2 var_i) / sum(b_i)^2. Masked pixels are left out of both sums (the band mean
is taken over the good pixels); a band is masked when less than ``min_coverage`` of its weight lies
inside the spectrum's range or more than ``max_masked`` of it is masked. Fluxes are in nJy
(m_AB = 31.4 - 2.5 log10 f).

:class:`PhotometrySynthesiser` makes noise-free band fluxes of composite populations directly from
the SSP library (precomputed per template and A_V), for mock images and training sets of thousands
of galaxies; it agrees with integrating :class:`~survey_proc.synth.Synthesiser` spectra through the
same curves (the kinematic broadening it skips changes band fluxes by well under 1 %).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from survey_proc.ssp import C_KMS, LIGHT_WINDOW, FilterSet, SSPLibrary, attenuation_curve
from survey_proc.stores import ZP_NJY
from survey_proc.synth._spectra import EMISSION_LINES, SKY_LINES

C_ANGSTROM_S = 2.99792458e18
#: 1 nJy in erg/s/cm2/Hz
NJY_CGS = 1e-32


def trapezoid_widths(wave: np.ndarray) -> np.ndarray:
    """Trapezoid-rule weights of a sampled grid (Angstrom)."""
    wave = np.asarray(wave, np.float64)
    d = np.diff(wave)
    return 0.5 * (np.concatenate([d, [0.0]]) + np.concatenate([[0.0], d]))


def band_weights(wave: np.ndarray, filters: FilterSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, coverage) for spectra sampled at ``wave`` (Angstrom).

    a, b : (nwave, nband) so that f_nu = flux @ a / (ones @ b) (flux per Angstrom -> per Hz).
    coverage : (nband,) fraction of each band's weight int R c/lambda dlambda inside ``wave``'s range.
    """
    wave = np.asarray(wave, np.float64)
    r = np.stack([np.interp(wave, filters.wave, resp, left=0.0, right=0.0) for resp in filters.response], axis=1)
    dw = trapezoid_widths(wave)[:, None]
    a = r * wave[:, None] * dw
    b = r * (C_ANGSTROM_S / wave[:, None]) * dw
    inside = (filters.wave >= wave[0]) & (filters.wave <= wave[-1])
    full = np.trapezoid(filters.response / filters.wave, filters.wave, axis=1)
    part = np.trapezoid(np.where(inside, filters.response, 0.0) / filters.wave, filters.wave, axis=1)
    return a, b, part / full


@dataclass
class BandPhotometry:
    """Band fluxes of n spectra: ``flux``, ``var`` (nJy, nJy^2), ``mask`` (n, nband) and ``coverage`` (nband,)."""

    flux: np.ndarray
    var: np.ndarray
    mask: np.ndarray
    coverage: np.ndarray

    def ab(self) -> tuple[np.ndarray, np.ndarray]:
        """(AB magnitude, its 1-sigma error); NaN where the flux is not positive."""
        return ab_magnitude(self.flux, self.var)


def ab_magnitude(flux_njy: np.ndarray, var: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """AB magnitudes of fluxes in nJy and their errors (2.5/ln10 sigma/f); NaN where flux <= 0."""
    f = np.asarray(flux_njy, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(f > 0, ZP_NJY - 2.5 * np.log10(np.where(f > 0, f, 1.0)), np.nan)
        err = (
            (2.5 / np.log(10) * np.sqrt(np.asarray(var, np.float64)) / f)
            if var is not None
            else np.full_like(f, np.nan)
        )
    return mag, np.where(f > 0, err, np.nan)


def synthetic_photometry(
    flux: np.ndarray,
    var: np.ndarray | None,
    mask: np.ndarray | None,
    wave: np.ndarray,
    filters: FilterSet,
    flux_unit: float = 1.0,
    min_coverage: float = 0.99,
    max_masked: float = 0.2,
) -> BandPhotometry:
    """Band photometry of spectra (n, nwave) in units of ``flux_unit`` erg/s/cm2/Angstrom.

    ``var`` (same units squared) may be None (noise-free spectra: zero variance); ``mask`` True = bad.
    """
    flux = np.atleast_2d(np.asarray(flux))
    a, b, coverage = band_weights(wave, filters)
    good = np.isfinite(flux)
    if var is not None:
        var = np.atleast_2d(np.asarray(var))
        good &= np.isfinite(var) & (var >= 0)
    if mask is not None:
        good &= ~np.atleast_2d(np.asarray(mask, bool))
    f = np.where(good, flux, 0.0).astype(np.float64)
    den = good.astype(np.float64) @ b
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = flux_unit / NJY_CGS
        f_nu = (f @ a) / den * scale
        v_nu = (
            (np.where(good, var, 0.0).astype(np.float64) @ a**2) / den**2 * scale**2
            if var is not None
            else np.zeros_like(f_nu)
        )
        masked = 1.0 - den / b.sum(axis=0)[None, :]
    bad = (den <= 0) | (masked > max_masked) | (coverage < min_coverage)[None, :]
    f_nu[den <= 0] = np.nan
    v_nu[den <= 0] = np.nan
    return BandPhotometry(f_nu.astype(np.float32), v_nu.astype(np.float32), bad, coverage)


def sky_line_windows(
    wave: np.ndarray, lsf_fwhm: np.ndarray, lines: tuple[float, ...] = SKY_LINES, half_width_fwhm: float = 2.0
) -> np.ndarray:
    """Boolean (nwave,): within ``half_width_fwhm`` x the instrumental FWHM of a bright night-sky line
    (observed frame), where sky-subtraction residuals live in IFU cubes."""
    wave = np.asarray(wave, np.float64)
    out = np.zeros(wave.size, bool)
    for line in lines:
        if wave[0] <= line <= wave[-1]:
            out |= np.abs(wave - line) <= half_width_fwhm * np.interp(line, wave, lsf_fwhm)
    return out


def library_observed_range(lib: SSPLibrary, redshift: float, max_velocity: float = 2500.0) -> tuple[float, float]:
    """Observed wavelengths (Angstrom) a :class:`Synthesiser` can cover from ``lib`` at ``redshift``."""
    margin = np.exp(max_velocity / C_KMS)
    z1 = 1.0 + redshift
    return float((lib.wave[0] + 60.0) * z1 * margin), float((lib.wave[-1] - 10.0) * z1 / margin)


@dataclass
class PhotometrySynthesiser:
    """Noise-free band fluxes (nJy) of composite populations, straight from the SSP library.

    Templates are normalised to unit mean flux in the light window (as in :class:`Synthesiser`), so
    ``scale`` is the observed mean flux density there before dust (``flux_unit`` erg/s/cm2/A). Band
    fluxes per template are precomputed on a grid of A_V (screen dust, ``dust_law``) and interpolated
    linearly; nebular lines are added as delta functions at their Doppler-shifted wavelengths.
    """

    lib: SSPLibrary
    filters: FilterSet
    redshift: float
    flux_unit: float = 1e-20
    av_max: float = 3.0
    av_step: float = 0.025
    dust_law: str = "calzetti00"
    av_grid: np.ndarray = field(init=False, repr=False)
    table: np.ndarray = field(init=False, repr=False)  #: (nav, ntemplates, nband) nJy per unit scale
    coverage: np.ndarray = field(init=False, repr=False)  #: (nband,) share of each band the library covers

    def __post_init__(self) -> None:
        z1 = 1.0 + self.redshift
        lo, hi = self.filters.support.min(), self.filters.support.max()
        lib = self.lib.crop(max(lo / z1 - 5.0, self.lib.wave[0]), min(hi / z1 + 5.0, self.lib.wave[-1]))
        templates = lib.flux.reshape(-1, lib.wave.size) / self.lib.light_in_window(LIGHT_WINDOW).reshape(-1, 1)
        a, b, self.coverage = band_weights(lib.wave * z1, self.filters)
        k = attenuation_curve(lib.wave, self.dust_law)
        self.av_grid = np.arange(0.0, self.av_max + 0.5 * self.av_step, self.av_step)
        scale = self.flux_unit / NJY_CGS / b.sum(axis=0)
        self.table = np.stack([(templates * 10.0 ** (-0.4 * av * k)) @ a * scale for av in self.av_grid]).astype(
            np.float64
        )
        # emission lines: response x wavelength / int R c/lambda at each line, per band (evaluated per pixel)
        self._b_full = np.trapezoid(self.filters.response * C_ANGSTROM_S / self.filters.wave, self.filters.wave, axis=1)
        rest = np.array([w for w, _ in EMISSION_LINES.values()])
        self._line_rest = rest
        self._line_ratio = np.array([r for _, r in EMISSION_LINES.values()])
        self._line_k = attenuation_curve(rest, self.dust_law)

    def continuum(self, weights: np.ndarray, av: np.ndarray, scale: np.ndarray | float = 1.0) -> np.ndarray:
        """Band fluxes (n, nband) nJy of light-fraction grids (n, nmetal, nage) behind screens ``av`` (mag)."""
        n = weights.shape[0]
        w = weights.reshape(n, -1).astype(np.float64)
        pos = np.clip(np.asarray(av, np.float64), 0.0, self.av_grid[-1]) / self.av_step
        i0 = np.clip(np.floor(pos).astype(int), 0, self.av_grid.size - 2)
        t = (pos - i0)[:, None]
        out = np.empty((n, len(self.filters)))
        for i in np.unique(i0):
            sel = i0 == i
            out[sel] = (1 - t[sel]) * (w[sel] @ self.table[i]) + t[sel] * (w[sel] @ self.table[i + 1])
        return out * np.reshape(np.asarray(scale, np.float64), (-1, 1))

    def lines(self, halpha_flux: np.ndarray, velocity: np.ndarray, av: np.ndarray) -> np.ndarray:
        """Band fluxes (n, nband) nJy of the nebular lines of :data:`EMISSION_LINES` (``halpha_flux`` in
        flux_unit x Angstrom before dust; ``velocity`` km/s)."""
        halpha = np.asarray(halpha_flux, np.float64)
        out = np.zeros((halpha.size, len(self.filters)))
        z1 = (1.0 + self.redshift) * (1.0 + np.asarray(velocity, np.float64) / C_KMS)
        dust = 10.0 ** (-0.4 * np.asarray(av, np.float64)[:, None] * self._line_k[None, :])  # (n, nline)
        for j, (rest, ratio) in enumerate(zip(self._line_rest, self._line_ratio)):
            lam = rest * z1
            resp = np.stack(
                [np.interp(lam, self.filters.wave, r, left=0.0, right=0.0) for r in self.filters.response], 1
            )
            out += (halpha * ratio * dust[:, j])[:, None] * resp * lam[:, None] / self._b_full[None, :]
        return out * self.flux_unit / NJY_CGS

    def observe(
        self,
        weights: np.ndarray,
        av: np.ndarray,
        scale: np.ndarray | float = 1.0,
        halpha_flux: np.ndarray | None = None,
        velocity: np.ndarray | None = None,
    ) -> np.ndarray:
        """Continuum plus lines, (n, nband) nJy, float32."""
        out = self.continuum(weights, av, scale)
        if halpha_flux is not None:
            v = np.zeros(out.shape[0]) if velocity is None else velocity
            out += self.lines(halpha_flux, v, av)
        return out.astype(np.float32)


def band_noise(
    flux: np.ndarray, filters: FilterSet, snr: float, sky_fraction: float, peak_flux: float, flux_unit: float = 1e-20
) -> np.ndarray:
    """Variance (n, nband) nJy^2 of band fluxes (n, nband) nJy under the mock cubes' noise model.

    Per Angstrom of spectrum the variance of f_lambda is ``g f_lambda + s`` with S/N per Angstrom ``snr``
    for the continuum ``peak_flux`` (flux_unit) and a sky of ``sky_fraction`` of its source variance, as
    :func:`~survey_proc.synth.write_mock` draws it; a band averages that noise over its response, so
    mock photometry is as noisy as synthetic photometry of the corresponding mock cube (narrow and
    blue bands of red galaxies are the noisiest).
    """
    wave = filters.wave
    a, b, _ = band_weights(wave, filters)
    step = trapezoid_widths(wave)[:, None]
    to_njy = flux_unit / NJY_CGS
    per_flambda = a.sum(axis=0) / b.sum(axis=0) * to_njy  # nJy per flux_unit of a flat f_lambda
    var_factor = (a**2 / step).sum(axis=0) / b.sum(axis=0) ** 2 * to_njy**2  # nJy^2 per (flux_unit^2 / A)
    f_lambda = np.clip(np.asarray(flux, np.float64), 0.0, None) / per_flambda
    per_angstrom = (peak_flux * f_lambda + sky_fraction * peak_flux**2) / (snr**2 * (1.0 + sky_fraction))
    return (per_angstrom * var_factor).astype(np.float32)
