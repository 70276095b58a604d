"""The spectral trainer: ``survey-proc train CONFIG`` for models of spectra.

:func:`train` runs a :class:`SpectrumTrainer`: synthesise (or stream from a Zarr store) noise-free
training spectra and a validation set (another seed), train with fresh noise every epoch (Gaussian
negative log-likelihood; optionally cross-entropy on the age-[M/H] weight grid and the chi^2 of the
spectrum rebuilt from the predicted weights), keep the best epoch on the validation set, checkpoint
every epoch (a rerun resumes), calibrate the uncertainties and the novelty thresholds on the
validation set, export a TorchScript bundle, and score the exported file on held-out spectra
synthesised with a third seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dask.config
import numpy as np
import psutil
import torch
from torch import nn

from survey_proc.config import dataclass_options, read_yaml
from survey_proc.estimators import load_manifest
from survey_proc.preprocess import InputSpec
from survey_proc.ssp import MODEL_FLOOR, SSPLibrary, load_ssp_library, require_use, to_medium
from survey_proc.stores import property_attrs
from survey_proc.synth import Synthesiser
from survey_proc.training._arch import ExportedModel, Reconstructor, build, reduced_chi2
from survey_proc.training._bundle import add_held_out_metrics, save_model, write_manifest
from survey_proc.training._calibration import (
    EDGE_NOTE,
    Calibration,
    calibrate,
    fit_edge_tables,
    noise_channels,
    predict_raw,
)
from survey_proc.training._dataset import (
    NoiseFreeSet,
    TrainsetConfig,
    instrument_of,
    make_inputs,
    synthesise,
)
from survey_proc.training._distill import Teacher, distillation_loss
from survey_proc.training._evaluate import evaluate
from survey_proc.training._fit import FitState, Trainer, gaussian_nll
from survey_proc.training._inputs import input_preset
from survey_proc.training._limits import at_limit_rules, lsf_trained
from survey_proc.training._store import StoredSet, write_trainset

log = logging.getLogger(__name__)

#: the least reduced chi2 (with ``ssp.MODEL_FLOOR``) a rebuilt spectrum is flagged ``poor_fit`` at, as the fit's
POOR_FIT_MIN = 3.0
#: held-out spectra of the metrics in the manifest: seed offset from the training set's seed
HELD_OUT_SEED_OFFSET = 2_000_003
#: validation spectra: seed offset from the training set's seed
VALIDATION_SEED_OFFSET = 1_000_003


@dataclass
class TrainConfig:
    """A training run (YAML keys are the field names; ``trainset`` is a :class:`TrainsetConfig`)."""

    name: str = "muse-cnn"
    description: str = "compact CNN on MUSE spectra, rest frame 4750-7100 A"
    input: str = "muse-rest-4750-7100"
    arch: str = "cnn"
    arch_kwargs: dict = field(default_factory=dict)
    trainset: TrainsetConfig = field(default_factory=TrainsetConfig)
    trainset_store: str | None = (
        None  #: Zarr store of the training set (written if absent; relative = in the run folder)
    )
    n_val: int = 4000
    n_test: int = 4000  #: held-out spectra per family (SSP mixtures, continuous SFHs)
    test_snr: tuple[float, ...] = (10.0, 20.0, 30.0, 50.0)
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    weight_loss: float = 0.0  #: weight of the cross-entropy on the light-fraction grid (0: no grid)
    recon_loss: float = 0.0  #: weight of the reduced chi^2 of the rebuilt spectrum
    reconstruct: bool = False  #: export the reconstructor (weights grid + chi2 outputs)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    init_from: str | None = None  #: start from the weights of this bundle (name or path) where shapes match
    distill_from: str | None = None  #: also learn this bundle's outputs (name or path; training._distill)
    distill_loss: float = 0.0  #: weight of the difference from ``distill_from``'s outputs
    min_snr: float = 5.0
    ood_quantile: float = 0.995
    chunk: int = 8192
    edge_correction: bool = True  #: de-shrink log_age and [M/H] at the grid edges (training._edges)
    n_calib: int = 40000  #: calibration spectra (own seeds) the edge tables are fitted on
    edge_min_snr: float = 20.0  #: S/N per Angstrom below which the edge correction fades out

    def __post_init__(self) -> None:
        if (self.distill_from is None) != (self.distill_loss == 0):
            raise ValueError(
                "distill_from (a bundle) and distill_loss (> 0) go together: "
                f"got distill_from={self.distill_from!r}, distill_loss={self.distill_loss!r}"
            )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        raw = dataclass_options(cls, raw, "training")
        trainset = TrainsetConfig(**dataclass_options(TrainsetConfig, raw.pop("trainset", None), "trainset"))
        raw["arch_kwargs"] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.get("arch_kwargs", {}).items()}
        return cls(trainset=trainset, **raw)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        return cls.from_dict(read_yaml(path))

    def digest(self) -> str:
        """Hash of what the training loop depends on (calibration after training is left out, so a
        finished run re-exports with new calibration options instead of training again)."""
        identity = {k: v for k, v in asdict(self).items() if k not in _AFTER_TRAINING}
        for option, unset in (("init_from", None), ("distill_from", None), ("distill_loss", 0.0)):
            if identity.get(option) == unset:  # runs from before the option keep their digest
                identity.pop(option, None)
        identity["trainset"] = self.trainset.identity()
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def predicts_weights(self) -> bool:
        return self.weight_loss > 0 or self.recon_loss > 0 or self.reconstruct


#: options used only after the training loop (calibration, export)
_AFTER_TRAINING = ("edge_correction", "n_calib", "edge_min_snr")


class _Epochs:
    """Produces (x, y, w) chunks of fresh noise in a background thread while the model trains."""

    def __init__(self, data, cfg: TrainConfig, spec: InputSpec, y: np.ndarray, epoch: int) -> None:
        self.data, self.cfg, self.spec, self.y = data, cfg, spec, y
        rng = np.random.default_rng([cfg.seed, epoch])
        # shuffle at the level of redshift batches (rows of one batch share a grid), then within chunks
        batch = cfg.trainset.batch
        starts = np.arange(0, len(data), batch)
        rng.shuffle(starts)
        order = np.concatenate([np.arange(s, min(s + batch, len(data))) for s in starts])
        self.chunks = [order[i : i + cfg.chunk] for i in range(0, len(order), cfg.chunk)]
        self.rng = rng
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._produce, daemon=True)
        self.thread.start()

    def _produce(self) -> None:
        for idx in self.chunks:
            part = self.data.subset(idx)
            x, _, _ = make_inputs(part, self.rng, self.cfg.trainset, self.spec)
            perm = self.rng.permutation(idx.size)
            w = part.weights.reshape(len(part), -1)
            self.queue.put((x[perm], self.y[idx][perm], w[perm]))
        self.queue.put(None)

    def __iter__(self):
        while (item := self.queue.get()) is not None:
            yield item


def make_reconstructor(lib: SSPLibrary, spec: InputSpec, ts: TrainsetConfig) -> Reconstructor:
    """The SSP templates on the model grid for the instrument at the middle of the redshift range."""
    inst = instrument_of(ts)
    z = 0.5 * (ts.redshift_range[0] + ts.redshift_range[1])
    model_wave = to_medium(spec.wave, spec.medium, "air")  # the SSP library is in air
    wave_obs = model_wave * (1 + z) if spec.frame == "rest" else model_wave
    synth = Synthesiser(lib, wave_obs, z, inst.lsf_fwhm, max_velocity=1500.0, dust_law=ts.dust_law)
    model_rest = model_wave if spec.frame == "rest" else model_wave / (1 + z)
    return Reconstructor.from_synthesiser(synth, model_rest)


def _physical(
    values: torch.Tensor, names: list[str], mean: torch.Tensor, std: torch.Tensor, name: str, default: float, low: float
) -> torch.Tensor:
    if name not in names:
        return torch.full_like(values[:, 0], default)
    i = names.index(name)
    return (values[:, i] * std[i] + mean[i]).clamp(min=low)


def initial_weights(net: torch.nn.Module, source: str) -> list[str]:
    """Copy into ``net`` the tensors of a bundle's network (name or path) whose names and shapes
    match (e.g. the convolutions of a model trained on a shorter wavelength range); their names."""
    theirs = torch.jit.load(str(load_manifest(source).file), map_location="cpu").net.state_dict()
    ours = net.state_dict()
    loaded = [k for k, v in theirs.items() if k in ours and ours[k].shape == v.shape]
    if not loaded:
        raise ValueError(f"init_from {source}: no tensor of its network matches this architecture")
    net.load_state_dict({**ours, **{k: theirs[k].to(ours[k].device) for k in loaded}})
    return loaded


def grid_cross_entropy(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicted light fractions against the true ones, (n, ngrid), over the rows that have
    a grid: a spectrum from another SSP library (``trainset.libraries``) has none on the model's (its row
    is zero), and is rebuilt (the chi^2 term) but not told which of the model's templates make it."""
    per_row = -(true * torch.log(pred + 1e-8)).sum(dim=1)
    has = (true.sum(dim=1) > 0).to(per_row.dtype)  # no boolean indexing: no host sync on a GPU
    return (per_row * has).sum() / has.sum().clamp(min=1.0)


