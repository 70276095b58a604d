"""The epoch loop every trainer shares (survey_proc.training.fit): early stopping, checkpoints, resume."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from survey_proc.errors import ModelError
from survey_proc.training import EpochRecord, FitOptions, FitState, fit, load_checkpoint


class _Line(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


class _Regression:
    """y = 2x + 1 with noise: an objective whose validation loss falls while the line is fitted."""

    samples_per_epoch = 64

    def __init__(self, val_losses: list[float] | None = None) -> None:
        self.val_losses = val_losses  # fixed validation losses, for early stopping
        self.epochs_seen: list[int] = []

    def batches(self, epoch: int):
        self.epochs_seen.append(epoch)
        rng = np.random.default_rng([0, epoch])
        x = rng.uniform(-1, 1, (64, 1)).astype(np.float32)
        y = (2 * x + 1 + rng.normal(0, 0.01, x.shape)).astype(np.float32)
        for s in range(0, 64, 16):
            yield x[s : s + 16], y[s : s + 16]

    def loss(self, net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return ((net(xb) - yb) ** 2).mean()

    def val_loss(self, net: nn.Module) -> float:
        if self.val_losses is not None:
            return self.val_losses[len(self.epochs_seen) - 1]
        net.eval()
        x = torch.linspace(-1, 1, 32)[:, None]
        with torch.inference_mode():
            return float(((net(x) - (2 * x + 1)) ** 2).mean())


def _options(epochs: int = 4, patience: int = 10, digest: str = "abc") -> FitOptions:
    return FitOptions(epochs=epochs, lr=0.05, weight_decay=0.0, patience=patience, digest=digest)


def test_fit_trains_checkpoints_and_keeps_the_best_epoch(tmp_path):
    torch.manual_seed(0)
    net = _Line()
    state = fit(net, _Regression(), _options(), tmp_path, torch.device("cpu"))
    assert state.epoch == 4 and len(state.history) == 4 and all(isinstance(h, EpochRecord) for h in state.history)
    assert state.history[-1].val_loss < state.history[0].val_loss
    assert state.best_val == min(h.val_loss for h in state.history)
    assert (tmp_path / "loss_curve.png").exists() and not (tmp_path / "checkpoint.tmp").exists()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["config_digest"] == "abc"
    assert FitState.from_dict(ckpt["state"]) == state  # plain values, read back into the same record
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(best[k], v) for k, v in net.state_dict().items())  # the best weights are left in net


def test_a_rerun_resumes_its_own_checkpoint_and_ignores_another_configurations(tmp_path, caplog):
    fit(_Line(), _Regression(), _options(epochs=2), tmp_path, torch.device("cpu"))
    again = _Regression()
    caplog.set_level(logging.INFO, logger="survey_proc.training")
    state = fit(_Line(), again, _options(epochs=2), tmp_path, torch.device("cpu"))
    assert again.epochs_seen == [] and state.epoch == 2  # finished: nothing more to train
    assert "resuming from" in caplog.text
    other = _Regression()
    state = fit(_Line(), other, _options(epochs=2, digest="other"), tmp_path, torch.device("cpu"))
    assert other.epochs_seen == [0, 1] and state.epoch == 2
    assert "belongs to another configuration; starting afresh" in caplog.text


def test_fit_stops_after_patience_epochs_without_improvement(tmp_path):
    objective = _Regression(val_losses=[1.0, 0.5, 0.6, 0.7, 0.8, 0.4])
    state = fit(_Line(), objective, _options(epochs=6, patience=2), tmp_path, torch.device("cpu"))
    assert objective.epochs_seen == [0, 1, 2, 3] and state.best_epoch == 2 and state.stale == 2


class _Payload:
    """A pickled object that would run code when unpickled (here: create a file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "ran"
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "state": _Payload(str(marker)), "config_digest": "abc"}, ckpt)
    with pytest.raises(ModelError, match="pickled object"):
        load_checkpoint(ckpt)
    with pytest.raises(ModelError, match=r"checkpoint.pt holds more than tensors"):
        fit(_Line(), _Regression(), _options(), tmp_path, torch.device("cpu"))
    assert not marker.exists()  # refused before anything ran
