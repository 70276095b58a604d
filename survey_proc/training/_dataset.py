"""Training sets: noise-free observed spectra with labels, and fresh noise per epoch.

Spectra are synthesised in the *observed* frame of the instrument (MUSE or SDSS grid and LSF at a random
redshift), then each epoch draws new noise, bad pixels, high-noise patches and sky residuals and
runs the engine's own :func:`survey_proc.preprocess.prepare` — so a model trains on exactly what
the engine will feed it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from survey_proc import progress
from survey_proc.config import dataclass_options
from survey_proc.errors import OptionError
from survey_proc.preprocess import InputSpec, prepare
from survey_proc.ssp import SSPLibrary, load_ssp_library, muse_lsf_fwhm, sdss_lsf_fwhm, to_medium
from survey_proc.synth import (
    LINE_SETS,
    Synthesiser,
    emission_line_spectra,
    light_weighted,
    mass_weighted,
    sample_sfh_mixtures,
    sample_training_mixtures,
    sky_line_profile,
)


@dataclass(frozen=True)
class Instrument:
    """The observed-frame grid and resolution spectra of a training set are synthesised on."""

    name: str
    wave_start: float  #: Angstrom, observed frame
    wave_stop: float
    wave_step: float
    lsf_fwhm: Callable[[np.ndarray], np.ndarray]  #: FWHM (Angstrom) at observed wavelengths
    medium: str = "air"  #: medium of the grid (SDSS: vacuum)

    @property
    def wave(self) -> np.ndarray:
        return self.wave_start + self.wave_step * np.arange(
            int(round((self.wave_stop - self.wave_start) / self.wave_step)) + 1
        )

    @property
    def wave_air(self) -> np.ndarray:
        """The grid in air (the medium of the SSP library and of the line lists), Angstrom."""
        return self.wave_in("air")

    def wave_in(self, medium: str) -> np.ndarray:
        """The grid expressed in ``medium`` (a model's declared medium), Angstrom."""
        return self.wave if medium == self.medium else to_medium(self.wave, self.medium, medium)


#: instruments a training set can be drawn for (name in :class:`TrainsetConfig`)
INSTRUMENTS: dict[str, Instrument] = {
    "muse": Instrument("MUSE", 4750.0, 9350.0, 1.25, muse_lsf_fwhm),
    # SDSS: vacuum wavelengths, ~1.15 A pixels (the native 1e-4 dex at 5000 A), resolution from
    # the spectra's own wdisp (ssp.sdss_lsf_fwhm)
    "sdss": Instrument("SDSS", 3700.0, 9300.0, 1.15, sdss_lsf_fwhm, medium="vacuum"),
}

#: Calzetti et al. (2000) R_V = A_V / E(B-V) of the attenuation law the spectra are reddened with;
#: the label ``ebv`` is A_V / CALZETTI_RV
CALZETTI_RV = 4.05
#: R_V = A_V / E(B-V) of each dust law a set can be reddened with (ssp.attenuation_curve), for ``ebv``
DUST_LAW_RV = {"calzetti00": CALZETTI_RV, "ccm89": 3.1, "odonnell94": 3.1, "fitzpatrick99": 3.1}


@dataclass
class TrainsetConfig:
    """How spectra of a training set are drawn (ranges are inclusive; units in names).

    Follows the GalProTE recipe (mixtures of 1-5 SSPs with random weights, dust A_V 0-1.5 mag on a
    real attenuation law, noise from S/N 5 to noiseless, high-noise patches up to a quarter of the
    spectrum, 15-25 masked patches of 3-15 pixels, emission-line and sky masks), extended with
    continuous star-formation histories (delayed-tau with bursts and chemical enrichment), velocity
    dispersions 30-300 km/s, velocity offsets of +-300 km/s relative to the assumed redshift
    (rotation and redshift errors alike) and priors that cover the age-[M/H] plane evenly.
    """

    n: int = 20000
    seed: int = 0
    instrument: str = "muse"
    labels: tuple[str, ...] = ("log_age", "metallicity", "av", "sigma")
    redshift_range: tuple[float, float] = (0.0, 0.1)
    redshift_distribution: str = "uniform"  #: uniform | sdss | sdss-nearby (see draw_redshift)
    av_range: tuple[float, float] = (0.0, 1.5)
    dust_law: str = "calzetti00"
    sigma_range_kms: tuple[float, float] = (30.0, 300.0)
    velocity_range_kms: tuple[float, float] = (-300.0, 300.0)
    snr_range: tuple[float, float] = (5.0, 80.0)  #: S/N per Angstrom, log-uniform
    noiseless_fraction: float = 0.05  #: spectra at S/N 300 (GalProTE's 0 % noise)
    max_ssp: int = 5
    young_fraction: float = 0.3  #: SSP mixtures with a young burst on top
    sfh_fraction: float = 0.3  #: spectra from continuous star-formation histories
    emission_fraction: float = 0.5
    max_halpha_ew: float = 60.0  #: Angstrom
    line_set: str = "default"  #: nebular lines drawn: default | optical (LINE_SETS)
    bad_patches: tuple[int, int] = (15, 25)  #: masked patches of 3-15 pixels per spectrum ...
    bad_patch_fraction: float = 0.5  #: ... in this share of the spectra
    noisy_patch_fraction: float = 0.25  #: share of spectra with a high-noise patch
    batch: int = 2048  #: spectra synthesised per redshift draw
    #: flux-calibration errors: each noise realisation multiplies a spectrum by 1 + sum_d c_d P_d(x), Legendre
    #: polynomials of degree 1..``flux_distortion_degree`` over its pixels, c_d ~ N(0, ``flux_distortion``)
    flux_distortion: float = 0.0
    flux_distortion_degree: int = 3
    #: other SSP libraries to draw spectra from (``ssp.SSP_LIBRARIES`` names of role calibration): the
    #: share of the batches each one gets; the rest come from the set's own library (E-MILES). Their
    #: labels are light-weighted on their own grids; their ``weights`` rows are zero (a grid of
    #: another shape): a model predicting the own library's grid learns it from the own rows only, and
    #: rebuilds every row with the own library's templates (``training._train.grid_cross_entropy``)
    libraries: dict[str, float] | None = None
    extra: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """The fields that define the set, for digests: options added later are left out while they
        hold the value that reproduces sets drawn before them (so older stores and checkpoints resume).
        ``libraries`` enters as (name, share) pairs in their order, which the batches' draws follow."""
        d = asdict(self)
        d["libraries"] = [[k, v] for k, v in self.libraries.items()] if self.libraries else None
        return {k: v for k, v in d.items() if k not in _LATER_OPTIONS or v != _LATER_OPTIONS[k]}

    def digest(self, lib: SSPLibrary, spec: InputSpec) -> str:
        """Hash of everything that defines the set (config, libraries, model input)."""
        payload = {"cfg": self.identity(), "lib": lib.digest(), "input": spec.to_manifest()}
        if self.libraries:
            payload["other_libs"] = [load_ssp_library(name, use="training").digest() for name in self.libraries]
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: options added to TrainsetConfig after training sets were first digested, at their neutral values
_LATER_OPTIONS = {
    "line_set": "default",
    "redshift_distribution": "uniform",
    "flux_distortion": 0.0,
    "flux_distortion_degree": 3,
    "libraries": None,
}

#: values that reproduce the draws of bundles recorded before these options existed (the recipe of
#: the first SDSS bundle: SSP mixtures only, bad patches in every spectrum)
_RECORDED_BEFORE = {"sfh_fraction": 0.0, "bad_patch_fraction": 1.0}


def trainset_from_record(recorded: dict) -> TrainsetConfig:
    """The :class:`TrainsetConfig` recorded in a manifest or store (lists back to tuples); an
    option the record predates gets the value that reproduces how that set was drawn."""
    values = {**_RECORDED_BEFORE, **recorded} if recorded else {}
    return TrainsetConfig(**dataclass_options(TrainsetConfig, values, "recorded trainset"))


#: ``kind`` values of a training spectrum
SSP_MIXTURE, CONTINUOUS_SFH = 0, 1


@dataclass
class NoiseFreeSet:
    """Spectra before noise: observed frame, one row per spectrum."""

    flux: np.ndarray  #: (n, nobs) float32, observed-frame flux on ``wave`` rows
    wave_index: np.ndarray  #: (n,) index into the full instrument grid of each row's first pixel
    redshift: np.ndarray  #: (n,)
    snr: np.ndarray  #: (n,) target S/N per Angstrom
    labels: np.ndarray  #: (n, nlabels) float32
    label_names: tuple[str, ...]
    weights: np.ndarray  #: (n, nmetal, nage) float32 light fractions
    kind: np.ndarray  #: (n,) SSP_MIXTURE or CONTINUOUS_SFH
    emission: np.ndarray  #: (n,) bool, nebular lines added

    def __len__(self) -> int:
        return self.flux.shape[0]

    def subset(self, idx: np.ndarray) -> NoiseFreeSet:
        return NoiseFreeSet(
            self.flux[idx],
            self.wave_index[idx],
            self.redshift[idx],
            self.snr[idx],
            self.labels[idx],
            self.label_names,
            self.weights[idx],
            self.kind[idx],
            self.emission[idx],
        )

    @classmethod
    def concat(cls, parts: list[NoiseFreeSet]) -> NoiseFreeSet:
        return cls(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("flux", "wave_index", "redshift", "snr", "labels")
            ),
            parts[0].label_names,
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("weights", "kind", "emission")),
        )


