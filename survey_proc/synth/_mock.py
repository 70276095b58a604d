"""Mock MUSE-like cubes of a disc galaxy with their truth maps.

The galaxy: exponential disc plus a Sersic bulge seen at an inclination, two logarithmic spiral
arms with young stars, gas and dust, radial gradients in age and [M/H] with scatter, patchy dust,
a rotating velocity field and a dispersion map. Every spaxel is a mixture of several SSPs (bulge,
disc and arm components) of one SSP library (``MockConfig.library``: E-MILES unless another is
named), observed through the MUSE LSF at the galaxy redshift, with nebular lines, sky-line residuals
and noise set by surface brightness. The truth maps (light- and mass-weighted age and [M/H], A_V,
sigma, velocity, the light-fraction grid on that library's ages and metallicities) are computed from
the very weights used, and written to the store's ``truth`` group.

A library that stops short of the cube's wavelengths (several end near 7400 Angstrom) refuses the
mock, unless ``mask_uncovered``: then the pixels it does not cover (with the synthesis' velocity
margin) are masked (``mask`` true, ``flux`` and ``var`` NaN) in every spaxel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.ndimage import gaussian_filter

from survey_proc.errors import OptionError
from survey_proc.geometry import disc_coordinates, half_light_radius
from survey_proc.ssp import L_SUN_ERG_S, SSPLibrary, surface_density_factor
from survey_proc.stores import open_maps, property_attrs
from survey_proc.synth._photometry import library_observed_range
from survey_proc.synth._populations import (
    constant_sfh,
    light_weighted,
    mass_to_light,
    mass_weighted,
    sample_cluster,
    sfr_per_light,
)

#: galaxies a mock can be made "like": shape and distance parameters
LIKE = {
    # NGC 4254 (M99): a nearly face-on grand-design spiral at 2400 km/s; a PHANGS-MUSE mosaic
    # holds ~65,000 spaxels after binning to 0.8"; we keep that scale.
    "ngc4254": {"nx": 255, "ny": 255, "redshift": 0.00803, "inclination": 20.0, "position_angle": 68.0},
}


@dataclass
class GalaxyParams:
    """What the mock galaxy is made of (lengths as fractions of half the field, ages log10 yr, [M/H] dex,
    gradients per R/R_e). The defaults are the original mock disc galaxy; :meth:`draw` varies them."""

    disc_scale: float = 0.5  #: exponential scale length, fraction of half the smaller side
    bulge_radius: float = 0.12  #: bulge effective radius, fraction of half the smaller side
    bulge_amplitude: float = 0.8  #: bulge central surface brightness relative to the disc's
    centre_dx: float = 0.0  #: centre offset from the field centre, fraction of the side
    centre_dy: float = 0.0
    arm_pitch_deg: float = 20.0
    arm_strength: float = 0.35  #: light fraction of young stars on the arm crests
    disc_log_age: float = 9.85  #: at the centre (R = 0)
    grad_log_age: float = -0.30  #: d log_age / d(R/R_e) of the disc
    disc_metallicity: float = 0.05
    grad_metallicity: float = -0.25
    bulge_log_age: float = 10.05
    bulge_metallicity: float = 0.15
    population_scatter: float = 0.06  #: smooth spaxel-to-spaxel scatter of the disc centres (dex)
    young_log_age: tuple[float, float] = (7.8, 8.4)
    dust_profile: str = "lognormal"  #: lognormal: A_V = base exp(arms + scatter + gradient); linear: their sum
    dust_base: float = 0.3  #: A_V of the disc at the centre (mag)
    dust_arms: float = 1.2  #: arm crests: extra ln A_V (lognormal) or A_V (linear)
    dust_gradient: float = -0.25  #: d ln A_V / d(R/R_e) (lognormal) or d A_V / d(R/R_e) (linear)
    dust_scatter: float = 0.45  #: patchiness, in ln A_V (lognormal) or A_V (linear)
    av_max: float = 1.5
    halpha_ew: float = 40.0  #: Angstrom, on the arm crests
    young_disc: float = 0.0  #: light fraction of young stars spread over the disc (diffuse star formation)
    young_sfh: str = "burst"  #: burst: one SSP per pixel aged within young_log_age; constant: SFR constant
    #: since 10**young_log_age[1] yr
    halpha_from_sfr: bool = False  #: H-alpha from the star-formation rate (Kennicutt) instead of ``halpha_ew``
    v_max: float = 200.0  #: km/s
    sigma_centre: float = 140.0  #: km/s above the disc's 45 km/s

    @classmethod
    def draw(cls, rng: np.random.Generator) -> GalaxyParams:
        """A random galaxy for training sets: sizes, bulge, gradients, ages, dust, arms, centre."""
        u = rng.uniform
        return cls(
            disc_scale=u(0.3, 0.8),
            bulge_radius=u(0.05, 0.2),
            bulge_amplitude=10 ** u(-1.5, 0.4),
            centre_dx=u(-0.12, 0.12),
            centre_dy=u(-0.12, 0.12),
            arm_pitch_deg=u(10, 35),
            disc_log_age=u(9.1, 10.1),
            grad_log_age=u(-0.5, 0.15),
            disc_metallicity=u(-0.8, 0.2),
            grad_metallicity=u(-0.5, 0.15),
            bulge_log_age=u(9.5, 10.2),
            bulge_metallicity=u(-0.4, 0.22),
            population_scatter=u(0.03, 0.12),
            dust_base=u(0.0, 0.7),
            dust_arms=u(0.0, 1.2),
            dust_gradient=u(-0.2, 0.05),
            dust_scatter=u(0.05, 0.25),
            av_max=2.0,
            halpha_ew=u(0.0, 80.0),
            v_max=u(80, 280),
            sigma_centre=u(40, 180),
            **cls._draw_star_formation(rng),
        )

    @staticmethod
    def _draw_star_formation(rng: np.random.Generator) -> dict:
        """Varied recent star formation: quenched discs, diffuse and arm-borne, young ages up to
        63-400 Myr, H-alpha following the star-formation rate."""
        quenched = rng.random() < 0.2
        diffuse = 0.0 if quenched or rng.random() < 0.2 else float(np.exp(rng.uniform(np.log(0.003), np.log(0.25))))
        return {
            "young_disc": diffuse,
            "arm_strength": 0.0 if quenched else float(rng.uniform(0.0, 0.6)),
            "young_log_age": (7.8, float(rng.uniform(8.0, 8.7))),
            "young_sfh": "constant",
            "halpha_from_sfr": True,
            "dust_profile": "linear" if rng.random() < 0.7 else "lognormal",
        }


@dataclass
class MockConfig:
    """Parameters of a mock cube (lengths in spaxels, wavelengths in Angstrom)."""

    nx: int = 32
    ny: int = 32
    seed: int = 0
    snr: float = 30.0  #: S/N per Angstrom of the brightest spaxels
    redshift: float = 0.008
    inclination: float = 40.0  #: degrees (0 = face-on)
    position_angle: float = 30.0  #: degrees, of the major axis, from +y towards +x
    wave_start: float = 4750.0
    wave_stop: float = 9350.0
    wave_step: float = 1.25
    chunk: int = 32  #: spatial chunk of the store
    peak_flux: float = 1000.0  #: continuum of the brightest spaxel, 1e-20 erg/s/cm2/A
    sky_fraction: float = 0.05  #: sky variance as a fraction of the peak spaxel's source variance
    bad_pixel_fraction: float = 2e-4  #: random detector pixels masked (flux NaN)
    pixel_scale_arcsec: float = 0.2  #: spaxel size (MUSE WFM); sets surface brightness and mass density
    psf_fwhm_pixels: float = 0.0  #: Gaussian seeing applied to mock photometry (images) only
    like: str | None = None
    galaxy: GalaxyParams = field(default_factory=GalaxyParams)
    extra: dict = field(default_factory=dict)
    library: str = "emiles"  #: the SSP library the spectra and the truth come from (survey_proc.ssp.SSP_LIBRARIES)
    mask_uncovered: bool = False  #: mask the cube's pixels beyond the library's range instead of refusing the mock

    @classmethod
    def like_galaxy(cls, name: str, **overrides) -> MockConfig:
        key = name.lower()
        if key not in LIKE:
            raise ValueError(f"unknown galaxy {name!r}; known: {', '.join(sorted(LIKE))}")
        params = dict(LIKE[key]) | {k: v for k, v in overrides.items() if v is not None}
        return cls(like=key, **params)

    @property
    def wave(self) -> np.ndarray:
        n = int(round((self.wave_stop - self.wave_start) / self.wave_step)) + 1
        return self.wave_start + self.wave_step * np.arange(n)

    def check(self, lib: SSPLibrary | None = None) -> None:
        """Raise :class:`OptionError` naming every option no mock can be made with; with ``lib``,
        also the redshifts at which the library does not cover the cube's wavelengths (with
        ``mask_uncovered``: only a library that covers none of them)."""
        problems = self._option_problems()
        if lib is not None and not problems:
            problems += self._coverage_problems(lib)
        if problems:
            raise OptionError("cannot make this mock: " + "; ".join(problems))

    def covered(self, lib: SSPLibrary) -> np.ndarray:
        """Which of the cube's wavelengths (``wave``) the library covers at this redshift, with the
        synthesis' velocity margin; the others are masked (``mask_uncovered``) or the mock refused."""
        lo, hi = library_observed_range(lib, self.redshift)
        return (self.wave >= lo) & (self.wave <= hi)

    def _option_problems(self) -> list[str]:
        def finite(value: float, low: float, what: str, strict: bool = True) -> list[str]:
            ok = np.isfinite(value) and (value > low if strict else value >= low)
            return [] if ok else [f"{what} is {value:g}, expected a finite value {'>' if strict else '>='} {low:g}"]

        problems = finite(self.snr, 0, "--snr (S/N per Angstrom of the brightest spaxels)")
        problems += finite(self.pixel_scale_arcsec, 0, "--pixel-scale (arcsec)")
        problems += finite(self.psf_fwhm_pixels, 0, "--psf-fwhm (pixels)", strict=False)
        problems += finite(self.peak_flux, 0, "peak_flux") + finite(self.wave_step, 0, "wave_step")
        if not (np.isfinite(self.redshift) and -0.01 <= self.redshift < 10):
            problems.append(f"--redshift {self.redshift:g} is outside [-0.01, 10)")
        if not (np.isfinite(self.wave_start) and np.isfinite(self.wave_stop) and 0 < self.wave_start < self.wave_stop):
            problems.append(f"--wave-range {self.wave_start:g} {self.wave_stop:g}: expected 0 < START < STOP")
        return problems

    def _coverage_problems(self, lib: SSPLibrary) -> list[str]:
        if self.mask_uncovered:
            if self.covered(lib).any():
                return []
            return [f"the SSP library {lib.name!r} covers none of the cube's wavelengths at z = {self.redshift:g}"]
        lo, hi = library_observed_range(lib, 0.0)  # both scale with 1 + z
        z_min, z_max = max(-0.01, self.wave_stop / hi - 1), self.wave_start / lo - 1
        if z_min <= self.redshift <= z_max:
            return []
        where = (
            f"for {z_min:.3f} <= z <= {z_max:.3f}: choose a redshift in that range"
            if z_min <= z_max
            else "at no redshift: choose a narrower --wave-range"
        )
        return [
            f"at --redshift {self.redshift:g} the SSP library ({lib.wave[0]:.0f}-{lib.wave[-1]:.0f} A rest frame) "
            f"does not cover the cube's {self.wave_start:g}-{self.wave_stop:g} A; it covers them {where}"
            " (or --mask-uncovered: mask the pixels it does not cover)"
        ]


