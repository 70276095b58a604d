"""The training loop, calibration, out-of-distribution statistics and bundle export.

``survey-proc train CONFIG`` runs :func:`train`: synthesise (or stream from a Zarr store) noise-free
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
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dask.config
import numpy as np
import torch

from survey_proc.config import dataclass_options, read_yaml
from survey_proc.estimators import BUNDLE_FORMAT, MANIFEST_NAME
from survey_proc.figures import save_figure
from survey_proc.preprocess import InputSpec
from survey_proc.ssp import SSPLibrary, load_ssp_library, to_medium
from survey_proc.stores import NOT_FITTED, property_attrs
from survey_proc.synth import Synthesiser
from survey_proc.training._arch import ExportedModel, Reconstructor, build, reduced_chi2
from survey_proc.training._dataset import TrainsetConfig, instrument_of, make_inputs, synthesise
from survey_proc.training._edges import fit_edge_table, noise_level
from survey_proc.training._evaluate import evaluate
from survey_proc.training._inputs import input_preset
from survey_proc.training._store import write_trainset


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
    min_snr: float = 5.0
    ood_quantile: float = 0.995
    chunk: int = 8192
    edge_correction: bool = True  #: de-shrink log_age and [M/H] at the grid edges (training._edges)
    n_calib: int = 40000  #: calibration spectra (own seeds) the edge tables are fitted on
    edge_min_snr: float = 20.0  #: S/N per Angstrom below which the edge correction fades out

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
        if identity.get("init_from") is None:  # runs from before the option keep their digest
            identity.pop("init_from", None)
        identity["trainset"] = self.trainset.identity()
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def predicts_weights(self) -> bool:
        return self.weight_loss > 0 or self.recon_loss > 0 or self.reconstruct


#: options used only after the training loop (calibration, export)
_AFTER_TRAINING = ("edge_correction", "n_calib", "edge_min_snr")


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA if present (or requested), else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def start_run(out_dir: str | os.PathLike, device: str, threads: int | None, seed: int) -> tuple[Path, torch.device]:
    """The run folder (created), the device, torch's CPU threads and seed: how every training run starts.

    The process keeps its freed heap between batches (``tune_heap``: ~13 % faster CPU training steps).
    """
    from survey_proc.cluster import tune_heap

    tune_heap()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return out, pick_device(device)


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood (constant dropped), per output summed."""
    return (0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var))).sum(dim=1).mean()