@dataclass
class SpectralData:
    """What the data step prepares: the sets, the standardised labels and one noisy draw of the
    validation inputs (the same for every epoch's validation loss and for the calibration)."""

    lib: SSPLibrary
    spec: InputSpec
    train: NoiseFreeSet | StoredSet
    val: NoiseFreeSet
    label_mean: np.ndarray
    label_std: np.ndarray
    y_train: np.ndarray  #: standardised training labels
    x_val: np.ndarray  #: validation model inputs
    y_val: np.ndarray  #: standardised validation labels


class SpectrumTrainer(Trainer):
    """Train, calibrate and export a model of spectra (see the module's docstring); :meth:`run`."""

    unit = "spectra"

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike) -> None:
        super().__init__(cfg, out_dir)
        self.recon: Reconstructor | None = None
        self.teacher: Teacher | None = None
        self.edge_tables: dict = {}

    @property
    def samples_per_epoch(self) -> int:
        return len(self.sets.train)

    # ------------------------------------------------------------------------------------- data
    def data(self) -> None:
        cfg = self.cfg
        lib = load_ssp_library()
        spec = input_preset(cfg.input)
        train_set, val_set = self._sets(lib, spec)
        log.info(
            f"{len(train_set)} training and {len(val_set)} validation spectra ready in "
            f"{time.perf_counter() - self.started:.0f} s"
        )
        label_mean = train_set.labels.mean(axis=0)
        label_std = train_set.labels.std(axis=0) + 1e-6
        x_val, _, _ = make_inputs(val_set, np.random.default_rng([cfg.seed, 99]), cfg.trainset, spec)
        self.sets = SpectralData(
            lib,
            spec,
            train_set,
            val_set,
            label_mean,
            label_std,
            ((train_set.labels - label_mean) / label_std).astype(np.float32),
            x_val,
            ((val_set.labels - label_mean) / label_std).astype(np.float32),
        )

    def _sets(self, lib: SSPLibrary, spec: InputSpec) -> tuple[NoiseFreeSet | StoredSet, NoiseFreeSet]:
        """(training set, validation set): the training set from its store (written if absent) or
        drawn in memory; the validation set drawn with a seed of its own."""
        require_use(lib, "training")
        cfg, ts = self.cfg, self.cfg.trainset
        if cfg.trainset_store:
            store = Path(cfg.trainset_store)
            store = store if store.is_absolute() else self.out / store  # relative paths live in the run folder
            train_set = write_trainset(ts, lib, spec, store)
            if train_set.nbytes < 0.3 * psutil.virtual_memory().available:
                train_set = train_set.load()  # fits in memory: read once instead of every epoch
        else:
            train_set = synthesise(ts, lib, spec)
        val_cfg = dataclasses.replace(ts, n=cfg.n_val, seed=ts.seed + VALIDATION_SEED_OFFSET)
        return train_set, synthesise(val_cfg, lib, spec)

    # ------------------------------------------------------------------------------------- network
    def network(self) -> nn.Module:
        cfg, s = self.cfg, self.sets
        n_grid = s.lib.metal.size * s.lib.log_age.size if cfg.predicts_weights else 0
        kwargs = cfg.arch_kwargs
        net = build(
            cfg.arch, len(s.spec.channels), s.spec.wave.size, len(cfg.trainset.labels), n_weights=n_grid, **kwargs
        )
        net = net.to(self.device)
        if cfg.recon_loss > 0 or cfg.reconstruct:
            self.recon = make_reconstructor(s.lib, s.spec, cfg.trainset).to(self.device)
            self._label_scale = (
                torch.tensor(s.label_mean, device=self.device),
                torch.tensor(s.label_std, device=self.device),
            )
        if cfg.init_from:  # a checkpoint of this run, if any, overwrites them when the loop resumes
            loaded = initial_weights(net, cfg.init_from)
            log.info(f"initial weights from {cfg.init_from}: {len(loaded)} tensors ({', '.join(loaded[:4])}, ...)")
        if cfg.distill_from:
            labels = list(cfg.trainset.labels)
            grid = (s.lib.metal.size, s.lib.log_age.size) if cfg.predicts_weights else (0, 0)
            self.teacher = Teacher(cfg.distill_from, s.spec, labels, s.label_mean, s.label_std, self.device, grid)
            log.info(f"distilling from {cfg.distill_from} (weight {cfg.distill_loss})")
        return net

    # ------------------------------------------------------------------------------------- objective
    def batches(self, epoch: int):
        """Chunks of fresh noise (drawn in a background thread), cut into batches of ``batch_size``."""
        b = self.cfg.batch_size
        for xc, yc, wc in _Epochs(self.sets.train, self.cfg, self.sets.spec, self.sets.y_train, epoch):
            for s in range(0, xc.shape[0], b):
                yield xc[s : s + b], yc[s : s + b], wc[s : s + b]

    def loss(self, net: nn.Module, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
        """Gaussian NLL of the labels (bfloat16 autocast on CUDA), plus the weighted cross-entropy of
        the light-fraction grid, the log(1 + chi^2) of the rebuilt spectrum and the difference from a
        teacher's outputs (``distill_from``) where configured."""
        cfg = self.cfg
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            mean, log_var, _, weights = net(xb)
        mean, log_var, weights = mean.float(), log_var.float(), weights.float()
        loss = gaussian_nll(mean, log_var, yb)
        if cfg.weight_loss > 0:
            loss = loss + cfg.weight_loss * grid_cross_entropy(weights, wb)
        if cfg.recon_loss > 0 and self.recon is not None:
            loss = loss + cfg.recon_loss * self._rebuilt_chi2(xb, mean, weights)
        if self.teacher is not None:
            loss = loss + cfg.distill_loss * distillation_loss(mean, weights, self.teacher(xb))
        return loss

    def _rebuilt_chi2(self, xb: torch.Tensor, mean: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Mean log(1 + reduced chi^2) of the spectra rebuilt from the predicted weights and kinematics."""
        names = list(self.cfg.trainset.labels)
        mean_t, std_t = self._label_scale
        model = self.recon(
            weights,
            _physical(mean, names, mean_t, std_t, "av", 0.0, 0.0),
            _physical(mean, names, mean_t, std_t, "velocity", 0.0, -1e4),
            _physical(mean, names, mean_t, std_t, "sigma", 100.0, 1.0),
        )
        chi2, _ = reduced_chi2(xb, model)
        return torch.log1p(chi2).mean()

    def val_loss(self, net: nn.Module) -> float:
        m, lv, _ = predict_raw(net, self.sets.x_val, self.device)
        return float(gaussian_nll(torch.from_numpy(m), torch.from_numpy(lv), torch.from_numpy(self.sets.y_val)))

    # ------------------------------------------------------------------------------------- calibrate
    def calibrate(self, net: nn.Module) -> Calibration:
        """On the validation inputs; the novelty reference features from training spectra with
        fresh noise (up to 20000)."""
        cfg, s = self.cfg, self.sets
        cpu = torch.device("cpu")
        m, lv, feats_val = predict_raw(net, s.x_val, cpu)
        ref = s.train.subset(np.arange(min(len(s.train), 20000)))
        x_ref, _, _ = make_inputs(ref, np.random.default_rng([cfg.seed, 98]), cfg.trainset, s.spec)
        _, _, feats_ref = predict_raw(net, x_ref, cpu)
        return calibrate(m, lv, s.y_val, feats_ref, feats_val, cfg.ood_quantile)

    # ------------------------------------------------------------------------------------- export
    def export(self, net: nn.Module, calibration: Calibration, state: FitState) -> Path:
        cfg, s = self.cfg, self.sets
        exported = self._exported_module(net, calibration)
        flags, outputs = self._flags_and_outputs(exported, calibration)
        training = self._training_record(net, calibration, state)
        bundle = save_model(exported, self.out)
        write_manifest(
            bundle,
            name=cfg.name,
            description=cfg.description,
            input_spec=s.spec,
            outputs=outputs,
            flags={**flags, "AT_LIMIT": at_limit_rules(cfg.trainset, s.lib)},
            min_snr=cfg.min_snr,
            batch_size=1024,
            training=training,
            input_extra={"lsf_trained": lsf_trained(cfg.trainset)},
        )
        return bundle

    def _exported_module(self, net: nn.Module, calibration: Calibration) -> ExportedModel:
        """The export wrapper: physical units, calibrated errors, novelty score, the reconstructor
        (``reconstruct``) and the edge tables fitted through it (``edge_correction``)."""
        cfg, s = self.cfg, self.sets
        recon = self.recon.cpu() if self.recon is not None else None
        exported = ExportedModel(
            net,
            list(cfg.trainset.labels),
            torch.tensor(s.label_mean),
            torch.tensor(s.label_std),
            *calibration.tensors(),
            recon if cfg.reconstruct else None,
            (s.lib.metal.size, s.lib.log_age.size),
            noise_channels=noise_channels(s.spec) if "error" in s.spec.channels else (0, 0, -1),
        )
        if cfg.edge_correction:
            self.edge_tables = fit_edge_tables(
                exported, cfg.trainset, s.lib, s.spec, n_calib=cfg.n_calib, seed=cfg.seed, min_snr=cfg.edge_min_snr
            )
        exported.set_edge_tables(self.edge_tables)
        return exported

    def _flags_and_outputs(self, exported: ExportedModel, calibration: Calibration) -> tuple[dict, dict]:
        """The manifest's flag rules (``OUT_OF_DISTRIBUTION`` on the novelty score; with the reconstructor,
        ``POOR_FIT`` on ``chi2_floor``) and outputs (with the reconstructor: the weight grid, ``chi2`` and
        ``chi2_floor``)."""
        cfg, s = self.cfg, self.sets
        quantile = f"{cfg.ood_quantile:.1%} quantile of validation spectra"
        ood = {
            "output": "ood_score",
            "threshold": calibration.ood_threshold,
            "meaning": f"feature Mahalanobis score above the {quantile}",
        }
        outputs = {n: {**property_attrs(n), "error": True} for n in cfg.trainset.labels}
        if not cfg.reconstruct:
            return {"OUT_OF_DISTRIBUTION": [ood]}, outputs
        with torch.inference_mode():
            parts = [torch.from_numpy(s.x_val[i : i + 2048]) for i in range(0, len(s.x_val), 2048)]
            floored = [exported(part)["chi2_floor"].numpy() for part in parts]
        threshold = max(POOR_FIT_MIN, float(np.quantile(np.concatenate(floored), cfg.ood_quantile)))
        poor = {
            "output": "chi2_floor",
            "above": round(threshold, 4),
            "meaning": f"the rebuilt spectrum does not match: reduced chi2 with a {MODEL_FLOOR:.0%} model error above "
            f"the {quantile} (and at least {POOR_FIT_MIN:g}, the fit's threshold)",
        }
        outputs["weights"] = {
            **property_attrs("weights"),
            "dims": ["age", "metal"],
            "coords": {"age": s.lib.log_age.tolist(), "metal": s.lib.metal.tolist()},
        }
        outputs["chi2"] = property_attrs("chi2")
        outputs["chi2_floor"] = property_attrs("chi2_floor")
        return {"OUT_OF_DISTRIBUTION": [ood], "POOR_FIT": [poor]}, outputs

    def _training_record(self, net: nn.Module, calibration: Calibration, state: FitState) -> dict[str, Any]:
        """The manifest's ``training`` block: the config, the sets, the loop's outcome, the calibration."""
        cfg, s = self.cfg, self.sets
        edges = {n: t.to_manifest() for n, t in self.edge_tables.items()}
        return {
            "config": asdict(cfg),
            "config_digest": cfg.digest(),
            "trainset_hash": cfg.trainset.digest(s.lib, s.spec),
            "ssp_library": s.lib.provenance.get("source"),
            "n_train": len(s.train),
            "n_val": len(s.val),
            "best_epoch": state.best_epoch,
            "epochs_run": state.epoch,
            "uncertainty_scale": calibration.err_scale.tolist(),
            "edge_correction": {"note": EDGE_NOTE, **edges} if edges else None,
            "parameters": int(sum(p.numel() for p in net.parameters())),
            "device": str(self.device),
            "seconds": time.perf_counter() - self.started,  # this invocation (a resumed run: calibration and export)
            "epoch_seconds": float(sum(h.seconds for h in state.history)),
        }

    # ------------------------------------------------------------------------------------- evaluate
    def evaluate(self, bundle: Path) -> dict[str, Any]:
        """Held-out scores of the exported file through the engine's preprocessing, in float32."""
        cfg = self.cfg
        with dask.config.set({"survey-proc.run.cpu-precision": "float32"}):  # the reference numbers
            metrics = evaluate(
                str(bundle),
                snrs=cfg.test_snr,
                n=cfg.n_test,
                seed=cfg.trainset.seed + HELD_OUT_SEED_OFFSET,
                lib=self.sets.lib,
                png=self.out / "heldout_predicted_vs_true.png",
            )
        note = (
            f"{cfg.n_test} spectra per family (1-3 SSP mixtures; continuous SFHs) synthesised with a seed never "
            "used in training or validation, scored with the exported TorchScript file through the engine's "
            "preprocessing, in float32 (`survey-proc evaluate` scores the precision a run would use)"
        )
        add_held_out_metrics(bundle, metrics, note)
        return metrics

    def metrics_record(self, metrics: dict[str, Any], state: FitState) -> dict[str, Any]:
        return {"held_out": metrics, "history": state.to_dict()["history"]}


def train(cfg: TrainConfig, out_dir: str | os.PathLike) -> Path:
    """Train, calibrate and export a bundle into ``out_dir/bundle``; returns the bundle path.

    ``out_dir`` also receives ``checkpoint.pt`` (resume), ``metrics.json``, ``loss_curve.png`` and
    ``heldout_predicted_vs_true.png``.
    """
    return SpectrumTrainer(cfg, out_dir).run()