@dataclass
class GalaxyMaps:
    """Per-spaxel inputs of the mock (all (ny, nx) unless stated)."""

    radius: np.ndarray  #: deprojected radius, spaxels
    light: np.ndarray  #: continuum surface brightness in the light window, before dust
    weights: np.ndarray  #: (ny, nx, nmetal, nage) light fractions
    av: np.ndarray  #: mag
    velocity: np.ndarray  #: km/s, relative to systemic
    sigma: np.ndarray  #: km/s
    halpha: np.ndarray  #: H-alpha line flux before dust (flux x Angstrom)
    r_e: float  #: effective (half-light) radius, spaxels, along the disc plane
    gradients: dict  #: the input radial gradients (per R/R_e)


def galaxy_centre(cfg: MockConfig) -> tuple[float, float]:
    """(x0, y0) of the galaxy centre, spaxels."""
    return ((cfg.nx - 1) / 2.0 + cfg.galaxy.centre_dx * cfg.nx, (cfg.ny - 1) / 2.0 + cfg.galaxy.centre_dy * cfg.ny)


def _disc_coordinates(cfg: MockConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deprojected radius, azimuth in the disc plane, and the major-axis coordinate."""
    x0, y0 = galaxy_centre(cfg)
    return disc_coordinates((cfg.ny, cfg.nx), x0, y0, cfg.inclination, cfg.position_angle)


def galaxy_maps(cfg: MockConfig, lib: SSPLibrary, rng: np.random.Generator) -> GalaxyMaps:
    """Draw the galaxy of ``cfg.galaxy``: surface brightness, populations, dust and kinematics per spaxel."""
    g = cfg.galaxy
    radius, azimuth, _ = _disc_coordinates(cfg)
    half = min(cfg.nx, cfg.ny) / 2.0
    h = g.disc_scale * half  # disc scale length (default: the field spans ~2 scale lengths)
    r_b = g.bulge_radius * half  # bulge effective radius
    disc = np.exp(-radius / h)
    bulge = g.bulge_amplitude * np.exp(-3.67 * ((radius / r_b) ** 0.5 - 1.0)) / np.exp(3.67)
    light = disc + bulge
    r_e = half_light_radius(radius, light)
    f_bulge = bulge / light

    # two logarithmic spiral arms, where young stars, gas and dust concentrate
    pitch = np.deg2rad(g.arm_pitch_deg)
    phase = azimuth - np.log(np.maximum(radius, 0.5) / (0.3 * h)) / np.tan(pitch)
    arms = np.clip(np.cos(2 * phase), 0, None) ** 4 * np.clip((radius - 0.4 * h) / h, 0, 1)
    f_young = g.arm_strength * arms * (1 - f_bulge)
    if g.young_disc > 0:  # diffuse star formation across the disc, on top of the arms
        f_young = np.minimum(f_young + g.young_disc * (1 - f_bulge), 0.9)

    # radial gradients with spaxel-to-spaxel scatter (smooth, correlated over a few spaxels)
    def field(scale: float) -> np.ndarray:
        f = gaussian_filter(rng.standard_normal(radius.shape), 1.5)
        return f / (f.std() + 1e-12) * scale

    grad = {"log_age_disc": g.grad_log_age, "metallicity_disc": g.grad_metallicity}
    x = radius / r_e
    disc_age = g.disc_log_age + grad["log_age_disc"] * x + field(g.population_scatter)
    disc_metal = g.disc_metallicity + grad["metallicity_disc"] * x + field(g.population_scatter)
    bulge_age = g.bulge_log_age + field(0.03)
    bulge_metal = g.bulge_metallicity + field(0.04)

    n = radius.size
    w_bulge = sample_cluster(
        rng, lib, bulge_age.ravel(), bulge_metal.ravel(), np.full(n, 0.08), np.full(n, 0.10), np.full(n, 2), 2
    )
    w_disc = sample_cluster(
        rng, lib, disc_age.ravel(), disc_metal.ravel(), np.full(n, 0.25), np.full(n, 0.15), rng.integers(2, 4, n), 3
    )
    w_young = _young_population(g, lib, disc_metal.ravel(), rng)
    fb, fy = f_bulge.ravel()[:, None, None], f_young.ravel()[:, None, None]
    weights = fb * w_bulge + (1 - fb - fy) * w_disc + fy * w_young

    # dust thicker in the arms and towards the centre (log-normal, as dust maps of discs look)
    if g.dust_profile == "lognormal":
        dust = g.dust_base * np.exp(g.dust_arms * arms + field(g.dust_scatter) + g.dust_gradient * x)
    elif g.dust_profile == "linear":  # the parameterised galaxies the photometric models were trained on
        dust = g.dust_base + g.dust_arms * arms + field(g.dust_scatter) + g.dust_gradient * x
    else:
        raise ValueError(f"unknown dust_profile {g.dust_profile!r} (lognormal | linear)")
    av = np.clip(dust, 0.0, g.av_max)

    v_max, r_turn = g.v_max, 0.25 * h
    sin_i = np.sin(np.deg2rad(cfg.inclination))
    velocity = v_max * np.tanh(radius / r_turn) * sin_i * np.cos(azimuth) + field(5.0)
    sigma = 45.0 + g.sigma_centre * np.exp(-radius / (1.5 * r_b)) + field(5.0)
    if g.halpha_from_sfr:  # H-alpha of the star formation of the last 100 Myr (Kennicutt 1998)
        halpha = light * halpha_equivalent_width(weights, lib, cfg.redshift).reshape(radius.shape)
    else:  # H-alpha equivalent width up to ``halpha_ew`` on the arm crests
        halpha = g.halpha_ew * f_young / max(g.arm_strength, 1e-6) * light * (arms > 0.05)

    return GalaxyMaps(
        radius=radius,
        light=light,
        weights=weights.reshape(*radius.shape, *weights.shape[1:]),
        av=av,
        velocity=velocity,
        sigma=np.clip(sigma, 20.0, 400.0),
        halpha=halpha,
        r_e=r_e,
        gradients=grad,
    )


def _young_population(g: GalaxyParams, lib: SSPLibrary, metal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light fractions (n, nmetal, nage) of the young stars of each pixel (see ``young_sfh``)."""
    n = metal.size
    if g.young_sfh == "constant":
        return constant_sfh(lib, 10.0 ** g.young_log_age[1], metal)
    if g.young_sfh != "burst":
        raise ValueError(f"unknown young_sfh {g.young_sfh!r} (burst | constant)")
    ages = rng.uniform(*g.young_log_age, n)
    return sample_cluster(rng, lib, ages, metal, np.full(n, 0.1), np.full(n, 0.1), np.ones(n, int), 1)


#: the flux unit of mock cubes, in erg/s/cm2/Angstrom
MOCK_FLUX_UNIT_CGS = 1e-20
#: SFR (M_sun/yr) per H-alpha luminosity (erg/s), Kennicutt (1998) for a Salpeter IMF like E-MILES's
KENNICUTT_HALPHA = 7.9e-42
#: the detection floor of star formation in the mocks (M_sun/yr/kpc2): log_sfr_surface_density is
#: log10(Sigma_SFR + floor), so pixels without young stars sit at log10(floor) and are not scored
SFR_FLOOR = 10**-3.5
#: the truth from which a pixel counts as star forming, and its SFR is scored: log10(2 x floor), i.e.
#: Sigma_SFR at least the floor
SFR_SCORED_FROM = float(np.log10(2 * SFR_FLOOR))


def star_forming(truth_sfr: np.ndarray) -> np.ndarray:
    """Where a true ``log_sfr_surface_density`` counts as star forming (at least :data:`SFR_SCORED_FROM`;
    False where NaN): the pixels whose SFR is scored, and what a ``star_forming_probability`` predicts."""
    with np.errstate(invalid="ignore"):
        return np.asarray(truth_sfr) >= SFR_SCORED_FROM


def halpha_equivalent_width(weights: np.ndarray, lib: SSPLibrary, redshift: float) -> np.ndarray:
    """Observed-frame H-alpha flux per unit mean flux density in the light window (Angstrom) of the
    star formation of light-fraction grids (..., nmetal, nage), before dust: L(H-alpha) = SFR / C."""
    return sfr_per_light(weights, lib) / (KENNICUTT_HALPHA * L_SUN_ERG_S) * (1 + redshift)


def log_mass_surface_density(
    window_flux: np.ndarray,
    mass_light: np.ndarray,
    redshift: float,
    pixel_scale_arcsec: float,
    flux_unit_cgs: float = MOCK_FLUX_UNIT_CGS,
) -> np.ndarray:
    """log10 stellar mass surface density (M_sun / kpc^2) from the observed mean flux density in the
    (redshifted) light window before dust and the mass per unit window light (M_sun per L_sun/A).

    Sigma = 4 pi (1+z)^5 f M/L / Omega_pixel (:func:`survey_proc.ssp.surface_density_factor`):
    independent of distance (surface brightness dimming included), so a model can learn it from
    surface brightness.
    """
    factor = surface_density_factor(redshift, pixel_scale_arcsec, flux_unit_cgs)
    sigma = factor * np.asarray(window_flux, np.float64) * np.asarray(mass_light, np.float64)
    with np.errstate(divide="ignore"):
        return np.log10(sigma)


def truth_values(
    maps: GalaxyMaps, lib: SSPLibrary, cfg: MockConfig, at_psf: bool = True, sfr: bool = False
) -> dict[str, np.ndarray]:
    """The per-spaxel truth (ny, nx) of the mock: light- and mass-weighted age and [M/H], A_V, kinematics,
    stellar mass surface density, and with ``sfr`` the star-formation-rate surface density over the
    last 100 Myr (``log_sfr_surface_density``: log10(Sigma_SFR + :data:`SFR_FLOOR`), M_sun/yr/kpc2).

    With a seeing (``cfg.psf_fwhm_pixels`` > 0, mock photometry) and ``at_psf``, the truth is given at the
    images' resolution: mass density convolved with the PSF, light-weighted quantities as the PSF-convolved
    light x value over the PSF-convolved light (mass-weighted ones likewise with mass). The populations of
    each pixel are drawn independently, so their pixel-to-pixel scatter is below the PSF and cannot be
    recovered from the images.
    """
    log_age, metal = light_weighted(maps.weights, lib)
    log_age_mw, metal_mw = mass_weighted(maps.weights, lib)
    window_flux = maps.light * cfg.peak_flux / maps.light.max()
    log_sigma = log_mass_surface_density(
        window_flux, mass_to_light(maps.weights, lib), cfg.redshift, cfg.pixel_scale_arcsec
    )
    values = {
        "log_age": log_age,
        "metallicity": metal,
        "log_age_mw": log_age_mw,
        "metallicity_mw": metal_mw,
        "av": maps.av,
        "sigma": maps.sigma,
        "velocity": maps.velocity,
        "log_mass_surface_density": log_sigma,
    }
    sfr_density = (
        10.0
        ** log_mass_surface_density(window_flux, sfr_per_light(maps.weights, lib), cfg.redshift, cfg.pixel_scale_arcsec)
        if sfr
        else None
    )
    if sfr_density is not None:
        values["log_sfr_surface_density"] = np.log10(sfr_density + SFR_FLOOR)
    if not (at_psf and cfg.psf_fwhm_pixels > 0):
        return values
    sigma_px = cfg.psf_fwhm_pixels / 2.3548

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma_px, mode="constant")

    mass = 10.0**log_sigma
    light_b, mass_b = blur(window_flux), blur(mass)
    out = {
        k: blur(window_flux * v) / light_b
        for k, v in values.items()
        if not k.endswith("_mw") and k not in ("log_mass_surface_density", "log_sfr_surface_density")
    }
    out.update({k: blur(mass * values[k]) / mass_b for k in ("log_age_mw", "metallicity_mw")})
    out["log_mass_surface_density"] = np.log10(mass_b)
    if sfr_density is not None:
        out["log_sfr_surface_density"] = np.log10(blur(sfr_density) + SFR_FLOOR)
    return out


