"""Training sets: noise-free observed spectra with labels, and fresh noise per epoch.

Spectra are synthesised in the *observed* frame of the instrument (MUSE grid and LSF at a random
redshift), then each epoch draws new noise, bad pixels, high-noise patches and sky residuals and
runs the engine's own :func:`survey_proc.preprocess.prepare` — so a model trains on exactly what
the engine will feed it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from survey_proc.preprocess import InputSpec, prepare
from survey_proc.ssp import SSPLibrary, muse_lsf_fwhm
from survey_proc.synth import (
    EMISSION_LINES,
    Synthesiser,
    emission_line_spectra,
    light_weighted,
    mass_weighted,
    sample_sfh_mixtures,
    sample_training_mixtures,
    sky_line_profile,
)

#: rest-frame windows (Angstrom) masked around nebular lines, wide enough for +-400 km/s and
#: the lines' own width (after GalProTE, Anwar et al. 2025, Table 2)
EMISSION_MASKS_REST = (
    (4846.0, 4877.0), (4944.0, 4974.0), (4992.0, 5022.0), (5189.0, 5210.0), (5866.0, 5886.0),
    (6285.0, 6316.0), (6350.0, 6380.0), (6530.0, 6600.0), (6700.0, 6747.0),
)
#: observed-frame windows masked around the strongest sky lines (Angstrom)
SKY_MASKS_OBSERVED = ((5570.0, 5585.0), (5885.0, 5900.0), (6295.0, 6306.0), (6358.0, 6369.0),
                      (6860.0, 6868.0))



@dataclass(frozen=True)
class Instrument:
    """The observed-frame grid and resolution spectra of a training set are synthesised on."""

    name: str
    wave_start: float                        #: Angstrom, observed frame
    wave_stop: float
    wave_step: float
    lsf_fwhm: Callable[[np.ndarray], np.ndarray]  #: FWHM (Angstrom) at observed wavelengths

    @property
    def wave(self) -> np.ndarray:
        return self.wave_start + self.wave_step * np.arange(
            int(round((self.wave_stop - self.wave_start) / self.wave_step)) + 1)


#: instruments a training set can be drawn for (name in :class:`TrainsetConfig`)
INSTRUMENTS: dict[str, Instrument] = {
    "muse": Instrument("MUSE", 4750.0, 9350.0, 1.25, muse_lsf_fwhm),
}


def default_muse_input() -> InputSpec:
    """The input of the default MUSE models: rest frame 4750-7100 A at 1.25 A (1881 pixels)."""
    return InputSpec(wave_start=4750.0, wave_stop=7100.0, wave_step=1.25, frame="rest", medium="air",
                     channels=("flux", "error", "mask"), normalise="median",
                     masks_rest=EMISSION_MASKS_REST, masks_observed=SKY_MASKS_OBSERVED,
                     max_masked_fraction=0.5, min_coverage=0.99,
                     lsf="MUSE, Bacon et al. (2017) eq. 8, in the observed frame")


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
    av_range: tuple[float, float] = (0.0, 1.5)
    dust_law: str = "calzetti00"
    sigma_range_kms: tuple[float, float] = (30.0, 300.0)
    velocity_range_kms: tuple[float, float] = (-300.0, 300.0)
    snr_range: tuple[float, float] = (5.0, 80.0)   #: S/N per Angstrom, log-uniform
    noiseless_fraction: float = 0.05              #: spectra at S/N 300 (GalProTE's 0 % noise)
    max_ssp: int = 5
    young_fraction: float = 0.3                   #: SSP mixtures with a young burst on top
    sfh_fraction: float = 0.3                     #: spectra from continuous star-formation histories
    emission_fraction: float = 0.5
    max_halpha_ew: float = 60.0                   #: Angstrom
    bad_patches: tuple[int, int] = (15, 25)       #: masked patches of 3-15 pixels per spectrum ...
    bad_patch_fraction: float = 0.5               #: ... in this share of the spectra
    noisy_patch_fraction: float = 0.25            #: share of spectra with a high-noise patch
    batch: int = 2048                             #: spectra synthesised per redshift draw
    extra: dict = field(default_factory=dict)

    def digest(self, lib: SSPLibrary, spec: InputSpec) -> str:
        """Hash of everything that defines the set (config, library, model input)."""
        payload = json.dumps({"cfg": asdict(self), "lib": lib.digest(), "input": spec.to_manifest()},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: ``kind`` values of a training spectrum
SSP_MIXTURE, CONTINUOUS_SFH = 0, 1


@dataclass
class NoiseFreeSet:
    """Spectra before noise: observed frame, one row per spectrum."""

    flux: np.ndarray           #: (n, nobs) float32, observed-frame flux on ``wave`` rows
    wave_index: np.ndarray     #: (n,) index into the full instrument grid of each row's first pixel
    redshift: np.ndarray       #: (n,)
    snr: np.ndarray            #: (n,) target S/N per Angstrom
    labels: np.ndarray         #: (n, nlabels) float32
    label_names: tuple[str, ...]
    weights: np.ndarray        #: (n, nmetal, nage) float32 light fractions
    kind: np.ndarray           #: (n,) SSP_MIXTURE or CONTINUOUS_SFH
    emission: np.ndarray       #: (n,) bool, nebular lines added

    def __len__(self) -> int:
        return self.flux.shape[0]

    def subset(self, idx: np.ndarray) -> NoiseFreeSet:
        return NoiseFreeSet(self.flux[idx], self.wave_index[idx], self.redshift[idx], self.snr[idx],
                            self.labels[idx], self.label_names, self.weights[idx], self.kind[idx],
                            self.emission[idx])

    @classmethod
    def concat(cls, parts: list[NoiseFreeSet]) -> NoiseFreeSet:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("flux", "wave_index", "redshift", "snr", "labels")), parts[0].label_names,
                   *(np.concatenate([getattr(p, f) for p in parts]) for f in ("weights", "kind", "emission")))


def instrument_of(cfg: TrainsetConfig) -> Instrument:
    try:
        return INSTRUMENTS[cfg.instrument]
    except KeyError:
        raise ValueError(f"unknown instrument {cfg.instrument!r}; known: {', '.join(INSTRUMENTS)}") from None


def _label_values(names: tuple[str, ...], weights: np.ndarray, lib: SSPLibrary, av: np.ndarray,
                  sigma: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    log_age, metal = light_weighted(weights, lib)
    cols = {"log_age": log_age, "metallicity": metal, "av": av, "sigma": sigma, "velocity": velocity}
    if any(n.endswith("_mw") for n in names):
        cols["log_age_mw"], cols["metallicity_mw"] = mass_weighted(weights, lib)
    unknown = [n for n in names if n not in cols]
    if unknown:
        raise ValueError(f"unknown label(s) {unknown}; known: {sorted(cols)}")
    return np.stack([cols[n] for n in names], axis=1).astype(np.float32)


def _grid_rows(cfg: TrainsetConfig, spec: InputSpec) -> int:
    """Observed pixels per row: the model grid at the largest redshift, plus margins."""
    lo_rest, hi_rest = spec.wave_start - 10.0, spec.wave_stop + 10.0
    return int(np.ceil((hi_rest * (1 + cfg.redshift_range[1]) - lo_rest) / instrument_of(cfg).wave_step)) + 2


def synthesise_batch(cfg: TrainsetConfig, lib: SSPLibrary, spec: InputSpec, index: int) -> NoiseFreeSet:
    """Batch ``index`` of the set: ``cfg.batch`` spectra at one redshift, seeded by (seed, index)."""
    rng = np.random.default_rng([cfg.seed, index])
    inst = instrument_of(cfg)
    full = inst.wave
    n_obs = _grid_rows(cfg, spec)
    m = min(cfg.batch, cfg.n - index * cfg.batch)
    z = float(rng.uniform(*cfg.redshift_range))
    i0 = int(np.clip(np.searchsorted(full, (spec.wave_start - 10.0) * (1 + z)) - 1, 0, full.size - n_obs))
    wave = full[i0:i0 + n_obs]
    synth = Synthesiser(lib, wave, z, inst.lsf_fwhm, dust_law=cfg.dust_law)
    kind = np.where(rng.random(m) < cfg.sfh_fraction, CONTINUOUS_SFH, SSP_MIXTURE).astype(np.uint8)
    weights = np.empty((m, lib.metal.size, lib.log_age.size))
    n_sfh = int((kind == CONTINUOUS_SFH).sum())
    weights[kind == CONTINUOUS_SFH] = sample_sfh_mixtures(rng, lib, n_sfh)
    weights[kind == SSP_MIXTURE] = sample_training_mixtures(rng, lib, m - n_sfh, max_ssp=cfg.max_ssp,
                                                            young_fraction=cfg.young_fraction)
    av = rng.uniform(*cfg.av_range, m)
    sigma = rng.uniform(*cfg.sigma_range_kms, m)
    velocity = rng.uniform(*cfg.velocity_range_kms, m)
    flux = synth.observe(weights, av, velocity, sigma)
    emit = rng.random(m) < cfg.emission_fraction
    if emit.any():
        ew = rng.uniform(0, cfg.max_halpha_ew, int(emit.sum()))
        cont = np.median(flux[emit], axis=1)
        lines = emission_line_spectra(wave, z, ew * cont, velocity[emit] + rng.normal(0, 30, ew.size),
                                      rng.uniform(20, 80, ew.size), av[emit], inst.lsf_fwhm, cfg.dust_law)
        # vary line ratios around the defaults (AGN-like [NII]/[OIII] up to 3x)
        flux[emit] += lines * rng.uniform(0.5, 1.5, (ew.size, 1)).astype(np.float32)
    snr = np.exp(rng.uniform(*np.log(cfg.snr_range), m))
    snr[rng.random(m) < cfg.noiseless_fraction] = 300.0
    return NoiseFreeSet(flux.astype(np.float32), np.full(m, i0), np.full(m, z), snr,
                        _label_values(cfg.labels, weights, lib, av, sigma, velocity), tuple(cfg.labels),
                        weights.astype(np.float32), kind, emit)


def n_batches(cfg: TrainsetConfig) -> int:
    return -(-cfg.n // cfg.batch)


def synthesise(cfg: TrainsetConfig, lib: SSPLibrary, spec: InputSpec, progress: bool = False) -> NoiseFreeSet:
    """Draw ``cfg.n`` noise-free observed-frame spectra covering the model's range (in memory)."""
    batches = range(n_batches(cfg))
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="synthesising", unit="batch")
    return NoiseFreeSet.concat([synthesise_batch(cfg, lib, spec, k) for k in batches])


