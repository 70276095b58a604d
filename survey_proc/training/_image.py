"""The image-to-image trainer (``kind: image``): a U-Net from band images to per-pixel maps.

The engine runs the model tile by tile with a halo of ``halo_pixels`` (at least its receptive-field
radius, a multiple of its down-sampling factor) so tiled maps equal untiled ones in every core
pixel. A share of the training galaxies' pixels is left out of the loss (NaN labels: Set A); held-out
metrics on Set A and Set B (whole test galaxies, each one tile) by :mod:`._phot_evaluate`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from survey_proc.preprocess import ImageInputSpec
from survey_proc.training._calibration import Calibration, novelty_stats
from survey_proc.training._fit import FitState
from survey_proc.training._galaxies import GalaxySet, GalaxySetConfig, holdout_pixels, prepared_galaxies
from survey_proc.training._phot_arch import ExportedImageModel, ImageUNet, receptive_radius
from survey_proc.training._phot_evaluate import evaluate_sets, scored_pixels
from survey_proc.training._phot_trainer import PhotometricTrainer, masked_error_scale, masked_nll, standardise
from survey_proc.training._star_forming import PROBABILITY, conditional_targets, masked_bce, output_entries

log = logging.getLogger(__name__)

#: training galaxies the novelty reference features come from
N_REFERENCE_GALAXIES = 64
#: validation pixels (at random) the novelty threshold is measured on
N_THRESHOLD_PIXELS = 200000


class ImageTrainer(PhotometricTrainer):
    """Train, calibrate and export the image-to-image model; :meth:`run`."""

    unit = "galaxies"
    val_batch = 32

    @property
    def samples_per_epoch(self) -> int:
        return self.train_idx.size

    def prepare(self) -> None:
        """The network comes first: its receptive field fixes the halo the input spec declares."""
        cfg, data, tr = self.cfg, self.galaxies, self.train_idx
        noise_sigma = np.sqrt(np.median(data.var[tr], axis=(0, 1, 2)))
        self.net = self._unet().to(self.device)
        radius = receptive_radius(self._unet(), self._in_channels)
        halo = int(np.ceil(radius / ImageUNet.multiple) * ImageUNet.multiple)
        self.spec = ImageInputSpec(
            bands=data.filters.bands,
            softening=tuple(float(s) for s in noise_sigma),
            pixel_scale_arcsec=cfg.galaxies.pixel_scale_arcsec,
            halo_pixels=halo,
            pivot=tuple(float(p) for p in data.filters.pivot),
            redshift_range=tuple(cfg.redshift_range),
            filter_set=data.filters.name,
            redshift_scale=float(cfg.redshift_input),
            extra=_psf_record(cfg.galaxies) | {"receptive_radius_pixels": radius},
        )
        self.label_mean, self.label_std = standardise(data.labels[tr])
        y_all = ((data.labels - self.label_mean) / self.label_std).astype(np.float32).transpose(0, 3, 1, 2)
        if cfg.star_forming:  # the SFR only where the pixel forms stars, and whether it does
            y_all = conditional_targets(y_all, data.labels, self.names)
        self.hold = holdout_pixels(data.flux.shape[:3], tr, cfg.pixel_holdout, cfg.seed)  # Set A
        self.y_fit = np.where(self.hold[:, None], np.float32(np.nan), y_all)  # held-out pixels: no loss
        rng = np.random.default_rng([cfg.seed, 99])
        self.x_val, self.snr_val = _image_inputs(data.subset(self.val_idx), self.spec, rng, cfg.galaxies.mask_fraction)
        self.y_val = y_all[self.val_idx]
        log.info(
            f"image: {tr.size} training ({int(self.hold.sum())} pixels held out as Set A), {self.val_idx.size} "
            f"validation, {self.test_idx.size} test galaxies of {data.flux.shape[1]}^2 pixels; receptive-field "
            f"radius {radius} px -> halo {halo} px"
        )
        self.train_set = data.subset(tr)

    @property
    def _in_channels(self) -> int:
        """What :class:`ImageInputSpec` gives: flux, error and mask per band, and the redshift if asked."""
        return 3 * len(self.galaxies.filters) + (1 if self.cfg.redshift_input else 0)

    @property
    def probabilities(self) -> list[str]:
        """The logistic outputs after the labels' (``star_forming``: one)."""
        return [PROBABILITY] if self.cfg.star_forming else []

    def _unet(self) -> ImageUNet:
        n_bands = len(self.galaxies.filters)
        n_out = len(self.names) + len(self.probabilities)
        return ImageUNet(self._in_channels, n_out, n_bands=n_bands, **self.cfg.arch_kwargs)

    def loss(self, net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """The labels' Gaussian NLL, plus the binary cross-entropy of the logistic outputs."""
        mean, log_var = net(xb)[:2]
        k = len(self.names)
        loss = masked_nll(mean[:, :k], log_var[:, :k], yb[:, :k])
        return loss + masked_bce(mean[:, k:], yb[:, k:]) if self.probabilities else loss

    def output_entries(self) -> dict[str, dict]:
        """The labels, and with ``star_forming`` the SFR read as the rate where stars form and the probability."""
        return output_entries(self.names) if self.cfg.star_forming else super().output_entries()

    def network(self) -> nn.Module:
        return self.net

    def batches(self, epoch: int):
        """A fresh noise draw of the training galaxies, shuffled, each batch flipped and turned at random."""
        cfg, tr = self.cfg, self.train_idx
        erng = np.random.default_rng([cfg.seed, epoch])
        x, _ = _image_inputs(self.train_set, self.spec, erng, cfg.galaxies.mask_fraction)
        order = erng.permutation(tr.size)
        for s in range(0, order.size, cfg.batch_size):
            b = order[s : s + cfg.batch_size]
            yield _augment(x[b], self.y_fit[tr[b]], erng)

    def calibrate(self, net: nn.Module) -> Calibration:
        """Per pixel of the validation galaxies; the novelty reference from training galaxies with
        fresh noise, the threshold from a random subset of the validation pixels."""
        cfg = self.cfg
        ref_set = self.train_set.subset(np.arange(min(N_REFERENCE_GALAXIES, self.train_idx.size)))
        with torch.inference_mode():
            m, lv, fv = (t.numpy() for t in net(torch.from_numpy(self.x_val)))
            rng = np.random.default_rng([cfg.seed, 98])
            x_ref, _ = _image_inputs(ref_set, self.spec, rng, cfg.galaxies.mask_fraction)
            _, _, fr = net(torch.from_numpy(x_ref))
        k = len(self.names)
        m, lv, y = _per_pixel(m)[:, :k], _per_pixel(lv)[:, :k], _per_pixel(self.y_val)[:, :k]
        truth = {n: y[:, i] * self.label_std[i] + self.label_mean[i] for i, n in enumerate(self.names)}
        reported = self.snr_val.reshape(-1) >= cfg.min_snr  # the pixels the engine reports
        select = np.stack([scored_pixels(truth, n, reported) for n in self.names], axis=1)
        err_scale = masked_error_scale(m, lv, y, select)
        sub = np.random.default_rng(5).permutation(_per_pixel(fv).shape[0])[:N_THRESHOLD_PIXELS]
        return Calibration(err_scale, *novelty_stats(_per_pixel(fr.numpy()), _per_pixel(fv)[sub], cfg.ood_quantile))

    def export(self, net: nn.Module, calibration: Calibration, state: FitState) -> Path:
        feat_mean, feat_prec, err_scale = calibration.tensors()
        module = ExportedImageModel(
            net,
            self.names,
            torch.tensor(self.label_mean),
            torch.tensor(self.label_std),
            feat_mean,
            feat_prec,
            err_scale,
            ImageUNet.multiple,
            self.probabilities,
        )
        n_samples = int(self.train_idx.size * self.galaxies.flux.shape[1] ** 2)
        return self.save_bundle(module, net, calibration, state, n_samples=n_samples, batch_size=1)

    def evaluate(self, bundle: Path) -> dict[str, Any]:
        """Set A and Set B at the training set's depths (:func:`evaluate_sets`)."""
        data, tr = self.galaxies, self.train_idx
        sets = {"set_a": (data.subset(tr), self.hold[tr]), "set_b": (data.subset(self.test_idx), None)}
        return evaluate_sets(bundle, self.cfg, sets, self.names, self.out / "test_vs_truth.png")


def _psf_record(g: GalaxySetConfig) -> dict[str, Any]:
    """The seeing the model was trained for (arcsec): the images ``survey-proc resample`` makes for it."""
    scale = g.pixel_scale_arcsec
    if g.psf_fwhm_range is None:
        return {"psf_fwhm_arcsec": g.psf_fwhm_pixels * scale}
    lo, hi = g.psf_fwhm_range
    return {"psf_fwhm_arcsec": 0.5 * (lo + hi) * scale, "psf_fwhm_range_arcsec": [lo * scale, hi * scale]}


def _per_pixel(a: np.ndarray) -> np.ndarray:
    """(G, C, H, W) -> (G * H * W, C): one row per pixel."""
    return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])


def _image_inputs(
    data: GalaxySet, spec: ImageInputSpec, rng: np.random.Generator, mask_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """(x (G, C, H, W), snr (G, H, W)) for one noise realisation, through the engine's preprocessing."""
    h, w = data.flux.shape[1:3]
    preps = list(prepared_galaxies(data, spec, rng, mask_fraction))
    return np.stack([p.x[0] for p in preps]), np.stack([p.snr.reshape(h, w) for p in preps])


def _augment(xb: np.ndarray, yb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and quarter turns (the same for a batch; physics does not care about orientation)."""
    k = int(rng.integers(4))
    xb, yb = np.rot90(xb, k, axes=(2, 3)), np.rot90(yb, k, axes=(2, 3))
    if rng.random() < 0.5:
        xb, yb = xb[..., ::-1], yb[..., ::-1]
    return np.ascontiguousarray(xb), np.ascontiguousarray(yb)
