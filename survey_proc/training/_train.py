"""The training loop, calibration, out-of-distribution statistics and bundle export.

``survey-proc train CONFIG`` runs :func:`train`: synthesise noise-free training, validation and
held-out test sets from the SSP library (three different seeds), train with fresh noise every
epoch (Gaussian negative log-likelihood), keep the best epoch on the validation set, checkpoint
every epoch (a rerun resumes), calibrate the uncertainties and the novelty threshold on the
validation set, export a TorchScript bundle, and score the exported file on the held-out set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from survey_proc.estimators._base import BUNDLE_FORMAT, MANIFEST_NAME
from survey_proc.preprocess import InputSpec
from survey_proc.ssp import load_ssp_library
from survey_proc.stores._maps import NOT_FITTED, property_attrs
from survey_proc.training._arch import ExportedModel, build
from survey_proc.training._dataset import (
    NoiseFreeSet,
    TrainsetConfig,
    default_muse_input,
    make_inputs,
    sdss_observed_input,
    synthesise,
)
from survey_proc.training._metrics import score_predictions

INPUT_PRESETS = {"muse-rest-4750-7100": default_muse_input, "sdss-observed-3800-8900": sdss_observed_input}


@dataclass
class TrainConfig:
    """A training run (YAML keys are the field names; ``trainset`` is a :class:`TrainsetConfig`)."""

    name: str = "muse-cnn"
    description: str = "compact CNN on MUSE spectra, rest frame 4750-7100 A"
    input: str = "muse-rest-4750-7100"
    arch: str = "cnn"
    arch_kwargs: dict = field(default_factory=dict)
    trainset: TrainsetConfig = field(default_factory=TrainsetConfig)
    n_val: int = 4000
    n_test: int = 4000
    test_snr: tuple[float, ...] = (10.0, 20.0, 30.0, 50.0)
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    min_snr: float = 5.0
    ood_quantile: float = 0.995
    chunk: int = 8192

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        raw = dict(raw)
        ts = raw.pop("trainset", {}) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        ts_known = {f.name for f in dataclasses.fields(TrainsetConfig)}
        if set(ts) - ts_known:
            raise ValueError(f"unknown trainset option(s): {', '.join(sorted(set(ts) - ts_known))}")
        ts = {k: tuple(v) if isinstance(v, list) else v for k, v in ts.items()}
        raw = {k: tuple(v) if k == "test_snr" else v for k, v in raw.items()}
        return cls(trainset=TrainsetConfig(**ts), **raw)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f) or {})

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:16]


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA if present (or requested), else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood (constant dropped), per output summed."""
    return (0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var))).sum(dim=1).mean()


class _Epochs:
    """Produces (x, y) chunks of fresh noise in a background thread while the model trains."""

    def __init__(self, data: NoiseFreeSet, cfg: TrainConfig, spec: InputSpec, y: np.ndarray, epoch: int) -> None:
        self.data, self.cfg, self.spec, self.y = data, cfg, spec, y
        rng = np.random.default_rng([cfg.seed, epoch])
        # shuffle at the level of redshift batches (rows of one batch share a grid), then within chunks
        starts = np.arange(0, len(data), cfg.trainset.batch)
        rng.shuffle(starts)
        order = np.concatenate([np.arange(s, min(s + cfg.trainset.batch, len(data))) for s in starts])
        self.chunks = [order[i:i + cfg.chunk] for i in range(0, len(order), cfg.chunk)]
        self.rng = rng
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._produce, daemon=True)
        self.thread.start()

    def _produce(self) -> None:
        for idx in self.chunks:
            x, _, _ = make_inputs(self.data.subset(idx), self.rng, self.cfg.trainset, self.spec)
            perm = self.rng.permutation(idx.size)
            self.queue.put((x[perm], self.y[idx][perm]))
        self.queue.put(None)

    def __iter__(self):
        while (item := self.queue.get()) is not None:
            yield item


def _predict_raw(net: torch.nn.Module, x: np.ndarray, device: torch.device, batch: int = 2048
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    net.eval()
    means, logvars, feats = [], [], []
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch):
            m, lv, f = net(torch.from_numpy(x[s:s + batch]).to(device))
            means.append(m.float().cpu().numpy())
            logvars.append(lv.float().cpu().numpy())
            feats.append(f.float().cpu().numpy())
    return np.concatenate(means), np.concatenate(logvars), np.concatenate(feats)


