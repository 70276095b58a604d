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


def mass_weighted(weights: np.ndarray, lib: SSPLibrary) -> tuple[np.ndarray, np.ndarray]:
    """Mass-weighted log10 age (yr) and [M/H] (dex) of light-fraction grids."""
    return light_weighted(mass_fractions(weights, lib), lib)


def nearest_index(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the grid point nearest to each value (grid sorted ascending)."""
    idx = np.clip(np.searchsorted(grid, values), 1, grid.size - 1)
    left = grid[idx - 1]
    right = grid[idx]
    return np.where(np.abs(values - left) <= np.abs(values - right), idx - 1, idx)


def sample_cluster(rng: np.random.Generator, lib: SSPLibrary, centre_log_age: np.ndarray,
                   centre_metal: np.ndarray, spread_age: np.ndarray, spread_metal: np.ndarray,
                   n_ssp: np.ndarray, max_ssp: int = 5) -> np.ndarray:
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


def sample_training_mixtures(rng: np.random.Generator, lib: SSPLibrary, n: int, *,
                             max_ssp: int = 5, young_fraction: float = 0.3) -> np.ndarray:
    """Light-fraction grids covering the age-[M/H] plane evenly (not one Gaussian blob).

    The centre of each mixture is uniform over the grid's log age and [M/H] ranges; the spread
    is uniform 0-0.5 dex in age and 0-0.4 dex in [M/H]; 1..max_ssp SSPs. A fraction of the mixtures
    gets a young burst (< 0.5 Gyr) with 0-50 % of the light on top, as in star-forming discs.
    """
    centre_age = rng.uniform(lib.log_age[0], lib.log_age[-1], n)
    centre_metal = rng.uniform(lib.metal[0], lib.metal[-1], n)
    weights = sample_cluster(rng, lib, centre_age, centre_metal, rng.uniform(0, 0.5, n),
                             rng.uniform(0, 0.4, n), rng.integers(1, max_ssp + 1, n), max_ssp)
    young = rng.random(n) < young_fraction
    if young.any():
        k = int(young.sum())
        burst = sample_cluster(rng, lib, rng.uniform(lib.log_age[0], np.log10(5e8), k),
                               rng.uniform(lib.metal[0], lib.metal[-1], k), np.full(k, 0.1),
                               np.full(k, 0.2), rng.integers(1, 3, k), 2)
        f = rng.uniform(0.0, 0.5, k)[:, None, None]
        weights[young] = (1 - f) * weights[young] + f * burst
    return weights
