"""Networks of the photometric models and the export wrapper of the image model.

:class:`SEDCNN`, after Liew-Cain et al. (2021): a 1-D CNN over the band fluxes of one pixel.
:class:`ImageUNet`, a PICASSSO-like model after Buck & Wolf (2021): a small U-Net from image tiles
to per-pixel maps; :class:`ExportedImageModel` is what its TorchScript file holds. The SED network
is exported with the spectral wrapper (:class:`~survey_proc.training._arch.ExportedModel`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def _pointwise(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.GELU())


def colour_transform(in_channels: int, n_bands: int, reference: int) -> torch.Tensor:
    """(C, C) fixed linear map of the image inputs ``[asinh flux (n_bands), asinh error (n_bands),
    mask (n_bands), extra...]`` to ``[flux of the reference band, colours against it, error minus
    flux per band (an inverse S/N), mask, extra]``.

    The asinh fluxes of one pixel are large, strongly correlated numbers whose small differences
    (the colours) carry the populations; fed to a network as they are, the colours are hard to fit
    (``benchmarks/pixel_information.py``: a per-pixel MLP on the raw channels 0.33 dex in log Sigma_SFR
    on new galaxies at S/N 30, on these 0.30; log Sigma* 0.064 and 0.056).
    """
    t = torch.eye(in_channels)
    for b in range(n_bands):
        if b != reference:
            t[b, reference] = -1.0
        t[n_bands + b, b] = -1.0
    return t


class ImageUNet(nn.Module):
    """Two-level U-Net: per-pixel (mean, log variance) of each output and a feature map.

    Sizes must be multiples of :attr:`multiple` (the export wrapper pads at the bottom/right).
    ``colour_band`` (an index into the ``n_bands`` bands): the inputs go through
    :func:`colour_transform` first.
    """

    multiple = 4

    def __init__(
        self,
        in_channels: int,
        n_outputs: int,
        widths: tuple[int, ...] = (16, 32, 64),
        pixel_width: int = 0,
        n_bands: int = 0,
        colour_band: int = -1,
    ) -> None:
        super().__init__()
        self.has_colour = colour_band >= 0
        t = colour_transform(in_channels, n_bands, colour_band) if self.has_colour else torch.eye(1)
        self.register_buffer("transform", t[:, :, None, None])
        w0, w1, w2 = widths
        self.enc0, self.enc1, self.mid = _block(in_channels, w0), _block(w0, w1), _block(w1, w2)
        self.up1 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = _block(2 * w1, w1)
        self.up0 = nn.ConvTranspose2d(w1, w0, 2, stride=2)
        self.dec0 = _block(2 * w0, w0)
        # the per-pixel branch: a pixel's own band fluxes through a small MLP (1x1 convolutions), joined
        # with the U-Net's context by one more: colours -> mass-to-light is a non-linear map the 16
        # full-resolution channels alone fit poorly (benchmarks/pixel_information.py: a per-pixel MLP
        # 0.066 dex in log Sigma* where the U-Net without the branch gave 0.111; with it, 0.093)
        self.has_pixel = pixel_width > 0
        self.pixel, self.join = nn.Identity(), nn.Identity()
        if self.has_pixel:
            self.pixel = nn.Sequential(_pointwise(in_channels, pixel_width), _pointwise(pixel_width, pixel_width))
            self.join = _pointwise(w0 + pixel_width, pixel_width)
        self.out = nn.Conv2d(pixel_width if self.has_pixel else w0, 2 * n_outputs, 1)
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.has_colour:
            x = F.conv2d(x, self.transform)
        e0 = self.enc0(x)
        e1 = self.enc1(F.max_pool2d(e0, 2))
        m = self.mid(F.max_pool2d(e1, 2))
        d1 = self.dec1(torch.cat([self.up1(m), e1], dim=1))
        d0 = self.dec0(torch.cat([self.up0(d1), e0], dim=1))
        if self.has_pixel:
            d0 = self.join(torch.cat([d0, self.pixel(x)], dim=1))
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
    its ``_err``, a per-pixel ``ood_score`` and the ``probabilities`` (sigmoids of the channels after the
    labels', no error); pads to the U-Net's multiple and crops back."""

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
        probabilities: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.names = names
        self.n_values = len(names)
        # one list, never empty (TorchScript cannot type an empty one): the labels, then the probabilities
        self.channels = list(names) + list(probabilities or [])
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
        k = self.n_values
        value = mean[:, :k, :h, :w] * self.label_std + self.label_mean
        err = torch.exp(0.5 * log_var[:, :k, :h, :w]) * self.label_std * self.err_scale
        f = feat[:, :, :h, :w].permute(0, 2, 3, 1).reshape(-1, feat.shape[1])
        d = f - self.feat_mean
        out: dict[str, torch.Tensor] = {
            "ood_score": torch.sqrt((d @ self.feat_prec * d).sum(dim=1) / float(d.shape[1]))
        }
        for i, name in enumerate(self.names):
            out[name] = value[:, i].reshape(-1)
            out[name + "_err"] = err[:, i].reshape(-1)
        for j in range(k, len(self.channels)):  # logistic outputs after the labels
            out[self.channels[j]] = torch.sigmoid(mean[:, j, :h, :w]).reshape(-1)
        return out