def instrument_of(cfg: TrainsetConfig) -> Instrument:
    try:
        return INSTRUMENTS[cfg.instrument]
    except KeyError:
        raise ValueError(f"unknown instrument {cfg.instrument!r}; known: {', '.join(INSTRUMENTS)}") from None


#: redshift distributions a training set can be drawn from (see draw_redshift)
REDSHIFT_DISTRIBUTIONS = ("uniform", "sdss", "sdss-nearby")
#: the upper redshift of the nearby share of ``sdss-nearby``
NEARBY_Z = 0.03


def draw_redshift(rng: np.random.Generator, cfg: TrainsetConfig) -> float:
    """One redshift inside ``cfg.redshift_range``.

    ``uniform``: uniform over the range. ``sdss``: 70 % from n(z) ~ z^2 exp(-(z/0.0708)^1.5)
    (median z = 0.10, like the SDSS main galaxy sample), 30 % uniform over the range (the
    luminous-red tail), both truncated to the range. ``sdss-nearby``: as ``sdss`` with a quarter of
    the draws uniform below z = :data:`NEARBY_Z` instead (nearby galaxies, whose observed-frame spectra
    ``sdss`` leaves almost unseen: 1 % of its draws fall below z = 0.01).
    """
    lo, hi = cfg.redshift_range
    if cfg.redshift_distribution == "uniform" or hi <= lo:
        return float(rng.uniform(lo, hi))
    if cfg.redshift_distribution not in REDSHIFT_DISTRIBUTIONS:
        known = " | ".join(REDSHIFT_DISTRIBUTIONS)
        raise ValueError(f"unknown redshift_distribution {cfg.redshift_distribution!r} ({known})")
    if cfg.redshift_distribution == "sdss-nearby" and rng.random() < 0.25:
        return float(rng.uniform(lo, max(lo, min(hi, NEARBY_Z))))
    if rng.random() < 0.3:
        return float(rng.uniform(lo, hi))
    for _ in range(1000):
        z = 0.0708 * rng.gamma(3.0 / 1.5, 1.0) ** (1 / 1.5)
        if lo <= z <= hi:
            return float(z)
    return float(rng.uniform(lo, hi))


