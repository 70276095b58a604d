"""Photometric models trained on mock galaxies: per-pixel SED CNN and image-to-image U-Net.

``kind: sed`` — the narrow-band per-pixel model after Liew-Cain et al. (2021): a 1-D CNN over the
J-PAS-like band fluxes of one pixel predicting light-weighted log age and [M/H]. Its held-out
metrics are reported on the paper's two splits: **Set A**, pixels held out at random from the
training galaxies (neighbours of training pixels, same galaxies: optimistic), and **Set B**, whole
galaxies never seen in training — the honest one for new data.

``kind: image`` — a PICASSSO-like model after Buck & Wolf (2021): a small U-Net from ugriz image
tiles to maps of stellar-mass surface density, log age and [M/H]. The engine runs it tile by tile
with a halo of ``halo_pixels`` (at least its receptive-field radius, a multiple of its down-sampling
factor) so tiled maps equal untiled ones in every core pixel.

Both use fresh noise every epoch, Gaussian negative-log-likelihood heads (per-pixel uncertainties,
calibrated on validation galaxies), a feature-space novelty score, and export a TorchScript bundle
whose manifest declares the input kind; metrics are computed with the exported file through the
engine's own preprocessing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from survey_proc.config import dataclass_options, read_yaml
from survey_proc.estimators import BUNDLE_FORMAT, MANIFEST_NAME
from survey_proc.figures import save_figure
from survey_proc.preprocess_bands import ImageInputSpec, SEDInputSpec
from survey_proc.ssp import load_ssp_library
from survey_proc.stores import NOT_FITTED, property_attrs
from survey_proc.training._arch import ExportedModel
from survey_proc.training._galaxies import GalaxySet, GalaxySetConfig, noisy, split_galaxies, synthesise_galaxies
from survey_proc.training._metrics import score_predictions
from survey_proc.training._train import (
    end_epoch,
    gaussian_nll,
    novelty_stats,
    optimiser_step,
    resume_state,
    start_run,
)


# --------------------------------------------------------------------------------------------- networks
class SEDCNN(nn.Module):
    """1-D CNN over band fluxes, after Liew-Cain et al. (2021) Table 1: small 3-tap convolutions with
    max pooling, then dense layers; here with Gaussian NLL heads (mean and log variance per output).
    """

    def __init__(
        self,
        in_channels: int,
        n_bands: int,
        n_outputs: int,
        widths: tuple[int, ...] = (16, 32, 64),
        hidden: tuple[int, ...] = (128, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, w0, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(w0, w1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(w1, w2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool1d(2),
        )
        length = n_bands // 4
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(w2 * length, hidden[0]),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
        )
        self.mean = nn.Linear(hidden[1], n_outputs)
        self.log_var = nn.Linear(hidden[1], n_outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, log_var, features, weights) like every spectral network (``_arch``), so the shared
        export wrapper runs it; ``weights`` is empty (n, 0): no light-fraction grid."""
        h = self.head(self.features(x))
        return self.mean(h), self.log_var(h).clamp(-12.0, 6.0), h, h.new_zeros((h.shape[0], 0))


def _block(c_in: int, c_out: int) -> nn.Sequential:
    # no normalisation layers: every output pixel depends on its neighbourhood only (tiles can be cut
    # anywhere), and batch statistics of small, augmented image batches made validation erratic
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GELU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.GELU()
    )


