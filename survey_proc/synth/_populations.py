"""Composite stellar populations on the SSP grid: sampling mixtures and their light/mass averages.

Weights are *light fractions*: the share each SSP contributes to the mean flux in the rest-frame
window :data:`survey_proc.ssp.LIGHT_WINDOW` before dust, the convention pPXF uses with templates
normalised in that window. They have shape (..., nmetal, nage) like the library and sum to 1.
"""

from __future__ import annotations

import numpy as np

from survey_proc.ssp import SSPLibrary


def light_weighted(weights: np.ndarray, lib: SSPLibrary) -> tuple[np.ndarray, np.ndarray]:
    """Light-weighted log10 age (yr) and [M/H] (dex) of light-fraction grids (..., nmetal, nage)."""
    w = weights / weights.sum(axis=(-2, -1), keepdims=True)
    log_age = np.einsum("...ma,a->...", w, lib.log_age)
    metal = np.einsum("...ma,m->...", w, lib.metal)
    return log_age, metal


def mass_fractions(weights: np.ndarray, lib: SSPLibrary) -> np.ndarray:
    """Mass fractions (stars + remnants) of light-fraction grids (..., nmetal, nage)."""
    mass_to_light = lib.mass / lib.light_in_window()  # M_sun per unit window light
    m = weights * mass_to_light
    return m / m.sum(axis=(-2, -1), keepdims=True)


def mass_to_light(weights: np.ndarray, lib: SSPLibrary) -> np.ndarray:
    """Stellar mass (stars + remnants) per unit mean light in the light window of light-fraction grids
    (..., nmetal, nage): M_sun per (L_sun / Angstrom), before dust."""
    w = weights / weights.sum(axis=(-2, -1), keepdims=True)
    return np.einsum("...ma,ma->...", w, lib.mass / lib.light_in_window())


#: the window over which star-formation rates are averaged (yr)
SFR_WINDOW_YR = 1e8


def _age_bin_edges(lib: SSPLibrary) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) age (yr) of the bin each SSP stands for: edges midway in log age, the youngest
    bin reaching down to age 0 (the grid has no younger SSPs)."""
    la = lib.log_age
    edges = np.concatenate([[-np.inf], 0.5 * (la[1:] + la[:-1]), [la[-1] + 0.5 * (la[-1] - la[-2])]])
    return 10.0 ** edges[:-1], 10.0 ** edges[1:]


def _share_younger(lib: SSPLibrary, age_yr: float) -> np.ndarray:
    """(nage,) the share of each SSP's age bin younger than ``age_yr``."""
    lo, hi = _age_bin_edges(lib)
    return np.clip((np.minimum(hi, age_yr) - lo) / (hi - lo), 0.0, 1.0)


def constant_sfh(lib: SSPLibrary, duration_yr: float, metal: np.ndarray) -> np.ndarray:
    """Light-fraction grids (n, nmetal, nage) of a constant star-formation rate over the last
    ``duration_yr`` at [M/H] ``metal`` (n,) (split between the bracketing grid values)."""
    mass = _share_younger(lib, duration_yr) * np.diff(np.stack(_age_bin_edges(lib)), axis=0)[0]
    light = metal_split(lib, np.asarray(metal, np.float64))[:, :, None] * (mass[None, :] * lib.light_in_window())
    return light / light.sum(axis=(1, 2), keepdims=True)


def sfr_per_light(weights: np.ndarray, lib: SSPLibrary, window_yr: float = SFR_WINDOW_YR) -> np.ndarray:
    """Star-formation rate averaged over the last ``window_yr`` per unit mean light in the light
    window, before dust, of light-fraction grids (..., nmetal, nage): M_sun/yr per (L_sun / Angstrom).

    Each SSP stands for the stars formed over its age bin (:func:`age_bin_widths`; the youngest bin
    reaches down to age 0, the grid having no younger SSPs); the initial mass of the part of each bin
    younger than ``window_yr`` (light fraction over light per unit initial mass), over ``window_yr``.
    """
    inside = _share_younger(lib, window_yr)
    w = weights / weights.sum(axis=(-2, -1), keepdims=True)
    return np.einsum("...ma,ma->...", w, inside[None, :] / lib.light_in_window()) / window_yr