def _row_window(spec: InputSpec, inst: Instrument, z: float, z_max: float) -> tuple[int, int]:
    """(first index into the instrument grid, pixels) of the rows synthesised at redshift ``z``:
    they cover the model grid (rest-frame models: at the largest redshift) plus a margin."""
    full = inst.wave
    lo, hi = spec.wave_start - 10.0, spec.wave_stop + 10.0
    if spec.frame == "observed":
        n_obs = int(np.ceil((hi - lo) / inst.wave_step)) + 2
        return int(np.clip(np.searchsorted(full, lo) - 1, 0, full.size - n_obs)), n_obs
    n_obs = int(np.ceil((hi * (1 + z_max) - lo) / inst.wave_step)) + 2
    return int(np.clip(np.searchsorted(full, lo * (1 + z)) - 1, 0, full.size - n_obs)), n_obs


def _label_values(
    names: tuple[str, ...],
    weights: np.ndarray,
    lib: SSPLibrary,
    av: np.ndarray,
    sigma: np.ndarray,
    velocity: np.ndarray,
    dust_law: str = "calzetti00",
) -> np.ndarray:
    log_age, metal = light_weighted(weights, lib)
    cols = {
        "log_age": log_age,
        "metallicity": metal,
        "av": av,
        "sigma": sigma,
        "velocity": velocity,
        "ebv": av / DUST_LAW_RV[dust_law],
    }  # E(B-V) of the law the spectra are reddened with
    if any(n.endswith("_mw") for n in names):
        cols["log_age_mw"], cols["metallicity_mw"] = mass_weighted(weights, lib)
    unknown = [n for n in names if n not in cols]
    if unknown:
        raise ValueError(f"unknown label(s) {unknown}; known: {sorted(cols)}")
    return np.stack([cols[n] for n in names], axis=1).astype(np.float32)


