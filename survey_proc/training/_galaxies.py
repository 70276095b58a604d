"""Training sets of whole mock galaxies observed through a filter set, and their splits.

Each galaxy is the mock disc galaxy of :mod:`survey_proc.synth` with randomly drawn parameters
(:meth:`GalaxyParams.draw`: sizes, bulge, arms, age and [M/H] levels and gradients, dust, H-alpha;
plus inclination, position angle, redshift, depth and surface brightness), observed noise-free
through the filters; noise is drawn afresh each epoch. Labels are the truth maps of each galaxy.
The splits keep whole galaxies apart (validation, test "Set B") and, for per-pixel models, also hold
out a random share of the pixels of the training galaxies ("Set A", after Liew-Cain et al. 2021).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from survey_proc import progress
from survey_proc.preprocess import InputKind
from survey_proc.ssp import FilterSet, SSPLibrary, load_filters, require_use
from survey_proc.synth import (
    GalaxyParams,
    MockConfig,
    PhotometrySynthesiser,
    band_noise,
    mock_band_fluxes,
    truth_values,
)

#: the label of the star-formation-rate surface density (its truth is made only when asked for)
SFR_LABEL = "log_sfr_surface_density"


@dataclass
class GalaxySetConfig:
    """How the galaxies of a training set are drawn (ranges inclusive; log-uniform where noted)."""

    n_galaxies: int = 800
    size: int = 32  #: pixels per side
    filters: str = "jpas36"
    pivot_range: tuple[float, float] | None = None  #: keep only the bands with pivots inside (Angstrom)
    redshifts: tuple[float, ...] = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03)
    snr_range: tuple[float, float] = (1.0, 20.0)  #: per Angstrom at the brightest pixel, log-uniform
    peak_flux_range: tuple[float, float] = (300.0, 3000.0)  #: 1e-20 erg/s/cm2/A per pixel, log-uniform
    sky_fraction_range: tuple[float, float] = (0.02, 0.2)
    inclination_range: tuple[float, float] = (0.0, 75.0)
    pixel_scale_arcsec: float = 0.2
    psf_fwhm_pixels: float = 0.0
    psf_fwhm_range: tuple[float, float] | None = None  #: seeing drawn per galaxy (pixels), else psf_fwhm_pixels
    mask_fraction: float = 0.003  #: band measurements masked per epoch
    seed: int = 0

    def digest(self, lib: SSPLibrary) -> str:
        payload = json.dumps({"cfg": asdict(self), "lib": lib.digest()}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class GalaxySet:
    """Noise-free band images of galaxies with their truth maps."""

    flux: np.ndarray  #: (G, H, W, nband) nJy
    var: np.ndarray  #: (G, H, W, nband) nJy^2, the noise each epoch draws
    labels: np.ndarray  #: (G, H, W, nlabel)
    label_names: tuple[str, ...]
    redshift: np.ndarray  #: (G,)
    configs: list[MockConfig] = field(repr=False)
    filters: FilterSet = field(repr=False)

    def __len__(self) -> int:
        return self.flux.shape[0]

    def subset(self, idx: np.ndarray) -> GalaxySet:
        return GalaxySet(
            self.flux[idx],
            self.var[idx],
            self.labels[idx],
            self.label_names,
            self.redshift[idx],
            [self.configs[i] for i in idx],
            self.filters,
        )

    def at_snr(self, snr: float) -> GalaxySet:
        """The same galaxies observed to another depth (S/N per Angstrom at the brightest pixel)."""
        nb = self.flux.shape[-1]
        var = np.stack(
            [
                band_noise(f.reshape(-1, nb), self.filters, snr, c.sky_fraction, c.peak_flux).reshape(f.shape)
                for f, c in zip(self.flux, self.configs)
            ]
        )
        configs = [dataclasses.replace(c, snr=float(snr)) for c in self.configs]
        return dataclasses.replace(self, var=var, configs=configs)

    def expected_snr(self) -> np.ndarray:
        """(G, H, W) median band S/N of the noise-free fluxes."""
        return np.median(self.flux / np.sqrt(self.var), axis=-1)


def draw_mock_config(rng: np.random.Generator, cfg: GalaxySetConfig) -> MockConfig:
    """The mock of one training galaxy."""

    def log_uniform(lo: float, hi: float) -> float:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    return MockConfig(
        nx=cfg.size,
        ny=cfg.size,
        seed=int(rng.integers(2**31 - 1)),
        snr=log_uniform(*cfg.snr_range),
        redshift=float(rng.choice(cfg.redshifts)),
        inclination=float(rng.uniform(*cfg.inclination_range)),
        position_angle=float(rng.uniform(0.0, 180.0)),
        chunk=cfg.size,
        peak_flux=log_uniform(*cfg.peak_flux_range),
        sky_fraction=float(rng.uniform(*cfg.sky_fraction_range)),
        pixel_scale_arcsec=cfg.pixel_scale_arcsec,
        psf_fwhm_pixels=cfg.psf_fwhm_pixels if cfg.psf_fwhm_range is None else float(rng.uniform(*cfg.psf_fwhm_range)),
        galaxy=GalaxyParams.draw(rng),
    )


def draw_configs(cfg: GalaxySetConfig) -> list[MockConfig]:
    """The mocks of the ``cfg.n_galaxies`` galaxies of a set, in order (cheap: nothing is synthesised)."""
    rng = np.random.default_rng(cfg.seed)
    return [draw_mock_config(rng, cfg) for _ in range(cfg.n_galaxies)]


def synthesise_galaxies(
    cfg: GalaxySetConfig,
    lib: SSPLibrary,
    labels: tuple[str, ...],
    indices: np.ndarray | None = None,
) -> GalaxySet:
    """The galaxies of ``cfg`` (those of ``indices`` only, if given), noise-free, with their truth
    (one photometric synthesiser per redshift, built once); an SSP library reserved for evaluation
    is refused."""
    require_use(lib, "training")
    filters = load_filters(cfg.filters)
    filters = filters if cfg.pivot_range is None else filters.in_range(*cfg.pivot_range)
    configs = draw_configs(cfg)
    configs = [configs[i] for i in (range(len(configs)) if indices is None else indices)]
    synths: dict[float, PhotometrySynthesiser] = {}
    shape = (len(configs), cfg.size, cfg.size)
    flux = np.empty((*shape, len(filters)), np.float32)
    var = np.empty_like(flux)
    lab = np.empty((*shape, len(labels)), np.float32)
    for g, mc in enumerate(progress.track(configs, "galaxies", unit="galaxy")):
        if mc.redshift not in synths:
            synths[mc.redshift] = PhotometrySynthesiser(lib, filters, mc.redshift)
        maps, flux[g], var[g], _ = mock_band_fluxes(mc, lib, filters, synths[mc.redshift], noise=False)
        truth = truth_values(maps, lib, mc, sfr=SFR_LABEL in labels)
        lab[g] = np.stack([truth[n] for n in labels], axis=-1)
    return GalaxySet(flux, var, lab, tuple(labels), np.array([c.redshift for c in configs]), configs, filters)


def holdout_pixels(shape: tuple[int, int, int], train_idx: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(G, H, W) bool: the pixels of the training galaxies held out of training at random (Set A,
    after Liew-Cain et al. 2021): the same for a configuration's training run and its evaluation."""
    rng = np.random.default_rng([seed, 3])
    hold = np.zeros(shape, bool)
    hold[train_idx] = rng.random((train_idx.size, *shape[1:])) < fraction
    return hold