class StoredSet:
    """A training set in a Zarr store: labels and small columns in memory, spectra read on demand.

    Quacks like :class:`NoiseFreeSet` where training needs it (``len``, ``labels``, ``subset``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import zarr

        self.path = str(path)
        self.group = zarr.open_group(self.path, mode="r")
        attrs = dict(self.group.attrs)
        done = np.asarray(self.group["batch_done"][...])
        if not done.all():
            raise ValueError(f"training set {path} is incomplete ({int(done.sum())} of {done.size} batches); "
                             "rerun `survey-proc trainset` with the same arguments to finish it")
        self.config = TrainsetConfig(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in json.loads(attrs["config"]).items()})
        self.digest = attrs["digest"]
        self.label_names = tuple(attrs["label_names"])
        self.labels = np.asarray(self.group["labels"][...])
        self.wave_index = np.asarray(self.group["wave_index"][...])
        self.redshift = np.asarray(self.group["redshift"][...])
        self.snr = np.asarray(self.group["snr"][...])
        self.kind = np.asarray(self.group["kind"][...])
        self.emission = np.asarray(self.group["emission"][...])

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, idx: np.ndarray) -> NoiseFreeSet:
        idx = np.asarray(idx)
        order = np.argsort(idx)
        rows = idx[order]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo <= 2 * rows.size:  # nearly contiguous: one slab read
            flux = np.asarray(self.group["flux"][lo:hi])[rows - lo]
            weights = np.asarray(self.group["weights"][lo:hi])[rows - lo]
        else:
            flux = np.asarray(self.group["flux"].get_orthogonal_selection((rows, slice(None))))
            weights = np.asarray(self.group["weights"].get_orthogonal_selection((rows, slice(None), slice(None))))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        return NoiseFreeSet(flux[inverse], self.wave_index[idx], self.redshift[idx], self.snr[idx],
                            self.labels[idx], self.label_names, weights[inverse], self.kind[idx],
                            self.emission[idx])


def write_trainset(cfg: TrainsetConfig, lib: SSPLibrary, spec: InputSpec, path: str | os.PathLike,
                   progress: bool = False) -> StoredSet:
    """Synthesise the set batch by batch into a Zarr store (bounded memory; a rerun resumes).

    Each batch is seeded by (seed, batch index), so the store does not depend on how often the
    writing was interrupted.
    """
    import zarr

    path = str(path)
    nb = n_batches(cfg)
    digest = cfg.digest(lib, spec)
    n_obs = _grid_rows(cfg, spec)
    try:
        group = zarr.open_group(path, mode="r+")
        if group.attrs.get("digest") != digest:
            raise ValueError(f"{path} holds another training set (digest {group.attrs.get('digest')} vs "
                             f"{digest}); choose another path or delete it")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        group = zarr.open_group(path, mode="w", zarr_format=3)
        b = cfg.batch
        group.create_array("flux", shape=(cfg.n, n_obs), chunks=(b, n_obs), dtype="float32")
        group.create_array("weights", shape=(cfg.n, lib.metal.size, lib.log_age.size),
                           chunks=(b, lib.metal.size, lib.log_age.size), dtype="float32")
        group.create_array("labels", shape=(cfg.n, len(cfg.labels)), chunks=(b, len(cfg.labels)), dtype="float32")
        for name, dtype in (("wave_index", "int32"), ("redshift", "float64"), ("snr", "float32"),
                            ("kind", "uint8"), ("emission", "bool")):
            group.create_array(name, shape=(cfg.n,), chunks=(b,), dtype=dtype)
        group.create_array("batch_done", shape=(nb,), chunks=(1,), dtype="uint8", fill_value=0)
        group.attrs.update({"config": json.dumps(asdict(cfg), default=list), "digest": digest,
                            "label_names": list(cfg.labels), "instrument": cfg.instrument,
                            "input": json.dumps(spec.to_manifest()),
                            "ssp_library": lib.provenance.get("source", ""),
                            "description": "noise-free observed-frame training spectra; noise is drawn per epoch"})
    done = np.asarray(group["batch_done"][...])
    todo = [k for k in range(nb) if not done[k]]
    if progress:
        from tqdm import tqdm

        todo = tqdm(todo, desc="training set", unit="batch")
    for k in todo:
        part = synthesise_batch(cfg, lib, spec, k)
        sl = slice(k * cfg.batch, k * cfg.batch + len(part))
        group["flux"][sl] = part.flux
        group["weights"][sl] = part.weights
        group["labels"][sl] = part.labels
        for name in ("wave_index", "redshift", "snr", "kind", "emission"):
            group[name][sl] = getattr(part, name)
        group["batch_done"][k:k + 1] = np.ones(1, np.uint8)
    return StoredSet(path)


def observe_noisy(data: NoiseFreeSet, rng: np.random.Generator, cfg: TrainsetConfig
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One noise realisation: (flux, var, mask) arrays on each row's observed grid."""
    flux = data.flux
    n, npix = flux.shape
    inst = instrument_of(cfg)
    step = inst.wave_step
    med = np.median(flux, axis=1, keepdims=True)
    sky = (rng.uniform(0.0, 0.5, (n, 1)) * med).astype(np.float32)
    snr_pix = data.snr[:, None] * np.sqrt(step)
    gain = (med / ((1.0 + sky / med) * snr_pix**2)).astype(np.float32)
    # sky-line residuals and their extra variance, at the observed wavelengths of each row
    full = inst.wave
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


def make_inputs(data: NoiseFreeSet, rng: np.random.Generator, cfg: TrainsetConfig, spec: InputSpec,
                chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs for one noise realisation: (x, flags, snr) through the engine's ``prepare``."""
    full = instrument_of(cfg).wave
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
            wave = full[i0:i0 + flux.shape[1]]
            prep = prepare(flux[rows], var[rows], mask[rows], wave, part.redshift[rows], spec)
            x[rows], fl[rows], sn[rows] = prep.x, prep.flags, prep.snr
        xs.append(x)
        flags.append(fl)
        snrs.append(sn)
    return np.concatenate(xs), np.concatenate(flags), np.concatenate(snrs)


__all__ = ["EMISSION_LINES", "EMISSION_MASKS_REST", "INSTRUMENTS", "SKY_MASKS_OBSERVED", "Instrument", "NoiseFreeSet",
           "TrainsetConfig", "default_muse_input", "make_inputs", "observe_noisy", "synthesise"]