def grid_rows(cfg: TrainsetConfig, spec: InputSpec) -> int:
    """Observed pixels per row (the same for every batch of a set)."""
    return _row_window(spec, instrument_of(cfg), cfg.redshift_range[0], cfg.redshift_range[1])[1]


def _line_list(cfg: TrainsetConfig) -> dict[str, tuple[float, float]]:
    try:
        return LINE_SETS[cfg.line_set]
    except KeyError:
        raise ValueError(f"unknown line_set {cfg.line_set!r}; known: {', '.join(LINE_SETS)}") from None


def mixed_libraries(cfg: TrainsetConfig) -> dict[str, float]:
    """The other libraries a set draws from and their shares of the batches (checked: known names of
    role calibration, shares summing to less than 1)."""
    shares = dict(cfg.libraries or {})
    for name in shares:
        if load_ssp_library(name, use="training").name == "emiles":
            raise OptionError("trainset.libraries names the other libraries; E-MILES, the set's own, takes the rest")
    if any(v < 0 for v in shares.values()) or sum(shares.values()) >= 1.0:
        raise OptionError(f"library shares {shares} must be >= 0 and leave a share for the set's own library")
    return shares


def batch_library(cfg: TrainsetConfig, lib: SSPLibrary, index: int) -> SSPLibrary:
    """The library batch ``index`` is drawn from: ``lib``, or one of ``cfg.libraries`` by its share (a
    stream of its own, so sets without other libraries draw as before)."""
    if not cfg.libraries:
        return lib
    u = np.random.default_rng([cfg.seed, index, 17]).random()
    edge = 0.0
    for name, share in mixed_libraries(cfg).items():
        edge += share
        if u < edge:
            return load_ssp_library(name, use="training")
    return lib


