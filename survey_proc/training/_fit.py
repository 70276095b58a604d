"""The epoch loop every trainer shares: optimiser, schedule, early stopping, checkpoints and resume.

A trainer hands :func:`fit` an :class:`Objective` (its batches, its loss, its validation loss);
``fit`` trains with AdamW on a cosine schedule, keeps the weights of the best validation epoch
(``best.pt``), stops after ``patience`` epochs without improvement, and writes a checkpoint after
every epoch, so a rerun of the same configuration resumes where the last one stopped.

Checkpoints hold tensors and plain values only and are read with ``weights_only=True``: a file
that holds a pickled object (which could run code when read) is refused.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from survey_proc import progress
from survey_proc.cluster import tune_heap
from survey_proc.errors import ModelError
from survey_proc.figures import save_figure
from survey_proc.training._calibration import Calibration

log = logging.getLogger(__name__)

#: file names in a run folder
CHECKPOINT, BEST_WEIGHTS, LOSS_CURVE = "checkpoint.pt", "best.pt", "loss_curve.png"


@dataclass
class EpochRecord:
    """One line of the training history (``metrics.json``, the checkpoint, photometric manifests)."""

    epoch: int
    train_loss: float
    val_loss: float
    seconds: float
    lr: float


@dataclass
class FitState:
    """Where the loop stands: the epochs done, the best validation loss and its epoch, the epochs
    since it last improved (``stale``) and the history. Checkpointed as plain values."""

    epoch: int = 0
    best_val: float = float("inf")
    best_epoch: int = -1
    history: list[EpochRecord] = field(default_factory=list)
    stale: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FitState:
        return cls(**{**raw, "history": [EpochRecord(**h) for h in raw.get("history", [])]})


@dataclass(frozen=True)
class FitOptions:
    """What the loop needs of a training config."""

    epochs: int
    lr: float
    weight_decay: float
    patience: int
    digest: str  #: the configuration's digest: a checkpoint of another one is not resumed
    unit: str = "samples"  #: what a training sample is, for the progress bar and the log

    @classmethod
    def of(cls, cfg: Any, unit: str) -> FitOptions:
        """From a :class:`TrainConfig` or :class:`PhotTrainConfig`."""
        return cls(cfg.epochs, cfg.lr, cfg.weight_decay, cfg.patience, cfg.digest(), unit)


class Objective(Protocol):
    """What a trainer gives the loop: an epoch's batches, the loss of one, the validation loss."""

    #: training samples per epoch (the progress bar's total; None: unknown)
    samples_per_epoch: int | None

    def batches(self, epoch: int) -> Iterable[tuple[np.ndarray, ...]]:
        """The batches of ``epoch`` (fresh noise, shuffled), each a tuple of arrays, samples first."""

    def loss(self, net: nn.Module, *batch: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (its arrays as tensors on the device)."""

    def val_loss(self, net: nn.Module) -> float:
        """The validation loss of ``net`` (which it puts in eval mode)."""


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA if present (or requested), else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def start_run(out_dir: str | os.PathLike, device: str, threads: int | None, seed: int) -> tuple[Path, torch.device]:
    """The run folder (created), the device, torch's CPU threads and seed: how every training run starts.

    The process keeps its freed heap between batches (``tune_heap``: ~13 % faster CPU training steps).
    """
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


def optimiser_step(net: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One update of ``net``: gradients of ``loss``, their norm clipped at 5, the optimiser's step;
    returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    opt.step()
    return float(loss.detach())


def fit(net: nn.Module, objective: Objective, options: FitOptions, out: Path, device: torch.device) -> FitState:
    """Train ``net`` until ``options.epochs`` or early stopping (resuming from ``out``'s checkpoint of
    this configuration); leaves the best epoch's weights in ``net`` and returns the state."""
    opt = torch.optim.AdamW(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=options.epochs)
    state = resume(out / CHECKPOINT, net, opt, sched, options.digest, device)
    while state.epoch < options.epochs and state.stale < options.patience:
        started = time.perf_counter()
        train_loss, seen = _train_epoch(net, opt, objective, state.epoch, options, device)
        sched.step()
        val_loss = objective.val_loss(net)
        record = EpochRecord(
            state.epoch + 1, train_loss, val_loss, time.perf_counter() - started, sched.get_last_lr()[0]
        )
        _end_epoch(state, record, net, out)
        log.info(
            f"epoch {record.epoch}/{options.epochs}: train {train_loss:.4f}  val {val_loss:.4f}  "
            f"({seen / record.seconds:.0f} {options.unit}/s)"
        )
        save_checkpoint(out / CHECKPOINT, net, opt, sched, state, options.digest)
        plot_history(state.history, out / LOSS_CURVE)
    net.load_state_dict(torch.load(out / BEST_WEIGHTS, map_location=device, weights_only=True))
    return state


def _train_epoch(
    net: nn.Module, opt: torch.optim.Optimizer, objective: Objective, epoch: int, options: FitOptions, device
) -> tuple[float, int]:
    """One pass over the objective's batches: (mean training loss, samples seen)."""
    net.train()
    losses, seen = [], 0
    desc = f"epoch {epoch + 1}/{options.epochs}"
    with progress.bar(objective.samples_per_epoch, desc, unit=options.unit, leave=False) as advance:
        for batch in objective.batches(epoch):
            tensors = [torch.from_numpy(a).to(device, non_blocking=True) for a in batch]
            losses.append(optimiser_step(net, opt, objective.loss(net, *tensors)))
            seen += batch[0].shape[0]
            advance(batch[0].shape[0])
    return float(np.mean(losses)), seen


def _end_epoch(state: FitState, record: EpochRecord, net: nn.Module, out: Path) -> None:
    """Account for a finished epoch: history, best weights (``best.pt``), early-stopping count."""
    state.epoch = record.epoch
    state.history.append(record)
    if record.val_loss < state.best_val:
        state.best_val, state.best_epoch, state.stale = record.val_loss, record.epoch, 0
        torch.save(net.state_dict(), out / BEST_WEIGHTS)
    else:
        state.stale += 1


def save_checkpoint(path: Path, net: nn.Module, opt, sched, state: FitState, digest: str) -> None:
    """Weights, optimiser, schedule and loop state, all tensors and plain values (written atomically)."""
    tmp = path.with_suffix(".tmp")
    checkpoint = {
        "model": net.state_dict(),
        "opt": opt.state_dict(),
        "sched": sched.state_dict(),
        "state": state.to_dict(),
        "config_digest": digest,
    }
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, read with ``weights_only=True``; a file holding anything but tensors
    and plain values (a pickled object could run code as it is read) is refused with a ``ModelError``."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"{path} holds more than tensors and plain values (a pickled object, which could run code "
            "when read), so it is not loaded; delete it to train afresh"
        ) from exc


def resume(path: Path, net: nn.Module, opt, sched, digest: str, device: torch.device) -> FitState:
    """The loop state: fresh, or from the checkpoint at ``path`` (weights, optimiser, schedule
    restored in place) when it was written for the configuration of this ``digest``."""
    if not path.exists():
        return FitState()
    ckpt = load_checkpoint(path, device)
    if ckpt.get("config_digest") != digest:
        log.info(f"{path} belongs to another configuration; starting afresh")
        return FitState()
    net.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    state = FitState.from_dict(ckpt["state"])
    log.info(f"resuming from {path} after epoch {state.epoch}")
    return state


def plot_history(history: list[EpochRecord], path: Path) -> None:
    """The loss curve: training (fresh noise each epoch) and validation loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [h.epoch for h in history]
    ax.plot(ep, [h.train_loss for h in history], label="training (fresh noise each epoch)")
    ax.plot(ep, [h.val_loss for h in history], label="validation (the same objective)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    save_figure(fig, path, dpi=100)


class Trainer(ABC):
    """A training run in steps that :meth:`run` takes in order:

    1. :meth:`data`: the training and validation data (and whatever the network's shape needs);
    2. :meth:`network`: the network, on the device;
    3. fit: the shared epoch loop (:func:`fit`) on this trainer's objective (:meth:`batches`,
       :meth:`loss`, :meth:`val_loss`: a trainer is an :class:`Objective`), resumable;
    4. :meth:`calibrate`: uncertainty scale and novelty statistics on validation data;
    5. :meth:`export`: the TorchScript file and its manifest in ``out/bundle``;
    6. :meth:`evaluate`: held-out metrics of the exported file, added to the manifest, and
       ``metrics.json`` (:meth:`metrics_record`).

    ``cfg`` is a training config with ``device``, ``threads``, ``seed`` and the fields of :class:`FitOptions`.
    """

    #: what one training sample is (progress bar, log)
    unit = "samples"

    def __init__(self, cfg: Any, out_dir: str | os.PathLike) -> None:
        self.cfg = cfg
        self.out, self.device = start_run(out_dir, cfg.device, cfg.threads, cfg.seed)
        self.started = time.perf_counter()

    @property
    def samples_per_epoch(self) -> int | None:
        return None

    def run(self) -> Path:
        """Train, calibrate, export and evaluate; returns the bundle folder."""
        self.data()
        net = self.network()
        state = fit(net, self, FitOptions.of(self.cfg, self.unit), self.out, self.device)
        net = net.cpu().eval()
        bundle = self.export(net, self.calibrate(net), state)
        metrics = self.evaluate(bundle)
        (self.out / "metrics.json").write_text(json.dumps(self.metrics_record(metrics, state), indent=2, default=float))
        log.info(f"bundle written to {bundle} in {time.perf_counter() - self.started:.0f} s")
        return bundle

    def metrics_record(self, metrics: dict[str, Any], state: FitState) -> dict[str, Any]:
        """The contents of ``metrics.json``."""
        return {"held_out": metrics}

    @abstractmethod
    def data(self) -> None: ...

    @abstractmethod
    def network(self) -> nn.Module: ...

    @abstractmethod
    def batches(self, epoch: int) -> Iterable[tuple[np.ndarray, ...]]: ...

    @abstractmethod
    def loss(self, net: nn.Module, *batch: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def val_loss(self, net: nn.Module) -> float: ...

    @abstractmethod
    def calibrate(self, net: nn.Module) -> Calibration: ...

    @abstractmethod
    def export(self, net: nn.Module, calibration: Calibration, state: FitState) -> Path: ...

    @abstractmethod
    def evaluate(self, bundle: Path) -> dict[str, Any]: ...
