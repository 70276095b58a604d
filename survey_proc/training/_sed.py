"""The per-pixel SED trainer (``kind: sed``): a 1-D CNN over the band fluxes of one pixel.

Held-out metrics on the two splits of Liew-Cain et al. (2021): **Set A**, pixels held out at random
from the training galaxies (neighbours of training pixels: optimistic), and **Set B**, whole
galaxies never seen in training (the honest estimate for new data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from survey_proc.preprocess import LineMask, SEDInputSpec
from survey_proc.training._arch import ExportedModel
from survey_proc.training._calibration import Calibration, novelty_stats
from survey_proc.training._fit import FitState
from survey_proc.training._galaxies import GalaxySet, holdout_pixels, noisy
from survey_proc.training._phot_arch import SEDCNN
from survey_proc.training._phot_evaluate import evaluate_sets, scored_pixels
from survey_proc.training._phot_trainer import PhotometricTrainer, masked_error_scale, standardise

log = logging.getLogger(__name__)

#: validation pixels below which the uncertainty scale is calibrated on all of them
MIN_REPORTED_PIXELS = 1000
#: training pixels the novelty reference features come from
N_REFERENCE_PIXELS = 50000


@dataclass
class Pixels:
    """Pixels of galaxies, flattened: noise-free band fluxes and variances, truth, redshift, and the
    median band S/N of the noise-free fluxes."""

    flux: np.ndarray  #: (n, nband)
    var: np.ndarray  #: (n, nband)
    labels: np.ndarray  #: (n, nlabel)
    z: np.ndarray  #: (n,)
    snr: np.ndarray  #: (n,)

    @classmethod
    def of(cls, data: GalaxySet, sel: np.ndarray | None = None) -> Pixels:
        """The pixels of ``data`` (optionally a boolean selection over (G, H, W))."""
        z = np.broadcast_to(data.redshift[:, None, None], data.flux.shape[:3])
        snr = data.expected_snr()
        if sel is None:
            sel = np.ones(data.flux.shape[:3], bool)
        return cls(data.flux[sel], data.var[sel], data.labels[sel], z[sel], snr[sel])

    def take(self, rows: Any) -> Pixels:
        """The pixels of ``rows`` (indices, a boolean mask or a slice)."""
        return Pixels(self.flux[rows], self.var[rows], self.labels[rows], self.z[rows], self.snr[rows])

    def inputs(self, spec: SEDInputSpec, rng: np.random.Generator, mask_fraction: float, jitter: float = 0.0):
        """Model inputs of one noise realisation, through the engine's preprocessing (a prepared batch);
        ``jitter``: each band flux first scaled by 1 + jitter x N(0, 1), unannounced in its variance."""
        flux = self.flux
        if jitter:
            flux = flux * (1.0 + np.float32(jitter) * rng.standard_normal(flux.shape, dtype=np.float32))
        f, v, m = noisy(flux, self.var, rng, mask_fraction)
        return spec.prepare_batch(f, v, m, spec.bands, self.z)


class SEDTrainer(PhotometricTrainer):
    """Train, calibrate and export the per-pixel SED model; :meth:`run`."""

    unit = "pixels"

    def prepare(self) -> None:
        cfg, data, tr = self.cfg, self.galaxies, self.train_idx
        self.spec = _sed_spec(cfg.redshift_range, data, cfg.redshift_input, cfg.line_mask)
        hold = holdout_pixels(data.flux.shape[:3], tr, cfg.pixel_holdout, cfg.seed)  # Set A
        in_train = np.zeros_like(hold)
        in_train[tr] = True
        self.hold = hold
        self.train_px = Pixels.of(data, in_train & ~hold & (data.expected_snr() >= cfg.min_train_snr))
        val_px = Pixels.of(data.subset(self.val_idx))
        val_px = val_px.take(val_px.snr >= cfg.min_train_snr)
        self.label_mean, self.label_std = standardise(self.train_px.labels)
        self.y_train = self._standardised(self.train_px.labels)
        self.prep_val = val_px.inputs(self.spec, np.random.default_rng([cfg.seed, 99]), cfg.galaxies.mask_fraction)
        self.x_val, self.y_val = (
            self.prep_val.x[self.prep_val.fit],
            self._standardised(val_px.labels)[self.prep_val.fit],
        )
        log.info(
            f"sed: {tr.size} training galaxies ({self.y_train.shape[0]} pixels trained on, {int(hold.sum())} held "
            f"out as Set A), {self.val_idx.size} validation and {self.test_idx.size} test galaxies (Set B)"
        )

    def _standardised(self, labels: np.ndarray) -> np.ndarray:
        return ((labels - self.label_mean) / self.label_std).astype(np.float32)

    def network(self) -> nn.Module:
        spec = self.spec
        return SEDCNN(len(spec.channels), len(spec.bands), len(self.names), **self.cfg.arch_kwargs).to(self.device)

    def batches(self, epoch: int):
        """A fresh noise draw of the training pixels (``pixels_per_epoch`` of them at random, if set)
        that the engine would fit, shuffled."""
        cfg = self.cfg
        erng = np.random.default_rng([cfg.seed, epoch])
        rows = np.arange(self.y_train.shape[0])
        if cfg.pixels_per_epoch and cfg.pixels_per_epoch < rows.size:
            rows = np.sort(erng.choice(rows.size, cfg.pixels_per_epoch, replace=False))
        prep = self.train_px.take(rows).inputs(self.spec, erng, cfg.galaxies.mask_fraction, cfg.flux_jitter)
        idx = np.nonzero(prep.fit)[0]
        erng.shuffle(idx)
        for s in range(0, idx.size, cfg.batch_size):
            b = idx[s : s + cfg.batch_size]
            yield prep.x[b], self.y_train[rows[b]]

    def calibrate(self, net: nn.Module) -> Calibration:
        """On the validation pixels the engine reports (measured S/N >= min_snr; fainter ones are
        flagged low_snr, and their wider, over-covered errors would shrink the scale for all the
        others); the novelty reference from training pixels with fresh noise."""
        cfg = self.cfg
        ref_px = self.train_px.take(slice(0, N_REFERENCE_PIXELS))
        with torch.inference_mode():
            m, lv, feats_val = (t.numpy() for t in net(torch.from_numpy(self.x_val))[:3])
            ref = ref_px.inputs(self.spec, np.random.default_rng([cfg.seed, 98]), cfg.galaxies.mask_fraction)
            feats_ref = net(torch.from_numpy(ref.x[ref.fit]))[2]
        reported = self.prep_val.snr[self.prep_val.fit] >= cfg.min_snr
        if reported.sum() < MIN_REPORTED_PIXELS:  # too few to calibrate on: all validation pixels
            reported[:] = True
        truth = {n: self.y_val[:, i] * self.label_std[i] + self.label_mean[i] for i, n in enumerate(self.names)}
        select = np.stack([scored_pixels(truth, n, reported) for n in self.names], axis=1)
        err_scale = masked_error_scale(m, lv, self.y_val, select)
        return Calibration(err_scale, *novelty_stats(feats_ref.numpy(), feats_val, cfg.ood_quantile))

    def export(self, net: nn.Module, calibration: Calibration, state: FitState) -> Path:
        module = ExportedModel(
            net, self.names, torch.tensor(self.label_mean), torch.tensor(self.label_std), *calibration.tensors()
        )
        return self.save_bundle(module, net, calibration, state, n_samples=self.y_train.shape[0], batch_size=4096)

    def evaluate(self, bundle: Path) -> dict[str, Any]:
        """Set A and Set B at the training set's depths (:func:`evaluate_sets`)."""
        data, tr = self.galaxies, self.train_idx
        sets = {"set_a": (data.subset(tr), self.hold[tr]), "set_b": (data.subset(self.test_idx), None)}
        return evaluate_sets(bundle, self.cfg, sets, self.names, self.out / "set_b_vs_truth.png")


def _sed_spec(
    redshift_range: tuple[float, float], data: GalaxySet, redshift_input: float = 0.0, line_mask: bool = False
) -> SEDInputSpec:
    """The input spec; ``redshift_input`` > 0 adds the redshift (times it) as a channel; ``line_mask``
    masks the bands that hold a strong nebular line (:class:`~survey_proc.preprocess.LineMask`)."""
    filters = data.filters
    return SEDInputSpec(
        bands=filters.bands,
        pivot=tuple(float(p) for p in filters.pivot),
        channels=("flux", "error", "mask") + (("redshift",) if redshift_input else ()),
        redshift_scale=float(redshift_input) or SEDInputSpec.redshift_scale,
        redshift_range=tuple(redshift_range),
        filter_set=filters.name,
        line_mask=LineMask.of_filters(filters.wave, filters.response) if line_mask else None,
        extra={"filter_source": filters.provenance.get("source", "")},
    )