def synthesise_batch(cfg: TrainsetConfig, lib: SSPLibrary, spec: InputSpec, index: int) -> NoiseFreeSet:
    """Batch ``index`` of the set: ``cfg.batch`` spectra at one redshift, seeded by (seed, index), from
    ``lib`` or, in the share of batches ``cfg.libraries`` gives them, from other SSP libraries."""
    rng = np.random.default_rng([cfg.seed, index])
    own = lib
    lib = batch_library(cfg, own, index)
    inst = instrument_of(cfg)
    m = min(cfg.batch, cfg.n - index * cfg.batch)
    z = draw_redshift(rng, cfg)
    i0, n_obs = _row_window(spec, inst, z, cfg.redshift_range[1])
    wave = inst.wave_air[i0 : i0 + n_obs]  # the SSP library and the line lists are in air
    synth = Synthesiser(lib, wave, z, inst.lsf_fwhm, dust_law=cfg.dust_law)
    kind = np.where(rng.random(m) < cfg.sfh_fraction, CONTINUOUS_SFH, SSP_MIXTURE).astype(np.uint8)
    weights = np.empty((m, lib.metal.size, lib.log_age.size))
    n_sfh = int((kind == CONTINUOUS_SFH).sum())
    weights[kind == CONTINUOUS_SFH] = sample_sfh_mixtures(rng, lib, n_sfh)
    weights[kind == SSP_MIXTURE] = sample_training_mixtures(
        rng, lib, m - n_sfh, max_ssp=cfg.max_ssp, young_fraction=cfg.young_fraction
    )
    av = rng.uniform(*cfg.av_range, m)
    sigma = rng.uniform(*cfg.sigma_range_kms, m)
    velocity = rng.uniform(*cfg.velocity_range_kms, m)
    flux = synth.observe(weights, av, velocity, sigma)
    if lib is not own:
        require_model_range(flux, inst.wave_in(spec.medium)[i0 : i0 + n_obs], z, spec, lib.name)
        flux = extend_edges(flux)
    emit = rng.random(m) < cfg.emission_fraction
    if emit.any():
        ew = rng.uniform(0, cfg.max_halpha_ew, int(emit.sum()))
        cont = np.median(flux[emit], axis=1)
        lines = emission_line_spectra(
            wave,
            z,
            ew * cont,
            velocity[emit] + rng.normal(0, 30, ew.size),
            rng.uniform(20, 80, ew.size),
            av[emit],
            inst.lsf_fwhm,
            cfg.dust_law,
            lines=_line_list(cfg),
        )
        # vary line ratios around the defaults (AGN-like [NII]/[OIII] up to 3x)
        flux[emit] += lines * rng.uniform(0.5, 1.5, (ew.size, 1)).astype(np.float32)
    snr = np.exp(rng.uniform(*np.log(cfg.snr_range), m))
    snr[rng.random(m) < cfg.noiseless_fraction] = 300.0
    return NoiseFreeSet(
        flux.astype(np.float32),
        np.full(m, i0),
        np.full(m, z),
        snr,
        _label_values(cfg.labels, weights, lib, av, sigma, velocity, cfg.dust_law),
        tuple(cfg.labels),
        (weights if lib is own else np.zeros((m, own.metal.size, own.log_age.size))).astype(np.float32),
        kind,
        emit,
    )


def require_model_range(flux: np.ndarray, wave: np.ndarray, z: float, spec: InputSpec, name: str) -> None:
    """Refuse a library that leaves pixels of the model's own range (at the row's redshift) uncovered:
    only pixels beyond it may be filled by :func:`extend_edges`."""
    lo, hi = spec.wave_start, spec.wave_stop
    if spec.frame != "observed":
        lo, hi = lo * (1 + z), hi * (1 + z)
    inside = (wave >= lo) & (wave <= hi)
    if not np.isfinite(flux[:, inside]).all():
        raise OptionError(
            f"SSP library {name!r} does not cover the model's range {spec.wave_start:g}-{spec.wave_stop:g} A "
            f"({spec.frame} frame) at z = {z:.3f}: leave it out of trainset.libraries"
        )


def extend_edges(flux: np.ndarray) -> np.ndarray:
    """Rows (n, npix) with the pixels beyond a library's range (NaN) set to the nearest covered one.

    A row spans the model's range at the set's largest redshift; another library may stop short of its
    red end. Those pixels lie beyond the model's range at the row's own redshift, so the model never
    reads them; finite values keep them from masking the whole row (the noise is scaled by the row's
    median)."""
    good = np.isfinite(flux)
    if good.all():
        return flux
    if not good.any(axis=1).all():
        raise ValueError("a library covers none of a training row")
    npix = flux.shape[1]
    col = np.arange(npix)
    first = np.where(good, col, npix).min(axis=1, keepdims=True)
    last = np.where(good, col, -1).max(axis=1, keepdims=True)
    nearest = np.clip(col[None, :], first, last)
    return np.take_along_axis(flux, nearest, axis=1)


