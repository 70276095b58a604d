"""What the photometric trainers share: their config, the galaxies and their split, the objective,
the manifest, and scores by S/N of the exported file against the truth."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from survey_proc.config import dataclass_options, read_yaml
from survey_proc.ssp import load_ssp_library
from survey_proc.stores import property_attrs
from survey_proc.training._bundle import save_model, write_manifest
from survey_proc.training._calibration import Calibration, error_scale
from survey_proc.training._fit import FitState, Trainer
from survey_proc.training._galaxies import SFR_LABEL, GalaxySetConfig, split_galaxies, synthesise_galaxies
from survey_proc.training._metrics import score_predictions

log = logging.getLogger(__name__)


#: options added after bundles were shipped, with their defaults: left out of the digest at those
LATER_OPTIONS = {"line_mask": False, "star_forming": False}


@dataclass
class PhotTrainConfig:
    """A photometric training run (YAML keys are the field names; ``galaxies`` a :class:`GalaxySetConfig`)."""

    kind: str = "sed"  #: sed | image
    name: str = "narrowband-cnn"
    description: str = "1-D CNN on J-PAS-like narrow-band SEDs per pixel (after Liew-Cain et al. 2021)"
    labels: tuple[str, ...] = ("log_age", "metallicity")
    galaxies: GalaxySetConfig = field(default_factory=GalaxySetConfig)
    arch_kwargs: dict = field(default_factory=dict)
    val_fraction: float = 0.1  #: galaxies for early stopping and calibration
    test_fraction: float = 0.15  #: galaxies never trained on (Set B)
    pixel_holdout: float = 0.15  #: sed: pixels of training galaxies held out (Set A)
    min_train_snr: float = 2.0  #: sed: pixels with a lower expected band S/N are not trained on
    pixels_per_epoch: int | None = None  #: sed: random training pixels seen per epoch (None: all)
    redshift_range: tuple[float, float] = (0.0, 0.035)
    redshift_input: float = 0.0  #: > 0 adds the redshift (times this) as an input channel
    flux_jitter: float = 0.0  #: sed: training fluxes scaled by 1 + this x N(0, 1) per band and pixel
    line_mask: bool = False  #: sed: bands holding a strong nebular line are masked (preprocess._lines)
    #: image: log_sfr_surface_density is learnt where the pixel forms stars (truth above the scored floor)
    #: only, and a ``star_forming_probability`` output says how likely that is (:mod:`._star_forming`)
    star_forming: bool = False
    epochs: int = 25
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    min_snr: float = 3.0  #: median S/N per band under which pixels are flagged low_snr
    ood_quantile: float = 0.995
    snr_bins: tuple[float, ...] = (3.0, 5.0, 10.0, 20.0, 50.0, 1e9)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PhotTrainConfig:
        raw = dataclass_options(cls, raw, "training")
        galaxies = GalaxySetConfig(**dataclass_options(GalaxySetConfig, raw.pop("galaxies", None), "galaxies"))
        if raw.get("kind", "sed") not in ("sed", "image"):
            raise ValueError(f"kind must be sed or image, not {raw.get('kind')!r}")
        if raw.get("star_forming") and (raw.get("kind", "sed") != "image" or SFR_LABEL not in raw.get("labels", ())):
            raise ValueError(
                f"star_forming needs kind: image and {SFR_LABEL} among the labels (it learns that label only where "
                "stars form, and a probability beside it)"
            )
        return cls(galaxies=galaxies, **raw)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> PhotTrainConfig:
        return cls.from_dict(read_yaml(path))

    def digest(self) -> str:
        """16 hex digits of the config; options added later are left out while at their defaults, so a
        config (and its checkpoint) digests as it did before they existed."""
        raw = {k: v for k, v in asdict(self).items() if not (k in LATER_OPTIONS and v == LATER_OPTIONS[k])}
        return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PhotometricTrainer(Trainer):
    """A photometric model trained on mock galaxies: :meth:`data` draws the galaxies and splits them
    (training, validation, test: whole galaxies), then :meth:`prepare` readies the data of the
    kind. The objective is the Gaussian NLL of every label (an image model's ``star_forming`` adds a
    logistic output's cross-entropy); the manifest, the training record and the held-out note are common."""

    #: validation samples per forward pass
    val_batch = 4096

    def __init__(self, cfg: PhotTrainConfig, out_dir: str | os.PathLike) -> None:
        super().__init__(cfg, out_dir)
        self.names = list(cfg.labels)

    def data(self) -> None:
        cfg = self.cfg
        self.lib = load_ssp_library()
        self.galaxies = synthesise_galaxies(cfg.galaxies, self.lib, tuple(cfg.labels))
        log.info(
            f"synthesised {len(self.galaxies)} galaxies of {cfg.galaxies.size}^2 pixels through "
            f"{cfg.galaxies.filters} in {time.perf_counter() - self.started:.0f} s"
        )
        self.train_idx, self.val_idx, self.test_idx = split_galaxies(
            len(self.galaxies), cfg.val_fraction, cfg.test_fraction, cfg.seed
        )
        self.prepare()

    def prepare(self) -> None:
        """The kind's inputs: its input spec, standardised labels, validation inputs (``x_val``, ``y_val``)."""
        raise NotImplementedError

    def loss(self, net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        mean, log_var = net(xb)[:2]
        return masked_nll(mean, log_var, yb)

    def val_loss(self, net: nn.Module) -> float:
        """The loss over the validation inputs, averaged over samples."""
        net.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for s in range(0, self.x_val.shape[0], self.val_batch):
                xb, yb = self.x_val[s : s + self.val_batch], self.y_val[s : s + self.val_batch]
                loss = self.loss(net, torch.from_numpy(xb).to(self.device), torch.from_numpy(yb).to(self.device))
                total += float(loss) * xb.shape[0]
                count += xb.shape[0]
        return total / max(count, 1)

    def save_bundle(
        self,
        module: nn.Module,
        net: nn.Module,
        calibration: Calibration,
        state: FitState,
        *,
        n_samples: int,
        batch_size: int,
    ) -> Path:
        """Script ``module`` into the bundle and write its manifest."""
        cfg = self.cfg
        bundle = save_model(module, self.out)
        ood = {
            "output": "ood_score",
            "threshold": calibration.ood_threshold,
            "meaning": f"feature Mahalanobis score above the {cfg.ood_quantile:.1%} quantile of validation pixels",
        }
        write_manifest(
            bundle,
            name=cfg.name,
            description=cfg.description,
            input_spec=self.spec,
            outputs=self.output_entries(),
            flags={"OUT_OF_DISTRIBUTION": ood},
            min_snr=cfg.min_snr,
            batch_size=batch_size,
            training=self._training_record(net, calibration, state, n_samples),
        )
        return bundle

    def output_entries(self) -> dict[str, dict]:
        """The manifest's outputs: every label, with an error (an image model may add its probabilities)."""
        return {n: {**property_attrs(n), "error": True} for n in self.names}

    def _training_record(self, net: nn.Module, calibration: Calibration, state: FitState, n_samples: int) -> dict:
        cfg = self.cfg
        return {
            "config": asdict(cfg),
            "config_digest": cfg.digest(),
            "trainset_hash": cfg.galaxies.digest(self.lib),
            "ssp_library": self.lib.provenance.get("source"),
            "galaxies": {"train": len(self.train_idx), "validation": len(self.val_idx), "test": len(self.test_idx)},
            "n_train_samples": n_samples,
            "best_epoch": state.best_epoch,
            "epochs_run": state.epoch,
            "uncertainty_scale": np.asarray(calibration.err_scale).tolist(),
            "parameters": int(sum(p.numel() for p in net.parameters())),
            "history": state.to_dict()["history"],
        }


def masked_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`gaussian_nll` (summed over outputs, axis 1; averaged over samples and pixels) of the finite
    targets only: pixels whose labels are NaN (held out as Set A) add nothing and are not counted; a
    pixel with some labels NaN (a quiescent pixel's SFR under ``star_forming``) counts once, for the rest."""
    ok = torch.isfinite(target)
    t = torch.where(ok, target, mean.detach())
    per = torch.where(ok, 0.5 * (log_var + (t - mean) ** 2 * torch.exp(-log_var)), torch.zeros_like(mean))
    return per.sum() / ok.any(dim=1).sum().clamp(min=1)


def masked_error_scale(mean: np.ndarray, log_var: np.ndarray, target: np.ndarray, select: np.ndarray) -> np.ndarray:
    """:func:`error_scale` per output (columns) over its own rows ``select`` (n, k) bool (all rows where
    fewer than 100 are selected)."""
    out = np.empty(mean.shape[1])
    for j in range(mean.shape[1]):
        rows = select[:, j] if select[:, j].sum() >= 100 else np.isfinite(target[:, j])  # not hidden labels
        out[j] = error_scale(mean[rows, j : j + 1], log_var[rows, j : j + 1], target[rows, j : j + 1])[0]
    return out


def standardise(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std + 1e-6) of each label (the last axis) over all other axes."""
    flat = labels.reshape(-1, labels.shape[-1])
    return flat.mean(axis=0), flat.std(axis=0) + 1e-6


def metrics_by_snr(
    pred: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    snr: np.ndarray,
    names: list[str],
    bins: tuple[float, ...],
) -> dict[str, Any]:
    """Bias, robust sigma and coverage per S/N bin (``lo-hi``) and over all pixels above the first edge."""
    result: dict[str, Any] = {}
    edges = list(bins)
    for lo, hi in itertools.pairwise(edges):
        sel = (snr >= lo) & (snr < hi)
        if sel.sum() < 10:
            continue
        label = f"{lo:g}-{hi:g}" if hi < 1e8 else f">{lo:g}"
        result[label] = score_predictions(
            {k: v[sel] for k, v in pred.items()}, {k: v[sel] for k, v in truth.items()}, names
        )
        result[label]["n"] = int(sel.sum())
    sel = snr >= edges[0]
    result["all"] = score_predictions(
        {k: v[sel] for k, v in pred.items()}, {k: v[sel] for k, v in truth.items()}, names
    )
    result["all"]["n"] = int(sel.sum())
    return result