def _with_snr(data: NoiseFreeSet, snr: float) -> NoiseFreeSet:
    return dataclasses.replace(data, snr=np.full(len(data), snr))


def _plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], label="training (fresh noise each epoch)")
    ax.plot(ep, [h["val_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Gaussian NLL (standardised labels)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig, out_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Train, calibrate and export a bundle into ``out_dir/bundle``; returns the bundle path.

    ``out_dir`` also receives ``checkpoint.pt`` (resume), ``metrics.json`` and ``loss_curve.png``.
    """
    from survey_proc import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    lib = load_ssp_library()
    if cfg.input not in INPUT_PRESETS:
        raise ValueError(f"unknown input preset {cfg.input!r}; known: {', '.join(INPUT_PRESETS)}")
    spec = INPUT_PRESETS[cfg.input]()
    say = print if progress else (lambda *a, **k: None)

    t0 = time.perf_counter()
    ts = cfg.trainset
    train_set = synthesise(ts, lib, spec, progress=progress)
    val_set = synthesise(dataclasses.replace(ts, n=cfg.n_val, seed=ts.seed + 1_000_003), lib, spec)
    test_set = synthesise(dataclasses.replace(ts, n=cfg.n_test, seed=ts.seed + 2_000_003), lib, spec)
    say(f"synthesised {len(train_set)} training, {len(val_set)} validation, {len(test_set)} held-out "
        f"spectra in {time.perf_counter() - t0:.0f} s")

    names = list(ts.labels)
    label_mean = train_set.labels.mean(axis=0)
    label_std = train_set.labels.std(axis=0) + 1e-6
    y_train = ((train_set.labels - label_mean) / label_std).astype(np.float32)
    x_val, _, _ = make_inputs(val_set, np.random.default_rng([cfg.seed, 99]), ts, spec)
    y_val = ((val_set.labels - label_mean) / label_std).astype(np.float32)

    net = build(cfg.arch, len(spec.channels), spec.wave.size, len(names), **cfg.arch_kwargs).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    amp = device.type == "cuda"
    state = {"epoch": 0, "best_val": float("inf"), "best_epoch": -1, "history": [], "stale": 0}
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt.get("config_digest") == cfg.digest():
            net.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
            state = ckpt["state"]
            say(f"resuming from {ckpt_path} after epoch {state['epoch']}")
        else:
            say(f"{ckpt_path} belongs to another configuration; starting afresh")
    best_path = out / "best.pt"

    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"]
        net.train()
        losses, seen = [], 0
        t_ep = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(train_set), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="spec", leave=False)
        for xc, yc in _Epochs(train_set, cfg, spec, y_train, epoch):
            for s in range(0, xc.shape[0], cfg.batch_size):
                xb = torch.from_numpy(xc[s:s + cfg.batch_size]).to(device, non_blocking=True)
                yb = torch.from_numpy(yc[s:s + cfg.batch_size]).to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    mean, log_var, _ = net(xb)
                loss = gaussian_nll(mean.float(), log_var.float(), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                losses.append(float(loss.detach()))
                seen += xb.shape[0]
                if bar is not None:
                    bar.update(xb.shape[0])
                    bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if bar is not None:
            bar.close()
        sched.step()
        m, lv, _ = _predict_raw(net, x_val, device)
        val_loss = float(gaussian_nll(torch.from_numpy(m), torch.from_numpy(lv), torch.from_numpy(y_val)))
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                                 "seconds": time.perf_counter() - t_ep, "lr": sched.get_last_lr()[0]})
        if val_loss < state["best_val"]:
            state.update(best_val=val_loss, best_epoch=epoch + 1, stale=0)
            torch.save(net.state_dict(), best_path)
        else:
            state["stale"] += 1
        say(f"epoch {epoch + 1}: train {np.mean(losses):.4f}  val {val_loss:.4f}  "
            f"({seen / (time.perf_counter() - t_ep):.0f} spectra/s)")
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "state": state, "config_digest": cfg.digest()}, tmp)
        os.replace(tmp, ckpt_path)
        _plot_history(state["history"], out / "loss_curve.png")

    net.load_state_dict(torch.load(best_path, map_location=device))
    net = net.cpu().eval()
    # calibration on the validation set: uncertainty scale per output; novelty statistics from
    # training spectra (fresh noise), its threshold from the validation set (estimating both on the
    # same spectra would make in-sample distances look smaller than new ones)
    m, lv, feats_val = _predict_raw(net, x_val, torch.device("cpu"))
    z = np.abs(m - y_val) / np.exp(0.5 * lv)
    err_scale = np.quantile(z, 0.6827, axis=0)  # makes the 68 % interval hold 68 % of validation spectra
    ref = train_set.subset(np.arange(min(len(train_set), 20000)))
    x_ref, _, _ = make_inputs(ref, np.random.default_rng([cfg.seed, 98]), ts, spec)
    _, _, feats = _predict_raw(net, x_ref, torch.device("cpu"))
    del x_ref
    feat_mean = feats.mean(axis=0)
    cov = np.cov(feats, rowvar=False)
    cov += np.eye(cov.shape[0]) * 1e-3 * np.trace(cov) / cov.shape[0]
    prec = np.linalg.inv(cov)
    d = feats_val - feat_mean
    val_scores = np.sqrt(np.einsum("ij,jk,ik->i", d, prec, d) / d.shape[1])
    ood_threshold = float(np.quantile(val_scores, cfg.ood_quantile))

    exported = ExportedModel(net, names, torch.tensor(label_mean), torch.tensor(label_std),
                             torch.tensor(feat_mean), torch.tensor(prec), torch.tensor(err_scale))
    scripted = torch.jit.script(exported)
    bundle = out / "bundle"
    bundle.mkdir(exist_ok=True)
    model_path = bundle / "model.pt"
    scripted.save(str(model_path))

    from survey_proc._fetch import sha256_of

    manifest = {
        "format": BUNDLE_FORMAT,
        "name": cfg.name,
        "description": cfg.description,
        "estimator": "torchscript",
        "file": "model.pt",
        "sha256": sha256_of(model_path),
        "input": spec.to_manifest(),
        "outputs": {n: {**property_attrs(n), "error": True} for n in names},
        "flags": {"OUT_OF_DISTRIBUTION": {"output": "ood_score", "threshold": ood_threshold,
                                          "meaning": f"feature Mahalanobis score above the {cfg.ood_quantile:.1%} "
                                                     "quantile of validation spectra"}},
        "min_snr": cfg.min_snr,
        "batch_size": 1024,
        "training": {
            "config": asdict(cfg), "config_digest": cfg.digest(),
            "trainset_hash": ts.digest(lib, spec), "ssp_library": lib.provenance.get("source"),
            "n_train": len(train_set), "n_val": len(val_set), "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"], "uncertainty_scale": err_scale.tolist(),
            "parameters": int(sum(p.numel() for p in net.parameters())), "device": str(device),
            "seconds": time.perf_counter() - t0,
        },
        "software": f"survey-proc {__version__}, torch {torch.__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))

    metrics = evaluate_bundle(bundle, test_set, ts, spec, cfg.test_snr, seed=cfg.seed + 7)
    manifest["metrics"] = {"held_out": metrics, "note": (
        f"{cfg.n_test} spectra synthesised with a seed never used in training or validation, "
        "scored with the exported TorchScript file through the engine's preprocessing")}
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
    (out / "metrics.json").write_text(json.dumps({"held_out": metrics, "history": state["history"]}, indent=2))
    say(f"bundle written to {bundle}")
    return bundle


def evaluate_bundle(bundle: Path, test_set: NoiseFreeSet, ts: TrainsetConfig, spec: InputSpec,
                    snrs: tuple[float, ...], seed: int = 0) -> dict[str, Any]:
    """Held-out metrics of an exported bundle at fixed S/N values, through :func:`prepare`."""
    from survey_proc.estimators import load_estimator

    est = load_estimator(bundle)
    names = list(test_set.label_names)
    result: dict[str, Any] = {}
    for snr in snrs:
        x, flags, _ = make_inputs(_with_snr(test_set, snr), np.random.default_rng([seed, int(snr)]), ts, spec)
        fit = (flags & int(NOT_FITTED)) == 0
        pred = est.predict(x[fit])
        truth = {n: test_set.labels[fit, i] for i, n in enumerate(names)}
        result[f"{snr:g}"] = score_predictions(pred, truth, names)
        result[f"{snr:g}"]["n"] = int(fit.sum())
        thr = est.manifest.flag_rules.get("OUT_OF_DISTRIBUTION", {}).get("threshold")
        if thr is not None:
            result[f"{snr:g}"]["ood_flagged_fraction"] = float(np.mean(pred["ood_score"] > thr))
    return result