def n_batches(cfg: TrainsetConfig) -> int:
    return -(-cfg.n // cfg.batch)


def synthesise(cfg: TrainsetConfig, lib: SSPLibrary, spec: InputSpec) -> NoiseFreeSet:
    """Draw ``cfg.n`` noise-free observed-frame spectra covering the model's range (in memory)."""
    _line_list(cfg)  # unknown options fail before any work
    batches = progress.track(range(n_batches(cfg)), "synthesising", unit="batch")
    return NoiseFreeSet.concat([synthesise_batch(cfg, lib, spec, k) for k in batches])


def distorted(flux: np.ndarray, rng: np.random.Generator, amplitude: float, degree: int) -> np.ndarray:
    """``flux`` (n, npix) times a smooth flux-calibration error per row: 1 + sum_d c_d P_d(x) over the
    row's pixels, c_d ~ N(0, ``amplitude``) for d = 1..``degree`` (kept above 0.2). ``flux`` itself
    (and no draw from ``rng``) when ``amplitude`` is 0, so sets drawn before the option keep their noise."""
    if amplitude <= 0 or degree < 1:
        return flux
    x = np.linspace(-1.0, 1.0, flux.shape[1])
    basis = np.array([np.polynomial.legendre.Legendre.basis(d)(x) for d in range(1, degree + 1)])
    coef = rng.normal(0.0, amplitude, (flux.shape[0], degree))
    return (flux * np.clip(1.0 + coef @ basis, 0.2, None)).astype(np.float32)


def observe_noisy(
    data: NoiseFreeSet, rng: np.random.Generator, cfg: TrainsetConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One noise realisation: (flux, var, mask) arrays on each row's observed grid."""
    flux = distorted(data.flux, rng, cfg.flux_distortion, cfg.flux_distortion_degree)
    n, npix = flux.shape
    inst = instrument_of(cfg)
    step = inst.wave_step
    med = np.median(flux, axis=1, keepdims=True)
    sky = (rng.uniform(0.0, 0.5, (n, 1)) * med).astype(np.float32)
    snr_pix = data.snr[:, None] * np.sqrt(step)
    gain = (med / ((1.0 + sky / med) * snr_pix**2)).astype(np.float32)
    # sky-line residuals and their extra variance, at the observed wavelengths of each row
    full = inst.wave_air
    profiles = sky_line_profile(full, inst.lsf_fwhm).sum(axis=0).astype(np.float32)
    idx = data.wave_index[:, None] + np.arange(npix)[None, :]
    sky_lines = profiles[idx] * (30 * gain * sky)
    var = gain * (np.clip(flux, 0, None) + sky) + sky_lines
    noisy = rng.random(n) < cfg.noisy_patch_fraction
    if noisy.any():
        length = rng.integers(20, npix // 4, n)
        start = rng.integers(0, npix - length)
        col = np.arange(npix)[None, :]
        patch = noisy[:, None] & (col >= start[:, None]) & (col < (start + length)[:, None])
        var = np.where(patch, var * rng.uniform(2, 10, (n, 1)).astype(np.float32), var)
    noise = rng.standard_normal((n, npix), dtype=np.float32) * np.sqrt(var)
    resid = rng.standard_normal((n, 1), dtype=np.float32) * np.sqrt(sky_lines)
    mask = np.zeros((n, npix), bool)
    n_patch = rng.integers(cfg.bad_patches[0], cfg.bad_patches[1] + 1, n)
    n_patch[rng.random(n) >= cfg.bad_patch_fraction] = 0
    col = np.arange(npix)[None, :]
    for k in range(cfg.bad_patches[1]):
        length = rng.integers(3, 16, n)[:, None]
        start = rng.integers(0, npix - length)
        mask |= (n_patch > k)[:, None] & (col >= start) & (col < start + length)
    return (flux + noise + resid).astype(np.float32), var.astype(np.float32), mask


def make_inputs(
    data: NoiseFreeSet, rng: np.random.Generator, cfg: TrainsetConfig, spec: InputSpec, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs for one noise realisation: (x, flags, snr) through the engine's ``prepare``."""
    full = instrument_of(cfg).wave_in(spec.medium)  # the engine, too, hands the data in the model's medium
    xs, flags, snrs = [], [], []
    for start in range(0, len(data), chunk):
        part = data.subset(np.arange(start, min(start + chunk, len(data))))
        flux, var, mask = observe_noisy(part, rng, cfg)
        # rows share a grid only within a redshift batch: prepare per grid
        x = np.zeros((len(part), len(spec.channels), spec.wave.size), np.float32)
        fl = np.zeros(len(part), np.uint8)
        sn = np.zeros(len(part))
        for i0 in np.unique(part.wave_index):
            rows = part.wave_index == i0
            wave = full[i0 : i0 + flux.shape[1]]
            prep = prepare(flux[rows], var[rows], mask[rows], wave, part.redshift[rows], spec)
            x[rows], fl[rows], sn[rows] = prep.x, prep.flags, prep.snr
        xs.append(x)
        flags.append(fl)
        snrs.append(sn)
    return np.concatenate(xs), np.concatenate(flags), np.concatenate(snrs)
