"""Network architectures and the TorchScript export wrapper.

Every network maps (n, C, L) model input to ``(mean, log_var, features)``: standardised label
means, their log variances (Gaussian negative-log-likelihood heads, giving per-pixel
uncertainties) and a feature vector used for the out-of-distribution score.
"""

from __future__ import annotations

import torch
from torch import nn


class SpectrumCNN(nn.Module):
    """Compact strided 1-D CNN: fast on CPUs, predicts labels and their uncertainties directly.

    The first convolution strides by ``stem_stride`` so the cost per spectrum stays a few MFLOP;
    later blocks halve the length and widen the channels; a dense layer reads the flattened map
    (keeping where in the spectrum a feature is, which matters for absorption lines).
    """

    def __init__(self, in_channels: int, length: int, n_outputs: int,
                 widths: tuple[int, ...] = (24, 32, 48, 64, 64), kernels: tuple[int, ...] = (8, 5, 5, 5, 3),
                 stem_stride: int = 4, hidden: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, n = in_channels, length
        for i, (width, k) in enumerate(zip(widths, kernels)):
            stride = stem_stride if i == 0 else 2
            layers += [nn.Conv1d(c_in, width, k, stride=stride, padding=k // 2), nn.BatchNorm1d(width), nn.GELU()]
            n = (n + 2 * (k // 2) - k) // stride + 1
            c_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * n, hidden), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, hidden), nn.GELU())
        self.mean = nn.Linear(hidden, n_outputs)
        self.log_var = nn.Linear(hidden, n_outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.head(self.features(x))
        return self.mean(h), self.log_var(h).clamp(-12.0, 6.0), h


ARCHITECTURES = {"cnn": SpectrumCNN}


def build(arch: str, in_channels: int, length: int, n_outputs: int, **kwargs) -> nn.Module:
    """Instantiate an architecture by name."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](in_channels, length, n_outputs, **kwargs)


class ExportedModel(nn.Module):
    """What goes into the TorchScript file: physical units out, uncertainties and a novelty score.

    ``ood_score`` is the Mahalanobis distance of the features from the training features divided
    by sqrt(dim): about 1 for inputs like the training set, large for inputs unlike it.
    """

    def __init__(self, net: nn.Module, names: list[str], label_mean: torch.Tensor, label_std: torch.Tensor,
                 feat_mean: torch.Tensor, feat_prec: torch.Tensor, err_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net = net
        self.names = names
        self.register_buffer("label_mean", label_mean.float())
        self.register_buffer("label_std", label_std.float())
        self.register_buffer("feat_mean", feat_mean.float())
        self.register_buffer("feat_prec", feat_prec.float())
        scale = torch.ones_like(label_std) if err_scale is None else err_scale
        self.register_buffer("err_scale", scale.float())  # calibration of the uncertainties

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mean, log_var, feat = self.net(x)
        value = mean * self.label_std + self.label_mean
        err = torch.exp(0.5 * log_var) * self.label_std * self.err_scale
        d = feat - self.feat_mean
        score = torch.sqrt((d @ self.feat_prec * d).sum(dim=1) / float(d.shape[1]))
        out: dict[str, torch.Tensor] = {"ood_score": score}
        for i, name in enumerate(self.names):
            out[name] = value[:, i]
            out[name + "_err"] = err[:, i]
        return out