def mass_weighted(weights: np.ndarray, lib: SSPLibrary) -> tuple[np.ndarray, np.ndarray]:
    """Mass-weighted log10 age (yr) and [M/H] (dex) of light-fraction grids."""
    return light_weighted(mass_fractions(weights, lib), lib)


def nearest_index(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the grid point nearest to each value (grid sorted ascending)."""
    idx = np.clip(np.searchsorted(grid, values), 1, grid.size - 1)
    left = grid[idx - 1]
    right = grid[idx]
    return np.where(np.abs(values - left) <= np.abs(values - right), idx - 1, idx)


def sample_cluster(
    rng: np.random.Generator,
    lib: SSPLibrary,
    centre_log_age: np.ndarray,
    centre_metal: np.ndarray,
    spread_age: np.ndarray,
    spread_metal: np.ndarray,
    n_ssp: np.ndarray,
    max_ssp: int = 5,
) -> np.ndarray:
    """Light-fraction grids of mixtures of ``n_ssp`` SSPs scattered around a centre.

    Each mixture draws ``n_ssp[i]`` (1..max_ssp) SSPs whose log age and [M/H] are the centre plus
    Gaussian scatter of the given spread (dex), snapped to the grid, with Dirichlet(1) light
    fractions. Returns (n, nmetal, nage).
    """
    n = np.size(centre_log_age)
    nm, na = lib.metal.size, lib.log_age.size
    weights = np.zeros((n, nm, na))
    ages = np.asarray(centre_log_age)[:, None] + np.asarray(spread_age)[:, None] * rng.standard_normal((n, max_ssp))
    metals = np.asarray(centre_metal)[:, None] + np.asarray(spread_metal)[:, None] * rng.standard_normal((n, max_ssp))
    ia = nearest_index(lib.log_age, ages)
    im = nearest_index(lib.metal, metals)
    frac = rng.dirichlet(np.ones(max_ssp), size=n)
    active = np.arange(max_ssp)[None, :] < np.asarray(n_ssp)[:, None]
    frac = np.where(active, frac, 0.0)
    frac /= frac.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(n), max_ssp)
    np.add.at(weights, (rows, im.ravel(), ia.ravel()), frac.ravel())
    return weights


def age_bin_widths(lib: SSPLibrary) -> np.ndarray:
    """Width (yr) of the age interval each SSP of the grid stands for (edges midway in log age)."""
    la = lib.log_age
    edges = np.concatenate(
        [[la[0] - 0.5 * (la[1] - la[0])], 0.5 * (la[1:] + la[:-1]), [la[-1] + 0.5 * (la[-1] - la[-2])]]
    )
    return np.diff(10.0**edges)


def metal_split(lib: SSPLibrary, metal: np.ndarray) -> np.ndarray:
    """Weights (..., nmetal) that place a continuous [M/H] between its two bracketing grid values,
    so that the weighted mean of the grid equals ``metal`` (clipped to the grid's range)."""
    m = np.clip(metal, lib.metal[0], lib.metal[-1])
    hi = np.clip(np.searchsorted(lib.metal, m, side="right"), 1, lib.metal.size - 1)
    lo = hi - 1
    t = (m - lib.metal[lo]) / (lib.metal[hi] - lib.metal[lo])
    out = np.zeros((*m.shape, lib.metal.size))
    np.put_along_axis(out, lo[..., None], (1 - t)[..., None], axis=-1)
    np.put_along_axis(out, hi[..., None], t[..., None], axis=-1)
    return out


def sample_sfh_mixtures(
    rng: np.random.Generator, lib: SSPLibrary, n: int, *, burst_fraction: float = 0.4
) -> np.ndarray:
    """Light-fraction grids (n, nmetal, nage) of continuous star-formation histories.

    Delayed-tau histories, SFR(t) ∝ t exp(-t/tau) with t the time since formation: formation
    began 1-15.8 Gyr ago (uniform), tau log-uniform in 0.1-20 Gyr; a share ``burst_fraction`` gets a
    burst younger than 2 Gyr holding 1-30 % of the mass formed on top. [M/H] rises with time (chemical
    enrichment): from ``z0`` at formation to ``z1`` today, each drawn over the grid's range with
    ``z1 >= z0``; continuous values are split between bracketing grid metallicities. Mass formed
    per age bin becomes light through the SSPs' light per unit initial mass.
    """
    ages = 10.0**lib.log_age  # lookback time of each bin, yr
    width = age_bin_widths(lib)
    start = rng.uniform(max(1e9, 1.2 * ages[0]), ages[-1], n)[:, None]  # (a grid starting late: after its youngest)
    tau = np.exp(rng.uniform(np.log(1e8), np.log(2e10), n))[:, None]
    t = np.clip(start - ages[None, :], 0.0, None)  # time since formation when the bin's stars formed
    mass = t * np.exp(-t / tau) * width[None, :]
    burst = rng.random(n) < burst_fraction
    if burst.any():
        k = int(burst.sum())
        # (a library whose youngest SSP is older than 2 Gyr gets its youngest for the burst)
        idx = nearest_index(lib.log_age, rng.uniform(lib.log_age[0], max(lib.log_age[0], np.log10(2e9)), k))
        frac = rng.uniform(0.01, 0.3, k)
        total = mass[burst].sum(axis=1)
        mass[np.nonzero(burst)[0], idx] += frac * total / (1 - frac)
    mass /= mass.sum(axis=1, keepdims=True)
    z_a, z_b = rng.uniform(lib.metal[0], lib.metal[-1], (2, n))
    z0, z1 = np.minimum(z_a, z_b), np.maximum(z_a, z_b)
    frac_time = np.clip(1.0 - ages[None, :] / start, 0.0, 1.0)  # 0 at formation, 1 today
    metal = z0[:, None] + (z1 - z0)[:, None] * frac_time
    split = metal_split(lib, metal)  # (n, nage, nmetal)
    light_per_mass = lib.light_in_window()  # (nmetal, nage) per unit initial mass
    weights = np.einsum("na,nam,ma->nma", mass, split, light_per_mass)
    return weights / weights.sum(axis=(1, 2), keepdims=True)


def sample_training_mixtures(
    rng: np.random.Generator, lib: SSPLibrary, n: int, *, max_ssp: int = 5, young_fraction: float = 0.3
) -> np.ndarray:
    """Light-fraction grids covering the age-[M/H] plane evenly (not one Gaussian blob).

    The centre of each mixture is uniform over the grid's log age and [M/H] ranges; the spread
    is uniform 0-0.5 dex in age and 0-0.4 dex in [M/H]; 1..max_ssp SSPs. A fraction of the mixtures
    gets a young burst (< 0.5 Gyr) with 0-50 % of the light on top, as in star-forming discs.
    """
    centre_age = rng.uniform(lib.log_age[0], lib.log_age[-1], n)
    centre_metal = rng.uniform(lib.metal[0], lib.metal[-1], n)
    weights = sample_cluster(
        rng,
        lib,
        centre_age,
        centre_metal,
        rng.uniform(0, 0.5, n),
        rng.uniform(0, 0.4, n),
        rng.integers(1, max_ssp + 1, n),
        max_ssp,
    )
    young = rng.random(n) < young_fraction
    if young.any():
        k = int(young.sum())
        burst = sample_cluster(
            rng,
            lib,
            rng.uniform(lib.log_age[0], max(lib.log_age[0], np.log10(5e8)), k),
            rng.uniform(lib.metal[0], lib.metal[-1], k),
            np.full(k, 0.1),
            np.full(k, 0.2),
            rng.integers(1, 3, k),
            2,
        )
        f = rng.uniform(0.0, 0.5, k)[:, None, None]
        weights[young] = (1 - f) * weights[young] + f * burst
    return weights
