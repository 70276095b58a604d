"""Calibration after training, on data the network was not fitted to.

- the uncertainty scale: per output, the factor that puts 68 % of the validation truths inside the
  predicted one-sigma interval;
- the novelty statistics: the mean and precision of the network's features on training inputs and
  the threshold of the Mahalanobis score that the ``ood_quantile`` of validation inputs stay under;
- (spectra) the edge tables of log age and [M/H] (:mod:`._edges`), from calibration spectra of
  seeds of their own, run through the exported module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from survey_proc.preprocess import InputSpec
from survey_proc.ssp import SSPLibrary, require_use
from survey_proc.stores import NOT_FITTED
from survey_proc.training._arch import ExportedModel
from survey_proc.training._dataset import TrainsetConfig, make_inputs, synthesise
from survey_proc.training._edges import EdgeTable, fit_edge_table, noise_level
from survey_proc.training._evaluate import FAMILIES, heldout_config

#: the share of validation truths inside the calibrated one-sigma interval
ONE_SIGMA = 0.6827

EDGE_NOTE = (
    "median prediction (table[i][j]) of true value true[j] at noise level noise[i] (1 / median S/N "
    "per pixel of the model input), from "
    "calibration spectra of their own seed; outputs are this curve inverted (survey_proc.training._edges)"
)


@dataclass
class Calibration:
    """What validation fixes after training: the uncertainty scale and the novelty statistics."""

    err_scale: np.ndarray  #: (outputs,) factor on the predicted standard deviations
    feat_mean: np.ndarray  #: (features,) mean of the reference features
    feat_prec: np.ndarray  #: (features, features) their (lightly regularised) precision
    ood_threshold: float  #: the ``ood_score`` above which an input is flagged out of distribution

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(feat_mean, feat_prec, err_scale) as the export wrappers take them."""
        return torch.tensor(self.feat_mean), torch.tensor(self.feat_prec), torch.tensor(self.err_scale)


def error_scale(mean: np.ndarray, log_var: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per output (columns), the factor on exp(log_var / 2) that covers 68.27 % of |mean - target|."""
    return np.quantile(np.abs(mean - target) / np.exp(0.5 * log_var), ONE_SIGMA, axis=0)


def novelty_stats(
    feats_ref: np.ndarray, feats_val: np.ndarray, quantile: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """(feature mean, precision, threshold): the mean and (lightly regularised) precision of the
    reference features, and the ``quantile`` of the validation features' Mahalanobis score / sqrt(dim).

    Estimating both on the same inputs would make in-sample distances look smaller than new ones.
    """
    feat_mean = feats_ref.mean(axis=0)
    cov = np.cov(feats_ref, rowvar=False)
    cov += np.eye(cov.shape[0]) * 1e-3 * np.trace(cov) / cov.shape[0]
    prec = np.linalg.inv(cov)
    d = feats_val - feat_mean
    scores = np.sqrt(np.einsum("ij,jk,ik->i", d, prec, d) / d.shape[1])
    return feat_mean, prec, float(np.quantile(scores, quantile))


def calibrate(
    mean: np.ndarray,
    log_var: np.ndarray,
    target: np.ndarray,
    feats_ref: np.ndarray,
    feats_val: np.ndarray,
    quantile: float,
) -> Calibration:
    """The :class:`Calibration` from validation predictions (standardised ``mean``, ``log_var``
    against ``target``) and reference and validation features."""
    err_scale = error_scale(mean, log_var, target)
    return Calibration(err_scale, *novelty_stats(feats_ref, feats_val, quantile))


def predict_raw(
    net: nn.Module, x: np.ndarray, device: torch.device, batch: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, log_var, features) of a spectral network on ``x``, in eval mode, in batches."""
    net.eval()
    means, logvars, feats = [], [], []
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch):
            m, lv, f, _ = net(torch.from_numpy(x[s : s + batch]).to(device))
            means.append(m.float().cpu().numpy())
            logvars.append(lv.float().cpu().numpy())
            feats.append(f.float().cpu().numpy())
    return np.concatenate(means), np.concatenate(logvars), np.concatenate(feats)


def noise_channels(spec: InputSpec) -> tuple[int, int, int]:
    """(flux, error, mask) channel indices of a model input (-1: no mask channel)."""
    ch = list(spec.channels)
    return ch.index("flux"), ch.index("error"), ch.index("mask") if "mask" in ch else -1


def fit_edge_tables(
    exported: ExportedModel,
    trainset: TrainsetConfig,
    lib: SSPLibrary,
    spec: InputSpec,
    *,
    n_calib: int,
    seed: int,
    min_snr: float,
) -> dict[str, EdgeTable]:
    """Edge tables for log_age and metallicity from ``n_calib`` spectra of seeds of their own (not
    training, validation or held-out): half 1-3 SSP mixtures, half continuous SFHs (the populations
    the held-out scores are about), noised like the training set at S/N 5-80 (noise seeded by ``seed``).
    An SSP library reserved for evaluation is refused."""
    require_use(lib, "calibration")
    grid = {"log_age": (lib.log_age[0], lib.log_age[-1]), "metallicity": (lib.metal[0], lib.metal[-1])}
    names = [n for n in exported.names if n in grid]
    if not names or "error" not in spec.channels:  # (the noise level is measured from the error channel)
        return {}
    parts: dict[str, list] = {n: [] for n in names}
    for k, family in enumerate(FAMILIES):
        # S/N over the training range; no noiseless spectra (they would fill the smallest-noise bin)
        ts = dataclasses.replace(
            heldout_config(trainset, family, n_calib // len(FAMILIES), trainset.seed + 1_500_007 + k),
            noiseless_fraction=0.0,
        )
        for n, columns in _edge_predictions(exported, ts, lib, spec, np.random.default_rng([seed, 97, k])).items():
            parts[n].append(columns)
    tables = {}
    for n, per_family in parts.items():  # (pred, true, noise, snr, err) per family -> pooled arrays
        pred, true, noise, snr, err = (np.concatenate(col) for col in zip(*per_family))
        tables[n] = fit_edge_table(pred, true, noise, *grid[n], snr=snr, min_snr=min_snr, err=err)
    return tables


def _edge_predictions(
    exported: ExportedModel, ts: TrainsetConfig, lib: SSPLibrary, spec: InputSpec, rng: np.random.Generator
) -> dict[str, tuple[np.ndarray, ...]]:
    """Per edge-corrected output: (pred, true, noise, snr, err) of one family's calibration spectra
    that the engine would fit."""
    calib = synthesise(ts, lib, spec)
    x, flags, snr = make_inputs(calib, rng, ts, spec)
    fitted = (flags & int(NOT_FITTED)) == 0  # spectra the engine would not fit do not calibrate
    xt = torch.from_numpy(x[fitted])
    with torch.inference_mode():
        outs = [exported(xt[s : s + 2048]) for s in range(0, xt.shape[0], 2048)]
        noise = noise_level(xt, *noise_channels(spec)).numpy()
    columns = {}
    for n in (n for n in exported.names if n in ("log_age", "metallicity")):
        true = calib.labels[fitted, list(calib.label_names).index(n)]
        pred, err = (torch.cat([o[key] for o in outs]).numpy() for key in (n, n + "_err"))
        columns[n] = (pred, true, noise, snr[fitted], err)
    return columns