def truth_dataset(maps: GalaxyMaps, lib: SSPLibrary, cfg: MockConfig, sfr: bool = False) -> xr.Dataset:
    """The truth maps in the Maps schema (with ``sfr``, the star-formation-rate surface density too)."""
    dims = ("y", "x")
    ds = xr.Dataset(
        {k: (dims, v.astype(np.float32), property_attrs(k)) for k, v in truth_values(maps, lib, cfg, sfr=sfr).items()}
    )
    if cfg.psf_fwhm_pixels > 0:  # the pixel-level truth too, beside the truth at the images' resolution
        for k, v in truth_values(maps, lib, cfg, at_psf=False, sfr=sfr).items():
            ds[f"{k}_intrinsic"] = (dims, v.astype(np.float32), property_attrs(k))
    ds["weights"] = (
        ("y", "x", "age", "metal"),
        np.swapaxes(maps.weights, -1, -2).astype(np.float32),
        property_attrs("weights"),
    )
    ds["light"] = (
        dims,
        (maps.light * cfg.peak_flux / maps.light.max()).astype(np.float32),
        {
            "units": "1e-20 erg/s/cm2/Angstrom",
            "long_name": "mean continuum flux density in the rest-frame light window before dust",
        },
    )
    ds["halpha_flux"] = (
        dims,
        (maps.halpha * cfg.peak_flux / maps.light.max()).astype(np.float32),
        {"units": "1e-20 erg/s/cm2", "long_name": "H-alpha line flux before dust"},
    )
    ds["radius"] = (
        dims,
        maps.radius.astype(np.float32),
        {"units": "spaxel", "long_name": "deprojected galactocentric radius"},
    )
    ds = ds.assign_coords(
        age=("age", lib.log_age, {"units": "log10(yr)", "long_name": "SSP log age"}),
        metal=("metal", lib.metal, {"units": "dex", "long_name": "SSP [M/H]"}),
    )
    ds.attrs.update(
        {
            "title": "truth maps of a survey-proc mock cube",
            "inclination_deg": cfg.inclination,
            "position_angle_deg": cfg.position_angle,
            "centre_x": galaxy_centre(cfg)[0],
            "centre_y": galaxy_centre(cfg)[1],
            "r_e_spaxel": maps.r_e,
            "input_gradients_per_r_e": str(maps.gradients),
            "light_weighting": "fraction of rest-frame flux in 5070-5950 Angstrom before dust",
            "ssp_library": lib.name,
            "pixel_scale_arcsec": cfg.pixel_scale_arcsec,
            "redshift": cfg.redshift,
            "truth_resolution": (
                f"PSF-matched: Gaussian seeing of FWHM {cfg.psf_fwhm_pixels:g} pixels (pixel-level "
                "truth in <name>_intrinsic)"
                if cfg.psf_fwhm_pixels > 0
                else "per spaxel"
            ),
        }
    )
    return ds


def open_truth(path: str | os.PathLike) -> xr.Dataset:
    """The truth maps of a mock cube."""
    return open_maps(Path(path), group="truth")