class ImageUNet(nn.Module):
    """Two-level U-Net: per-pixel (mean, log variance) of each output and a feature map.

    Sizes must be multiples of :attr:`multiple` (the export wrapper pads at the bottom/right).
    """

    multiple = 4

    def __init__(self, in_channels: int, n_outputs: int, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.enc0, self.enc1, self.mid = _block(in_channels, w0), _block(w0, w1), _block(w1, w2)
        self.up1 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = _block(2 * w1, w1)
        self.up0 = nn.ConvTranspose2d(w1, w0, 2, stride=2)
        self.dec0 = _block(2 * w0, w0)
        self.out = nn.Conv2d(w0, 2 * n_outputs, 1)
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e0 = self.enc0(x)
        e1 = self.enc1(F.max_pool2d(e0, 2))
        m = self.mid(F.max_pool2d(e1, 2))
        d1 = self.dec1(torch.cat([self.up1(m), e1], dim=1))
        d0 = self.dec0(torch.cat([self.up0(d1), e0], dim=1))
        o = self.out(d0)
        k = self.n_outputs
        return o[:, :k], o[:, k:].clamp(-12.0, 6.0), d0


def receptive_radius(net: nn.Module, in_channels: int, size: int = 96) -> int:
    """Largest distance (pixels, Chebyshev) from an output pixel at which an input pixel still changes it."""
    net = net.eval()
    x = torch.randn(1, in_channels, size, size, requires_grad=True)
    mean, _, _ = net(x)
    c = size // 2
    mean[0, :, c, c].sum().backward()
    hit = (x.grad[0].abs().sum(dim=0) > 0).nonzero()
    return int((hit - c).abs().max()) if hit.numel() else 0


class ExportedImageModel(nn.Module):
    """TorchScript image model: (B, C, H, W) -> one row per pixel (raster order) of every output,
    its ``_err`` and a per-pixel ``ood_score``; pads to the U-Net's multiple and crops back."""

    def __init__(
        self,
        net: nn.Module,
        names: list[str],
        label_mean: torch.Tensor,
        label_std: torch.Tensor,
        feat_mean: torch.Tensor,
        feat_prec: torch.Tensor,
        err_scale: torch.Tensor,
        multiple: int,
    ) -> None:
        super().__init__()
        self.net = net
        self.names = names
        self.multiple = multiple
        self.register_buffer("label_mean", label_mean.float().view(1, -1, 1, 1))
        self.register_buffer("label_std", label_std.float().view(1, -1, 1, 1))
        self.register_buffer("err_scale", err_scale.float().view(1, -1, 1, 1))
        self.register_buffer("feat_mean", feat_mean.float())
        self.register_buffer("feat_prec", feat_prec.float())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[2], x.shape[3]
        ph = (self.multiple - h % self.multiple) % self.multiple
        pw = (self.multiple - w % self.multiple) % self.multiple
        mean, log_var, feat = self.net(F.pad(x, [0, pw, 0, ph]))
        value = mean[:, :, :h, :w] * self.label_std + self.label_mean
        err = torch.exp(0.5 * log_var[:, :, :h, :w]) * self.label_std * self.err_scale
        f = feat[:, :, :h, :w].permute(0, 2, 3, 1).reshape(-1, feat.shape[1])
        d = f - self.feat_mean
        out: dict[str, torch.Tensor] = {
            "ood_score": torch.sqrt((d @ self.feat_prec * d).sum(dim=1) / float(d.shape[1]))
        }
        for i, name in enumerate(self.names):
            out[name] = value[:, i].reshape(-1)
            out[name + "_err"] = err[:, i].reshape(-1)
        return out


# --------------------------------------------------------------------------------------------- config
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
        return cls(galaxies=galaxies, **raw)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> PhotTrainConfig:
        return cls.from_dict(read_yaml(path))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- loop
def fit(
    net: nn.Module,
    epoch_batches: Callable[[int], Iterable[tuple[np.ndarray, np.ndarray]]],
    val_batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    cfg: PhotTrainConfig,
    out: Path,
    device: torch.device,
    say: Callable[..., None],
) -> dict:
    """Epoch loop with AdamW + cosine schedule, early stopping, per-epoch checkpoint (resume) and loss
    curve; leaves the best weights (lowest validation loss) in ``net``; returns the state."""
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    state = resume_state(ckpt_path, net, opt, sched, cfg.digest(), device, say)

    def evaluate() -> float:
        net.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for xb, yb in val_batches():
                loss = loss_fn(net, torch.from_numpy(xb).to(device), torch.from_numpy(yb).to(device))
                total += float(loss) * xb.shape[0]
                count += xb.shape[0]
        return total / max(count, 1)

    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"]
        net.train()
        losses, seen, t_ep = [], 0, time.perf_counter()
        for xb, yb in epoch_batches(epoch):
            loss = loss_fn(net, torch.from_numpy(xb).to(device), torch.from_numpy(yb).to(device))
            losses.append(optimiser_step(net, opt, loss))
            seen += xb.shape[0]
        sched.step()
        val_loss = evaluate()
        end_epoch(
            state,
            f"epoch {epoch + 1}/{cfg.epochs}",
            float(np.mean(losses)),
            val_loss,
            time.perf_counter() - t_ep,
            seen,
            "samples/s",
            net,
            opt,
            sched,
            cfg.digest(),
            out,
            say,
        )
    net.load_state_dict(torch.load(best_path, map_location=device))
    return state


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


def _manifest(
    cfg: PhotTrainConfig,
    spec: Any,
    names: list[str],
    model_path: Path,
    ood_threshold: float,
    training: dict,
    batch_size: int,
) -> dict:
    from survey_proc import __version__
    from survey_proc.fetch import sha256_of

    return {
        "format": BUNDLE_FORMAT,
        "name": cfg.name,
        "description": cfg.description,
        "estimator": "torchscript",
        "file": model_path.name,
        "sha256": sha256_of(model_path),
        "input": spec.to_manifest(),
        "outputs": {n: {**property_attrs(n), "error": True} for n in names},
        "flags": {
            "OUT_OF_DISTRIBUTION": {
                "output": "ood_score",
                "threshold": ood_threshold,
                "meaning": f"feature Mahalanobis score above the {cfg.ood_quantile:.1%} quantile of validation pixels",
            }
        },
        "min_snr": cfg.min_snr,
        "batch_size": batch_size,
        "training": training,
        "software": f"survey-proc {__version__}, torch {torch.__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _standardise(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = labels.reshape(-1, labels.shape[-1])
    return flat.mean(axis=0), flat.std(axis=0) + 1e-6


# --------------------------------------------------------------------------------------------- SED
def _sed_spec(cfg: PhotTrainConfig, data: GalaxySet) -> SEDInputSpec:
    return SEDInputSpec(
        bands=data.filters.bands,
        pivot=tuple(float(p) for p in data.filters.pivot),
        redshift_range=tuple(cfg.redshift_range),
        filter_set=data.filters.name,
        extra={"filter_source": data.filters.provenance.get("source", "")},
    )


def _pixels(data: GalaxySet, sel: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Flattened pixels (optionally a boolean selection over (G, H, W))."""
    z = np.broadcast_to(data.redshift[:, None, None], data.flux.shape[:3])
    snr = data.expected_snr()
    if sel is None:
        sel = np.ones(data.flux.shape[:3], bool)
    return {"flux": data.flux[sel], "var": data.var[sel], "labels": data.labels[sel], "z": z[sel], "snr": snr[sel]}


def _sed_inputs(px: dict[str, np.ndarray], spec: SEDInputSpec, rng: np.random.Generator, mask_fraction: float):
    f, v, m = noisy(px["flux"], px["var"], rng, mask_fraction)
    return spec.prepare_batch(f, v, m, spec.bands, px["z"])


def train_sed(cfg: PhotTrainConfig, data: GalaxySet, out: Path, device: torch.device, say) -> tuple[Path, dict]:
    """Train, calibrate and export the per-pixel SED model; returns (bundle, metrics)."""
    spec = _sed_spec(cfg, data)
    names = list(cfg.labels)
    tr, va, te = split_galaxies(len(data), cfg.val_fraction, cfg.test_fraction, cfg.seed)
    rng = np.random.default_rng([cfg.seed, 3])
    hold = np.zeros(data.flux.shape[:3], bool)
    hold[tr] = rng.random((tr.size, *data.flux.shape[1:3])) < cfg.pixel_holdout  # Set A
    expected = data.expected_snr()
    in_train = np.zeros_like(hold)
    in_train[tr] = True
    train_px = _pixels(data, in_train & ~hold & (expected >= cfg.min_train_snr))
    val_px = _pixels(data.subset(va))
    val_px = {k: v[val_px["snr"] >= cfg.min_train_snr] for k, v in val_px.items()}
    label_mean, label_std = _standardise(train_px["labels"])
    y_train = ((train_px["labels"] - label_mean) / label_std).astype(np.float32)
    y_val = ((val_px["labels"] - label_mean) / label_std).astype(np.float32)
    prep_val = _sed_inputs(val_px, spec, np.random.default_rng([cfg.seed, 99]), cfg.galaxies.mask_fraction)
    ok_val = prep_val.fit
    x_val, y_val = prep_val.x[ok_val], y_val[ok_val]
    say(
        f"sed: {tr.size} training galaxies ({y_train.shape[0]} pixels trained on, {int(hold.sum())} held out as "
        f"Set A), {va.size} validation and {te.size} test galaxies (Set B)"
    )

    net = SEDCNN(len(spec.channels), len(spec.bands), len(names), **cfg.arch_kwargs).to(device)

    def epoch_batches(epoch: int):
        erng = np.random.default_rng([cfg.seed, epoch])
        rows = np.arange(y_train.shape[0])
        if cfg.pixels_per_epoch and cfg.pixels_per_epoch < rows.size:
            rows = np.sort(erng.choice(rows.size, cfg.pixels_per_epoch, replace=False))
        prep = _sed_inputs({k: v[rows] for k, v in train_px.items()}, spec, erng, cfg.galaxies.mask_fraction)
        idx = np.nonzero(prep.fit)[0]
        erng.shuffle(idx)
        for s in range(0, idx.size, cfg.batch_size):
            b = idx[s : s + cfg.batch_size]
            yield prep.x[b], y_train[rows[b]]

    def val_batches():
        for s in range(0, x_val.shape[0], 4096):
            yield x_val[s : s + 4096], y_val[s : s + 4096]

    def loss_fn(model, xb, yb):
        mean, log_var = model(xb)[:2]
        return gaussian_nll(mean, log_var, yb)

    state = fit(net, epoch_batches, val_batches, loss_fn, cfg, out, device, say)
    net = net.cpu().eval()
    with torch.inference_mode():
        m, lv, feats_val = (t.numpy() for t in net(torch.from_numpy(x_val))[:3])
        ref = _sed_inputs(
            {k: v[:50000] for k, v in train_px.items()},
            spec,
            np.random.default_rng([cfg.seed, 98]),
            cfg.galaxies.mask_fraction,
        )
        feats_ref = net(torch.from_numpy(ref.x[ref.fit]))[2]
    # calibrated on the validation pixels the engine reports (measured S/N >= min_snr; fainter ones are
    # flagged low_snr, and their wider, over-covered errors would shrink the scale for all the others)
    reported = prep_val.snr[ok_val] >= cfg.min_snr
    if reported.sum() < 1000:  # too few to calibrate on: all validation pixels
        reported[:] = True
    err_scale = np.quantile((np.abs(m - y_val) / np.exp(0.5 * lv))[reported], 0.6827, axis=0)
    feat_mean, prec, thr = novelty_stats(feats_ref.numpy(), feats_val, cfg.ood_quantile)
    exported = ExportedModel(
        net,
        names,
        torch.tensor(label_mean),
        torch.tensor(label_std),
        torch.tensor(feat_mean),
        torch.tensor(prec),
        torch.tensor(err_scale),
    )
    bundle = _export(exported, out)
    training = _training_info(cfg, data, state, net, tr, va, te, err_scale, y_train.shape[0])
    manifest = _manifest(cfg, spec, names, bundle / "model.pt", thr, training, batch_size=4096)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))

    # held-out metrics with the exported file through the engine's preprocessing
    from survey_proc.estimators import load_estimator

    est = load_estimator(bundle)
    sets = {"set_a": _pixels(data, hold), "set_b": _pixels(data.subset(te))}
    metrics: dict[str, Any] = {}
    for key, px in sets.items():
        prep = _sed_inputs(px, spec, np.random.default_rng([cfg.seed, 7]), cfg.galaxies.mask_fraction)
        ok = (prep.flags & int(NOT_FITTED)) == 0
        pred = est.predict(prep.x[ok])
        truth = {n: px["labels"][ok, i] for i, n in enumerate(names)}
        metrics[key] = metrics_by_snr(pred, truth, prep.snr[ok], names, cfg.snr_bins)
        if key == "set_b":
            _plot_vs_truth(
                pred,
                truth,
                prep.snr[ok],
                names,
                cfg.min_snr,
                out / "set_b_vs_truth.png",
                f"{cfg.name}: Set B (galaxies never trained on), S/N per band >= {cfg.min_snr:g}",
            )
    manifest["metrics"] = {
        "held_out": metrics,
        "note": (
            "set_a: pixels held out at random from the training galaxies (their neighbours were trained on: "
            "optimistic); set_b: whole galaxies never trained on (the honest estimate for new data). One noise "
            "realisation each, scored with the exported TorchScript file through the engine's preprocessing, "
            "by median S/N per band."
        ),
    }
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
    return bundle, metrics


# --------------------------------------------------------------------------------------------- image
def _image_inputs(
    data: GalaxySet, spec: ImageInputSpec, rng: np.random.Generator, mask_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """(x (G, C, H, W), snr (G, H, W)) for one noise realisation, through the engine's preprocessing."""
    g, h, w, nb = data.flux.shape
    f, v, m = noisy(data.flux, data.var, rng, mask_fraction)
    xs, snrs = [], []
    for k in range(g):
        prep = spec.prepare_batch(
            f[k].reshape(-1, nb),
            v[k].reshape(-1, nb),
            m[k].reshape(-1, nb),
            spec.bands,
            float(data.redshift[k]),
            shape=(h, w),
        )
        xs.append(prep.x[0])
        snrs.append(prep.snr.reshape(h, w))
    return np.stack(xs), np.stack(snrs)


def _augment(xb: np.ndarray, yb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and quarter turns (the same for a batch; physics does not care about orientation)."""
    k = int(rng.integers(4))
    xb, yb = np.rot90(xb, k, axes=(2, 3)), np.rot90(yb, k, axes=(2, 3))
    if rng.random() < 0.5:
        xb, yb = xb[..., ::-1], yb[..., ::-1]
    return np.ascontiguousarray(xb), np.ascontiguousarray(yb)


def train_image(cfg: PhotTrainConfig, data: GalaxySet, out: Path, device: torch.device, say) -> tuple[Path, dict]:
    """Train, calibrate and export the image-to-image model; returns (bundle, metrics)."""
    names = list(cfg.labels)
    tr, va, te = split_galaxies(len(data), cfg.val_fraction, cfg.test_fraction, cfg.seed)
    noise_sigma = np.sqrt(np.median(data.var[tr], axis=(0, 1, 2)))
    net = ImageUNet(3 * len(data.filters), len(names), **cfg.arch_kwargs).to(device)
    radius = receptive_radius(ImageUNet(3 * len(data.filters), len(names), **cfg.arch_kwargs), 3 * len(data.filters))
    halo = int(np.ceil(radius / ImageUNet.multiple) * ImageUNet.multiple)
    spec = ImageInputSpec(
        bands=data.filters.bands,
        softening=tuple(float(s) for s in noise_sigma),
        pixel_scale_arcsec=cfg.galaxies.pixel_scale_arcsec,
        halo_pixels=halo,
        pivot=tuple(float(p) for p in data.filters.pivot),
        redshift_range=tuple(cfg.redshift_range),
        filter_set=data.filters.name,
        extra={
            "psf_fwhm_arcsec": cfg.galaxies.psf_fwhm_pixels * cfg.galaxies.pixel_scale_arcsec,
            "receptive_radius_pixels": radius,
        },
    )
    label_mean, label_std = _standardise(data.labels[tr])
    y_all = ((data.labels - label_mean) / label_std).astype(np.float32).transpose(0, 3, 1, 2)
    x_val, _ = _image_inputs(data.subset(va), spec, np.random.default_rng([cfg.seed, 99]), cfg.galaxies.mask_fraction)
    y_val = y_all[va]
    say(
        f"image: {tr.size} training, {va.size} validation, {te.size} test galaxies of {data.flux.shape[1]}^2 "
        f"pixels; receptive-field radius {radius} px -> halo {halo} px"
    )
    train_set = data.subset(tr)

    def epoch_batches(epoch: int):
        erng = np.random.default_rng([cfg.seed, epoch])
        x, _ = _image_inputs(train_set, spec, erng, cfg.galaxies.mask_fraction)
        order = erng.permutation(tr.size)
        for s in range(0, order.size, cfg.batch_size):
            b = order[s : s + cfg.batch_size]
            yield _augment(x[b], y_all[tr[b]], erng)

    def val_batches():
        for s in range(0, x_val.shape[0], 32):
            yield x_val[s : s + 32], y_val[s : s + 32]

    def loss_fn(model, xb, yb):
        mean, log_var, _ = model(xb)
        return (0.5 * (log_var + (yb - mean) ** 2 * torch.exp(-log_var))).sum(dim=1).mean()

    state = fit(net, epoch_batches, val_batches, loss_fn, cfg, out, device, say)
    net = net.cpu().eval()
    with torch.inference_mode():
        m, lv, fv = (t.numpy() for t in net(torch.from_numpy(x_val)))
        x_ref, _ = _image_inputs(
            train_set.subset(np.arange(min(64, tr.size))),
            spec,
            np.random.default_rng([cfg.seed, 98]),
            cfg.galaxies.mask_fraction,
        )
        _, _, fr = net(torch.from_numpy(x_ref))
    err_scale = np.quantile(
        (np.abs(m - y_val) / np.exp(0.5 * lv)).transpose(0, 2, 3, 1).reshape(-1, len(names)), 0.6827, axis=0
    )
    feats = lambda a: a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])  # noqa: E731
    sub = np.random.default_rng(5).permutation(feats(fv).shape[0])[:200000]
    feat_mean, prec, thr = novelty_stats(feats(fr.numpy()), feats(fv)[sub], cfg.ood_quantile)
    exported = ExportedImageModel(
        net,
        names,
        torch.tensor(label_mean),
        torch.tensor(label_std),
        torch.tensor(feat_mean),
        torch.tensor(prec),
        torch.tensor(err_scale),
        ImageUNet.multiple,
    )
    bundle = _export(exported, out)
    training = _training_info(cfg, data, state, net, tr, va, te, err_scale, int(tr.size * data.flux.shape[1] ** 2))
    manifest = _manifest(cfg, spec, names, bundle / "model.pt", thr, training, batch_size=1)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))

    from survey_proc.estimators import load_estimator

    est = load_estimator(bundle)
    test = data.subset(te)
    x_te, snr_te = _image_inputs(test, spec, np.random.default_rng([cfg.seed, 7]), cfg.galaxies.mask_fraction)
    preds = [est.predict(x_te[k : k + 1]) for k in range(len(test))]
    pred = {k: np.concatenate([p[k] for p in preds]) for k in preds[0]}
    truth = {n: test.labels[..., i].reshape(-1) for i, n in enumerate(names)}
    metrics = {"test_galaxies": metrics_by_snr(pred, truth, snr_te.reshape(-1), names, cfg.snr_bins)}
    _plot_vs_truth(
        pred,
        truth,
        snr_te.reshape(-1),
        names,
        cfg.min_snr,
        out / "test_vs_truth.png",
        f"{cfg.name}: {te.size} test galaxies never trained on, S/N per band >= {cfg.min_snr:g}",
    )
    manifest["metrics"] = {
        "held_out": metrics,
        "note": (
            "test_galaxies: whole galaxies never trained on, one noise realisation, each galaxy one tile through "
            "the exported TorchScript file and the engine's preprocessing; per pixel, by median S/N per band."
        ),
    }
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
    return bundle, metrics


# --------------------------------------------------------------------------------------------- shared
def _export(module: nn.Module, out: Path) -> Path:
    bundle = out / "bundle"
    bundle.mkdir(exist_ok=True)
    torch.jit.script(module).save(str(bundle / "model.pt"))
    return bundle


def _training_info(
    cfg: PhotTrainConfig,
    data: GalaxySet,
    state: dict,
    net: nn.Module,
    tr,
    va,
    te,
    err_scale: np.ndarray,
    n_samples: int,
) -> dict:
    lib_source = load_ssp_library().provenance.get("source")
    return {
        "config": asdict(cfg),
        "config_digest": cfg.digest(),
        "trainset_hash": cfg.galaxies.digest(load_ssp_library()),
        "ssp_library": lib_source,
        "galaxies": {"train": len(tr), "validation": len(va), "test": len(te)},
        "n_train_samples": n_samples,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "uncertainty_scale": np.asarray(err_scale).tolist(),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "history": state["history"],
    }


def _plot_vs_truth(
    pred: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    snr: np.ndarray,
    names: list[str],
    min_snr: float,
    path: Path,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from survey_proc.stores import robust_sigma

    sel = snr >= min_snr
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, n in zip(axes[0], names):
        t, p = truth[n][sel], pred[n][sel]
        ok = np.isfinite(t) & np.isfinite(p)
        ax.hexbin(t[ok], p[ok], gridsize=50, bins="log", cmap="viridis", mincnt=1)
        lo, hi = np.percentile(t[ok], [0.5, 99.5])
        ax.plot([lo, hi], [lo, hi], "w--", lw=1)
        d = p[ok] - t[ok]
        ax.set_title(f"{n}: bias {np.median(d):+.3f}, robust sigma {robust_sigma(d):.3f}", fontsize=9)
        ax.set_xlabel(f"true {n}")
        ax.set_ylabel(f"predicted {n}")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=90)


def train_photometric(cfg: PhotTrainConfig, out_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Synthesise the galaxies, train the model of ``cfg.kind``, export the bundle into ``out_dir/bundle``.

    ``out_dir`` also receives ``checkpoint.pt`` (resume), ``metrics.json``, ``loss_curve.png`` and a PNG of
    held-out predictions against the truth.
    """
    out, device = start_run(out_dir, cfg.device, cfg.threads, cfg.seed)
    say = print if progress else (lambda *a, **k: None)
    t0 = time.perf_counter()
    lib = load_ssp_library()
    data = synthesise_galaxies(cfg.galaxies, lib, tuple(cfg.labels))
    say(
        f"synthesised {len(data)} galaxies of {cfg.galaxies.size}^2 pixels through {cfg.galaxies.filters} "
        f"in {time.perf_counter() - t0:.0f} s"
    )
    trainer = train_sed if cfg.kind == "sed" else train_image
    bundle, metrics = trainer(cfg, data, out, device, say)
    (out / "metrics.json").write_text(json.dumps({"held_out": metrics}, indent=2))
    say(f"bundle written to {bundle} in {time.perf_counter() - t0:.0f} s")
    return bundle