def noisy(
    flux: np.ndarray, var: np.ndarray, rng: np.random.Generator, mask_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One noise realisation: (flux, var, mask) with a fraction of measurements masked (flux NaN)."""
    out = flux + rng.standard_normal(flux.shape, dtype=np.float32) * np.sqrt(var)
    mask = rng.random(flux.shape) < mask_fraction
    out[mask] = np.nan
    return out.astype(np.float32), var, mask


def prepared_galaxies(data: GalaxySet, spec: InputKind, rng: np.random.Generator, mask_fraction: float):
    """One noise realisation of ``data`` (:func:`noisy`) through ``spec``'s own preprocessing, galaxy by
    galaxy as the engine runs a tile: yields each galaxy's :class:`~survey_proc.preprocess.Prepared`."""
    g, h, w, nb = data.flux.shape
    f, v, m = noisy(data.flux, data.var, rng, mask_fraction)
    for k in range(g):
        yield spec.prepare_batch(
            f[k].reshape(-1, nb), v[k].reshape(-1, nb), m[k].reshape(-1, nb), spec.bands, float(data.redshift[k]),
            shape=(h, w),
        )  # fmt: skip


def split_galaxies(
    n: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) galaxy indices: whole galaxies, disjoint."""
    order = np.random.default_rng([seed, 17]).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    n_test = max(1, int(round(test_fraction * n)))
    return np.sort(order[n_val + n_test :]), np.sort(order[:n_val]), np.sort(order[n_val : n_val + n_test])