def grid_cross_entropy(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicted light fractions against the true ones, (n, ngrid)."""
    return -(true * torch.log(pred + 1e-8)).sum(dim=1).mean()


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


def _predict_raw(
    net: torch.nn.Module, x: np.ndarray, device: torch.device, batch: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    net.eval()
    means, logvars, feats = [], [], []
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch):
            m, lv, f, _ = net(torch.from_numpy(x[s : s + batch]).to(device))
            means.append(m.float().cpu().numpy())
            logvars.append(lv.float().cpu().numpy())
            feats.append(f.float().cpu().numpy())
    return np.concatenate(means), np.concatenate(logvars), np.concatenate(feats)


def _plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], label="training (fresh noise each epoch)")
    ax.plot(ep, [h["val_loss"] for h in history], label="validation (label NLL)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    save_figure(fig, path, dpi=100)


def _load_sets(cfg: TrainConfig, lib: SSPLibrary, spec: InputSpec, out: Path):
    ts = cfg.trainset
    if cfg.trainset_store:
        store = Path(cfg.trainset_store)
        store = store if store.is_absolute() else out / store  # relative paths live in the run folder
        train_set = write_trainset(ts, lib, spec, store)
        import psutil

        if train_set.nbytes < 0.3 * psutil.virtual_memory().available:
            train_set = train_set.load()  # fits in memory: read once instead of every epoch
    else:
        train_set = synthesise(ts, lib, spec)
    val_set = synthesise(dataclasses.replace(ts, n=cfg.n_val, seed=ts.seed + 1_000_003), lib, spec)
    return train_set, val_set


def _novelty_statistics(net, train_set, val_feats: np.ndarray, cfg: TrainConfig, spec: InputSpec):
    """Feature mean and precision from training spectra (fresh noise); threshold from validation.

    Estimating both on the same spectra would make in-sample distances look smaller than new ones.
    """
    ref = train_set.subset(np.arange(min(len(train_set), 20000)))
    x_ref, _, _ = make_inputs(ref, np.random.default_rng([cfg.seed, 98]), cfg.trainset, spec)
    _, _, feats = _predict_raw(net, x_ref, torch.device("cpu"))
    return novelty_stats(feats, val_feats, cfg.ood_quantile)


def novelty_stats(
    feats_ref: np.ndarray, feats_val: np.ndarray, quantile: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """(feature mean, precision, threshold): the mean and (lightly regularised) precision of the
    reference features, and the ``quantile`` of the validation features' Mahalanobis score / sqrt(dim)."""
    feat_mean = feats_ref.mean(axis=0)
    cov = np.cov(feats_ref, rowvar=False)
    cov += np.eye(cov.shape[0]) * 1e-3 * np.trace(cov) / cov.shape[0]
    prec = np.linalg.inv(cov)
    d = feats_val - feat_mean
    scores = np.sqrt(np.einsum("ij,jk,ik->i", d, prec, d) / d.shape[1])
    return feat_mean, prec, float(np.quantile(scores, quantile))


_EDGE_NOTE = (
    "median prediction (table[i][j]) of true value true[j] at noise level noise[i] (1 / median S/N "
    "per pixel of the model input), from "
    "calibration spectra of their own seed; outputs are this curve inverted (survey_proc.training._edges)"
)


def _fit_edge_tables(exported: ExportedModel, cfg: TrainConfig, lib: SSPLibrary, spec: InputSpec) -> dict:
    """Edge tables for log_age and metallicity from ``cfg.n_calib`` spectra of seeds of their own (not
    training, validation or held-out): half 1-3 SSP mixtures, half continuous SFHs (the populations
    the held-out scores are about), noised like the training set at S/N 5-80."""
    from survey_proc.training._evaluate import FAMILIES, heldout_config

    grid = {"log_age": (lib.log_age[0], lib.log_age[-1]), "metallicity": (lib.metal[0], lib.metal[-1])}
    names = [n for n in exported.names if n in grid]
    if not names or "error" not in spec.channels:  # (the noise level is measured from the error channel)
        return {}
    preds: dict[str, list] = {}
    for k, family in enumerate(FAMILIES):
        # S/N over the training range; no noiseless spectra (they would fill the smallest-noise bin)
        ts = dataclasses.replace(
            heldout_config(cfg.trainset, family, cfg.n_calib // len(FAMILIES), cfg.trainset.seed + 1_500_007 + k),
            noiseless_fraction=0.0,
        )
        calib = synthesise(ts, lib, spec)
        x, flags, snr = make_inputs(calib, np.random.default_rng([cfg.seed, 97, k]), ts, spec)
        fitted = (flags & int(NOT_FITTED)) == 0  # spectra the engine would not fit do not calibrate
        xt = torch.from_numpy(x[fitted])
        with torch.inference_mode():
            outs = [exported(xt[s : s + 2048]) for s in range(0, xt.shape[0], 2048)]
            noise = noise_level(xt, *exported_noise_channels(spec)).numpy()
        for n in names:
            true = calib.labels[fitted, list(calib.label_names).index(n)]
            preds.setdefault(n, []).append(
                (
                    torch.cat([o[n] for o in outs]).numpy(),
                    true,
                    noise,
                    snr[fitted],
                    torch.cat([o[n + "_err"] for o in outs]).numpy(),
                )
            )
    # (pred, true, noise, snr, err) per family -> pooled arrays
    tables = {}
    for n, parts in preds.items():
        pred, true, noise, snr, err = (np.concatenate(col) for col in zip(*parts))
        tables[n] = fit_edge_table(pred, true, noise, *grid[n], snr=snr, min_snr=cfg.edge_min_snr, err=err)
    return tables


def exported_noise_channels(spec: InputSpec) -> tuple[int, int, int]:
    """(flux, error, mask) channel indices of a model input (-1: no mask channel)."""
    ch = list(spec.channels)
    return ch.index("flux"), ch.index("error"), ch.index("mask") if "mask" in ch else -1


def optimiser_step(net: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One update of ``net``: gradients of ``loss``, their norm clipped at 5, the optimiser's step;
    returns the loss value (both training loops, spectral and photometric, step through here)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    opt.step()
    return float(loss.detach())


def resume_state(
    ckpt_path: Path, net: torch.nn.Module, opt, sched, digest: str, device: torch.device, say: Callable[..., None]
) -> dict:
    """The loop state: fresh, or from ``ckpt_path`` (weights, optimiser, schedule restored in place)
    when that checkpoint was written for the configuration of this ``digest``."""
    state = {"epoch": 0, "best_val": float("inf"), "best_epoch": -1, "history": [], "stale": 0}
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt.get("config_digest") == digest:
            net.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
            state = ckpt["state"]
            say(f"resuming from {ckpt_path} after epoch {state['epoch']}")
        else:
            say(f"{ckpt_path} belongs to another configuration; starting afresh")
    return state


def end_epoch(
    state: dict,
    label: str,
    train_loss: float,
    val_loss: float,
    seconds: float,
    samples: int,
    unit: str,
    net: torch.nn.Module,
    opt,
    sched,
    digest: str,
    out: Path,
    say: Callable[..., None],
) -> None:
    """After an epoch of ``samples`` in ``seconds`` (``sched`` already stepped): history, best weights
    (``out/best.pt``), early-stopping count, a log line, the checkpoint (written atomically), loss curve."""
    epoch = state["epoch"] + 1
    state["epoch"] = epoch
    state["history"].append(
        {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "seconds": seconds,
            "lr": sched.get_last_lr()[0],
        }
    )
    if val_loss < state["best_val"]:
        state.update(best_val=val_loss, best_epoch=epoch, stale=0)
        torch.save(net.state_dict(), out / "best.pt")
    else:
        state["stale"] += 1
    say(f"{label}: train {train_loss:.4f}  val {val_loss:.4f}  ({samples / seconds:.0f} {unit})")
    ckpt_path = out / "checkpoint.pt"
    tmp = ckpt_path.with_suffix(".tmp")
    torch.save(
        {
            "model": net.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "state": state,
            "config_digest": digest,
        },
        tmp,
    )
    os.replace(tmp, ckpt_path)
    _plot_history(state["history"], out / "loss_curve.png")


def initial_weights(net: torch.nn.Module, source: str) -> list[str]:
    """Copy into ``net`` the tensors of a bundle's network (name or path) whose names and shapes
    match (e.g. the convolutions of a model trained on a shorter wavelength range); their names."""
    from survey_proc.estimators import load_manifest

    theirs = torch.jit.load(str(load_manifest(source).file), map_location="cpu").net.state_dict()
    ours = net.state_dict()
    loaded = [k for k, v in theirs.items() if k in ours and ours[k].shape == v.shape]
    if not loaded:
        raise ValueError(f"init_from {source}: no tensor of its network matches this architecture")
    net.load_state_dict({**ours, **{k: theirs[k].to(ours[k].device) for k in loaded}})
    return loaded


def train(cfg: TrainConfig, out_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Train, calibrate and export a bundle into ``out_dir/bundle``; returns the bundle path.

    ``out_dir`` also receives ``checkpoint.pt`` (resume), ``metrics.json``, ``loss_curve.png`` and
    ``heldout_predicted_vs_true.png``.
    """
    out, device = start_run(out_dir, cfg.device, cfg.threads, cfg.seed)
    lib = load_ssp_library()
    spec = input_preset(cfg.input)
    say = print if progress else (lambda *a, **k: None)

    t0 = time.perf_counter()
    ts = cfg.trainset
    train_set, val_set = _load_sets(cfg, lib, spec, out)
    say(f"{len(train_set)} training and {len(val_set)} validation spectra ready in {time.perf_counter() - t0:.0f} s")

    names = list(ts.labels)
    label_mean = train_set.labels.mean(axis=0)
    label_std = train_set.labels.std(axis=0) + 1e-6
    y_train = ((train_set.labels - label_mean) / label_std).astype(np.float32)
    x_val, _, _ = make_inputs(val_set, np.random.default_rng([cfg.seed, 99]), ts, spec)
    y_val = ((val_set.labels - label_mean) / label_std).astype(np.float32)
    mean_t, std_t = torch.tensor(label_mean, device=device), torch.tensor(label_std, device=device)

    n_grid = lib.metal.size * lib.log_age.size if cfg.predicts_weights else 0
    net = build(cfg.arch, len(spec.channels), spec.wave.size, len(names), n_weights=n_grid, **cfg.arch_kwargs).to(
        device
    )
    recon = make_reconstructor(lib, spec, ts).to(device) if (cfg.recon_loss > 0 or cfg.reconstruct) else None
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    amp = device.type == "cuda"
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    if cfg.init_from:  # a checkpoint of this run, if any, overwrites them in resume_state
        loaded = initial_weights(net, cfg.init_from)
        say(f"initial weights from {cfg.init_from}: {len(loaded)} tensors ({', '.join(loaded[:4])}, ...)")
    state = resume_state(ckpt_path, net, opt, sched, cfg.digest(), device, say)

    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"]
        net.train()
        losses, seen = [], 0
        t_ep = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(train_set), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="spec", leave=False)
        for xc, yc, wc in _Epochs(train_set, cfg, spec, y_train, epoch):
            for s in range(0, xc.shape[0], cfg.batch_size):
                xb = torch.from_numpy(xc[s : s + cfg.batch_size]).to(device, non_blocking=True)
                yb = torch.from_numpy(yc[s : s + cfg.batch_size]).to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    mean, log_var, _, weights = net(xb)
                mean, log_var, weights = mean.float(), log_var.float(), weights.float()
                loss = gaussian_nll(mean, log_var, yb)
                if cfg.weight_loss > 0:
                    wb = torch.from_numpy(wc[s : s + cfg.batch_size]).to(device, non_blocking=True)
                    loss = loss + cfg.weight_loss * grid_cross_entropy(weights, wb)
                if cfg.recon_loss > 0 and recon is not None:
                    model = recon(
                        weights,
                        _physical(mean, names, mean_t, std_t, "av", 0.0, 0.0),
                        _physical(mean, names, mean_t, std_t, "velocity", 0.0, -1e4),
                        _physical(mean, names, mean_t, std_t, "sigma", 100.0, 1.0),
                    )
                    chi2, _ = reduced_chi2(xb, model)
                    loss = loss + cfg.recon_loss * torch.log1p(chi2).mean()
                losses.append(optimiser_step(net, opt, loss))
                seen += xb.shape[0]
                if bar is not None:
                    bar.update(xb.shape[0])
                    bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if bar is not None:
            bar.close()
        sched.step()
        m, lv, _ = _predict_raw(net, x_val, device)
        val_loss = float(gaussian_nll(torch.from_numpy(m), torch.from_numpy(lv), torch.from_numpy(y_val)))
        end_epoch(
            state,
            f"epoch {epoch + 1}",
            float(np.mean(losses)),
            val_loss,
            time.perf_counter() - t_ep,
            seen,
            "spectra/s",
            net,
            opt,
            sched,
            cfg.digest(),
            out,
            say,
        )

    net.load_state_dict(torch.load(best_path, map_location=device))
    net = net.cpu().eval()
    recon = recon.cpu() if recon is not None else None
    # uncertainty calibration on the validation set: the 68 % interval holds 68 % of its spectra
    m, lv, feats_val = _predict_raw(net, x_val, torch.device("cpu"))
    err_scale = np.quantile(np.abs(m - y_val) / np.exp(0.5 * lv), 0.6827, axis=0)
    feat_mean, prec, ood_threshold = _novelty_statistics(net, train_set, feats_val, cfg, spec)
    exported = ExportedModel(
        net,
        names,
        torch.tensor(label_mean),
        torch.tensor(label_std),
        torch.tensor(feat_mean),
        torch.tensor(prec),
        torch.tensor(err_scale),
        recon if cfg.reconstruct else None,
        (lib.metal.size, lib.log_age.size),
        noise_channels=exported_noise_channels(spec) if "error" in spec.channels else (0, 0, -1),
    )
    edge_tables = _fit_edge_tables(exported, cfg, lib, spec) if cfg.edge_correction else {}
    exported.set_edge_tables(edge_tables)
    rules: list[dict] = [
        {
            "output": "ood_score",
            "threshold": ood_threshold,
            "meaning": f"feature Mahalanobis score above the {cfg.ood_quantile:.1%} quantile of validation spectra",
        }
    ]
    outputs = {n: {**property_attrs(n), "error": True} for n in names}
    if cfg.reconstruct:
        with torch.inference_mode():
            chi2_val = np.concatenate(
                [
                    exported(torch.from_numpy(x_val[s : s + 2048]))["chi2"].numpy()
                    for s in range(0, x_val.shape[0], 2048)
                ]
            )
        rules.append(
            {
                "output": "chi2",
                "threshold": float(np.quantile(chi2_val, cfg.ood_quantile)),
                "meaning": f"reduced chi2 of the rebuilt spectrum above the {cfg.ood_quantile:.1%} quantile "
                "of validation spectra",
            }
        )
        outputs["weights"] = {
            **property_attrs("weights"),
            "dims": ["age", "metal"],
            "coords": {"age": lib.log_age.tolist(), "metal": lib.metal.tolist()},
        }
        outputs["chi2"] = property_attrs("chi2")
    bundle = _export(
        exported,
        out,
        cfg,
        spec,
        lib,
        outputs,
        rules,
        {
            "config": asdict(cfg),
            "config_digest": cfg.digest(),
            "trainset_hash": ts.digest(lib, spec),
            "ssp_library": lib.provenance.get("source"),
            "n_train": len(train_set),
            "n_val": len(val_set),
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "uncertainty_scale": err_scale.tolist(),
            "edge_correction": {"note": _EDGE_NOTE, **{n: t.to_manifest() for n, t in edge_tables.items()}}
            if edge_tables
            else None,
            "parameters": int(sum(p.numel() for p in net.parameters())),
            "device": str(device),
            "seconds": time.perf_counter() - t0,  # this invocation (a resumed run: calibration and export only)
            "epoch_seconds": float(sum(h["seconds"] for h in state["history"])),
        },
    )

    with dask.config.set({"survey-proc.run.cpu-precision": "float32"}):  # the reference numbers
        metrics = evaluate(
            str(bundle),
            snrs=cfg.test_snr,
            n=cfg.n_test,
            seed=ts.seed + 2_000_003,
            lib=lib,
            png=out / "heldout_predicted_vs_true.png",
        )
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["metrics"] = {
        "held_out": metrics,
        "note": (
            f"{cfg.n_test} spectra per family (1-3 SSP mixtures; continuous SFHs) synthesised with a seed never "
            "used in training or validation, scored with the exported TorchScript file through the engine's "
            "preprocessing, in float32 (`survey-proc evaluate` scores the precision a run would use)"
        ),
    }
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=float))
    (out / "metrics.json").write_text(
        json.dumps({"held_out": metrics, "history": state["history"]}, indent=2, default=float)
    )
    say(f"bundle written to {bundle}")
    return bundle


def _export(
    exported: ExportedModel,
    out: Path,
    cfg: TrainConfig,
    spec: InputSpec,
    lib: SSPLibrary,
    outputs: dict,
    rules: list[dict],
    training: dict,
) -> Path:
    """Script the model, write model.pt and its manifest into ``out/bundle``."""
    from survey_proc import __version__
    from survey_proc.fetch import sha256_of

    bundle = out / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    model_path = bundle / "model.pt"
    torch.jit.script(exported).save(str(model_path))
    manifest = {
        "format": BUNDLE_FORMAT,
        "name": cfg.name,
        "description": cfg.description,
        "estimator": "torchscript",
        "file": "model.pt",
        "sha256": sha256_of(model_path),
        "input": spec.to_manifest(),
        "outputs": outputs,
        "flags": {"OUT_OF_DISTRIBUTION": rules},
        "min_snr": cfg.min_snr,
        "batch_size": 1024,
        "training": training,
        "software": f"survey-proc {__version__}, torch {torch.__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
    return bundle
