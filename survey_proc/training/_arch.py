"""Network architectures, the spectrum reconstructor and the TorchScript export wrapper.

Every network maps (n, C, L) model input to ``(mean, log_var, features, weights)``: standardised
label means, their log variances (Gaussian negative-log-likelihood heads, giving per-pixel
uncertainties), a feature vector (for the out-of-distribution score) and light fractions over the
SSP grid (an empty (n, 0) tensor for networks that do not predict them).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from survey_proc.estimators import floored_chi2
from survey_proc.ssp import MODEL_FLOOR
from survey_proc.training._edges import EdgeTable, apply_edge_table, noise_level


def conv_length(length: int, kernel: int, stride: int) -> int:
    """Output length of a Conv1d with padding kernel // 2."""
    return (length + 2 * (kernel // 2) - kernel) // stride + 1


#: activations a :class:`SpectrumCNN` can use (``arch_kwargs.activation``)
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class SpectrumCNN(nn.Module):
    """Compact strided 1-D CNN: fast on CPUs, predicts labels and their uncertainties directly.

    The first convolution strides by ``stem_stride`` so the cost per spectrum stays a few MFLOP;
    later blocks halve the length and widen the channels; a dense layer reads the flattened map
    (keeping where in the spectrum a feature is, which matters for absorption lines).
    ``activation``: ``gelu`` or ``relu`` (cheaper on CPUs: one comparison instead of an erf).
    """

    def __init__(
        self,
        in_channels: int,
        length: int,
        n_outputs: int,
        n_weights: int = 0,
        widths: tuple[int, ...] = (24, 32, 48, 64, 64),
        kernels: tuple[int, ...] = (8, 5, 5, 5, 3),
        stem_stride: int = 4,
        hidden: int = 128,
        dropout: float = 0.0,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        act = ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        c_in, n = in_channels, length
        for i, (width, k) in enumerate(zip(widths, kernels)):
            stride = stem_stride if i == 0 else 2
            layers += [nn.Conv1d(c_in, width, k, stride=stride, padding=k // 2), nn.BatchNorm1d(width), act()]
            n = conv_length(n, k, stride)
            c_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * n, hidden), act(), nn.Dropout(dropout), nn.Linear(hidden, hidden), act()
        )
        self.mean = nn.Linear(hidden, n_outputs)
        self.log_var = nn.Linear(hidden, n_outputs)
        self.weights = nn.Linear(hidden, n_weights) if n_weights else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.head(self.features(x))
        w = torch.softmax(self.weights(h), dim=1) if self.weights is not None else h[:, :0]
        return self.mean(h), self.log_var(h).clamp(-12.0, 6.0), h, w


class _Branch(nn.Module):
    """One GalProTE encoder: strided convolution of kernel k, self-attention, a transformer layer."""

    def __init__(self, in_channels: int, length: int, kernel: int, stride: int, d_model: int, heads: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, d_model, kernel, stride=stride, padding=kernel // 2)
        self.pos = nn.Parameter(torch.zeros(1, conv_length(length, kernel, stride), d_model))
        self.norm = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.encoder = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=2 * d_model,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
            activation="gelu",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.conv(x)).transpose(1, 2) + self.pos
        q = self.norm(h)
        h = h + self.attn(q, q, q, need_weights=False)[0]
        h = self.encoder(h)
        return torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=1)


class GalProTENet(nn.Module):
    """GalProTE-style model (Anwar et al. 2025): parallel encoders with kernels 11, 21, 31, 61.

    Each branch convolves the spectrum with its kernel size (strided, to keep attention affordable
    on CPUs), applies self-attention and a transformer encoder layer; the pooled branches feed a
    head for the age-[M/H] light-fraction grid (softmax) and Gaussian heads for the labels. With a
    :class:`Reconstructor` the predicted weights, A_V, velocity and sigma rebuild the spectrum.
    """

    def __init__(
        self,
        in_channels: int,
        length: int,
        n_outputs: int,
        n_weights: int = 150,
        kernels: tuple[int, ...] = (11, 21, 31, 61),
        stride: int = 8,
        d_model: int = 32,
        heads: int = 4,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_Branch(in_channels, length, k, stride, d_model, heads) for k in kernels])
        self.trunk = nn.Sequential(
            nn.Linear(2 * d_model * len(kernels), hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.mean = nn.Linear(hidden, n_outputs)
        self.log_var = nn.Linear(hidden, n_outputs)
        self.weights = nn.Linear(hidden, n_weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = [b(x) for b in self.branches]
        h = self.trunk(torch.cat(feats, dim=1))
        return self.mean(h), self.log_var(h).clamp(-12.0, 6.0), h, torch.softmax(self.weights(h), dim=1)


ARCHITECTURES = {"cnn": SpectrumCNN, "galprote": GalProTENet}


def build(arch: str, in_channels: int, length: int, n_outputs: int, **kwargs) -> nn.Module:
    """Instantiate an architecture by name."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](in_channels, length, n_outputs, **kwargs)


def fft_length(n: int) -> int:
    """The shortest FFT length >= ``n`` of the form 2^a x (1, 3, 5, 9 or 15), a >= 4.

    MKL (torch's CPU FFT) is 2-2.4x slower at 5-smooth lengths with high powers of 3 and 5 than at
    these: one thread, 256 spectra, a real FFT of 5625 = 5^4 x 3^2 points took 29 us per spectrum each
    way, of 6144 = 2^11 x 3 points 12-14 us.
    """
    lengths = []
    for odd in (1, 3, 5, 9, 15):
        a = 4
        while odd << a < n:
            a += 1
        lengths.append(odd << a)
    return min(lengths)


#: the floor of the Gaussian's ln(transform) in the rebuild: exp(-80) ~ 2e-35 is zero to float32 sums,
#: and a CPU's vector exp takes a slow path (~13x dearer per element) for arguments that underflow
EXP_FLOOR = -80.0


class Reconstructor(nn.Module):
    """Rebuilds spectra on the model grid from light fractions, A_V, velocity and sigma.

    Holds the Fourier transforms of the SSP templates (LSF-matched, unit mean flux in the light
    window, on a ln(lambda) grid); mixes them there (the transform is linear, so mixing the
    transforms is transforming the mixture, and no forward FFT is left per spectrum), multiplies by
    the Gaussian of the dispersion (exact also below a pixel, Cappellari 2017), transforms back,
    reads the result at the model pixels shifted by the velocity (linear interpolation on the ln
    grid) and applies the screen dust there. Differentiable.

    The dust comes after the LOSVD (its curve changes by < 0.1 % across a line, except at the step of
    Calzetti's curve at 6300 A) and the velocity is a shift of the read positions rather than a phase:
    one real filter, no sine or cosine per frequency, and an FFT just long enough not to wrap. Against
    the phase-shift form with dust first (the synthesiser's) the rebuilt spectra differ by < 0.2 % at
    99.9 % of pixels and < 1 % at all: up to 0.7 % in the cores of the narrowest lines (sigma 30-60 km/s
    at H-alpha and the Ca triplet), where reading a shifted spectrum linearly from the 25 km/s grid and
    shifting it exactly first disagree by that much (a cubic read is no closer)
    (``tests/test_reconstruct.py``). ``sigma`` is clamped to ``SIGMA_MAX`` and the velocity to the
    templates' margin; a NaN velocity reads as 0.
    """

    #: km/s: the widest LOSVD rebuilt (the FFT is padded by its 6 sigma, so nothing wraps around: a
    #: circular convolution of zero-padded data wraps only where the kernel reaches beyond the padding);
    #: twice the networks' training range, and 5120 rather than 6144 points on 4750-7100 A
    SIGMA_MAX = 600.0

    def __init__(
        self,
        templates: torch.Tensor,
        dust_curve: torch.Tensor,
        velscale: float,
        index: torch.Tensor,
        frac: torch.Tensor,
    ) -> None:
        super().__init__()
        nlog = templates.shape[1]
        self.nlog = int(nlog)
        self.velscale = float(velscale)
        self.sigma_max = self.SIGMA_MAX
        self.exp_floor = EXP_FLOOR
        pad = int(math.ceil(6.0 * self.SIGMA_MAX / self.velscale))
        self.nfft = fft_length(nlog + pad)
        self.nfreq = self.nfft // 2 + 1
        # the templates' transforms, (ntemp, nfreq * 2) as (real, imaginary) pairs, made in float64
        spectra = torch.fft.rfft(templates.double(), n=self.nfft, dim=1)
        self.register_buffer("spectra", torch.view_as_real(spectra).reshape(templates.shape[0], -1).float())
        # ln of the unit Gaussian's transform per (pixel dispersion)^2: -omega^2 / 2
        omega = 2.0 * math.pi * torch.fft.rfftfreq(self.nfft, dtype=torch.float64)
        self.register_buffer("half_omega2", (-0.5 * omega**2).float())
        # the model's pixels on the log grid: ``index`` the left neighbour, ``frac`` the step beyond it
        self.register_buffer("position", index.double().add(frac.double()).float())
        # how far the read positions may shift and stay on the templates
        self.shift_max = float(min(float(self.position.min()), nlog - 1.001 - float(self.position.max())))
        if self.shift_max <= 0:
            raise ValueError(
                f"the model grid reaches {-self.shift_max:.1f} pixels beyond the templates' ln(lambda) grid: "
                "build them with a velocity margin (Synthesiser max_velocity)"
            )
        # ``dust_curve`` A(lambda)/A_V on the log grid, as ln(flux) per magnitude of A_V
        self.register_buffer("dust_ln", (-0.4 * math.log(10.0) * dust_curve.double()).float())

    @classmethod
    def from_synthesiser(cls, synth, model_wave: np.ndarray) -> Reconstructor:
        """From a :class:`survey_proc.synth.Synthesiser` built for the model's rest-frame grid."""
        log_wave = synth.wave_log
        idx = np.clip(np.searchsorted(log_wave, model_wave) - 1, 0, log_wave.size - 2)
        frac = (model_wave - log_wave[idx]) / (log_wave[idx + 1] - log_wave[idx])
        return cls(
            torch.from_numpy(synth.templates),
            torch.from_numpy(synth.dust_curve),
            synth.velscale,
            torch.from_numpy(idx),
            torch.from_numpy(frac),
        )

    def forward(
        self, weights: torch.Tensor, av: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        sig = sigma.clamp(max=self.sigma_max) / self.velscale
        gauss = torch.exp((self.half_omega2[None, :] * (sig * sig)[:, None]).clamp(min=self.exp_floor))
        ft = (weights @ self.spectra).view(-1, self.nfreq, 2) * gauss[:, :, None]
        conv = torch.fft.irfft(torch.view_as_complex(ft), n=self.nfft, dim=1)
        mu = (torch.nan_to_num(velocity) / self.velscale).clamp(min=-self.shift_max, max=self.shift_max)[:, None]
        pos = self.position[None, :] - mu  # the rest-frame pixel each model pixel sees
        left = pos.floor()
        fr = pos - left
        i = left.long()
        model = torch.lerp(conv.gather(1, i), conv[:, 1:].gather(1, i), fr)
        dust = self.dust_ln.expand(conv.shape[0], -1)  # the curve at the same rest-frame positions
        return model * torch.exp(av[:, None] * torch.lerp(dust.gather(1, i), dust[:, 1:].gather(1, i), fr))


def pixel_weights(x: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Inverse variances (n, L) of input channels (flux, error, mask): 0 where masked, errors floored."""
    return (1.0 - x[:, 2]) / torch.clamp(x[:, 1], min=floor) ** 2


def reduced_chi2(
    x: torch.Tensor, model: torch.Tensor, floor: float = 1e-3, w: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced chi^2 of ``model`` against input channels (flux, error, mask), with the best scale.

    Returns (chi2 (n,), scaled model (n, L)). Masked pixels do not count; errors are floored
    (``w``: :func:`pixel_weights` of ``x``, where the caller has them already).
    """
    flux, mask = x[:, 0], x[:, 2]
    if w is None:
        w = pixel_weights(x, floor)
    scale = (w * flux * model).sum(dim=1) / torch.clamp((w * model * model).sum(dim=1), min=1e-12)
    fitted = model * scale[:, None]
    chi2 = (w * (flux - fitted) ** 2).sum(dim=1) / torch.clamp((1.0 - mask).sum(dim=1), min=1.0)
    return chi2, fitted


class ExportedModel(nn.Module):
    """What goes into the TorchScript file: physical units out, calibrated uncertainties, scores.

    ``ood_score`` is the Mahalanobis distance of the features from the training features divided
    by sqrt(dim): about 1 for inputs like the training set, large for inputs unlike it. With a
    reconstructor the module also returns the light-fraction grid ``weights`` (n, nage, nmetal), the
    reduced ``chi2`` of the rebuilt spectrum and ``chi2_floor``, the same with ``ssp.MODEL_FLOOR`` of
    the model added to the noise (what ``poor_fit`` judges, as for the fit). Outputs with an edge
    table (:mod:`._edges`) are de-shrunk at the grid edges, their uncertainties scaled by the slope of
    the correction.
    """

    #: spectra rebuilt at a time: with the workers' heap settings (``cluster.tune_heap``), one thread,
    #: 5120-point FFTs, the whole module costs ~5 % more per spectrum in chunks of 1024 than of 256
    #: (the 1.6x first measured at 6144 points was without them); on a GPU the loop is not measured
    REBUILD_CHUNK = 256

    def __init__(
        self,
        net: nn.Module,
        names: list[str],
        label_mean: torch.Tensor,
        label_std: torch.Tensor,
        feat_mean: torch.Tensor,
        feat_prec: torch.Tensor,
        err_scale: torch.Tensor | None = None,
        reconstructor: Reconstructor | None = None,
        grid_shape: tuple[int, int] = (0, 0),
        edge_tables: dict[str, EdgeTable] | None = None,
        noise_channels: tuple[int, int, int] = (0, 1, 2),
    ) -> None:
        super().__init__()
        self.net = net
        self.names = names
        self.register_buffer("label_mean", label_mean.float())
        self.register_buffer("label_std", label_std.float())
        self.register_buffer("feat_mean", feat_mean.float())
        self.register_buffer("feat_prec", feat_prec.float())
        scale = torch.ones_like(label_std) if err_scale is None else err_scale
        self.register_buffer("err_scale", scale.float())  # calibration of the uncertainties
        self.reconstructor = reconstructor
        self.model_floor = float(MODEL_FLOOR)
        self.n_metal = int(grid_shape[0])
        self.n_age = int(grid_shape[1])
        self.i_av = names.index("av") if "av" in names else -1
        self.i_sigma = names.index("sigma") if "sigma" in names else -1
        self.i_velocity = names.index("velocity") if "velocity" in names else -1
        self.i_flux, self.i_error, self.i_mask = (int(c) for c in noise_channels)  # for noise_level
        #: run ``net`` in bfloat16 (set at load time by the estimator, with ``net`` cast to bfloat16);
        #: everything after the network (units, edge tables, scores) stays float32
        self.net_bf16 = False
        self.rebuild_chunk = int(self.REBUILD_CHUNK)
        self.set_edge_tables(edge_tables or {})

    def set_edge_tables(self, tables: dict[str, EdgeTable]) -> None:
        """Edge de-shrinkage (:mod:`._edges`) of the named outputs; an empty dict turns it off."""
        names = [n for n in self.names if n in tables]
        n_err = max([tables[n].noise.size for n in names] or [1])
        n_true = max([tables[n].true.size for n in names] or [2])
        for n in names:
            if tables[n].noise.size != n_err or tables[n].true.size != n_true:
                raise ValueError("edge tables of one model must share their shape")
        device = self.label_mean.device
        self.register_buffer(
            "edge_index", torch.tensor([self.names.index(n) for n in names], dtype=torch.long, device=device)
        )

        def stack(f, shape):
            if not names:
                return torch.zeros(shape, device=device)
            return torch.tensor(np.array([f(tables[n]) for n in names]), dtype=torch.float32, device=device)

        self.register_buffer("edge_noise", stack(lambda t: t.noise, (0, n_err)))
        self.register_buffer("edge_true", stack(lambda t: t.true, (0, n_true)))
        self.register_buffer("edge_table", stack(lambda t: t.table, (0, n_err, n_true)))
        self.register_buffer("edge_err_factor", stack(lambda t: t.factors(), (0, n_err)))

    def _chi2(self, x: torch.Tensor, model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``chi2`` and ``chi2_floor`` of rebuilt spectra ``model`` against the input ``x``."""
        w8 = pixel_weights(x)
        chi2, fitted = reduced_chi2(x, model, w=w8)
        floored = floored_chi2(x[:, 0], w8, fitted, self.model_floor, double=False)
        return chi2, floored / torch.clamp((1.0 - x[:, 2]).sum(dim=1), min=1.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.net_bf16:
            mean, log_var, feat, weights = self.net(x.to(torch.bfloat16))
            mean, log_var, feat, weights = mean.float(), log_var.float(), feat.float(), weights.float()
        else:
            mean, log_var, feat, weights = self.net(x)
        value = mean * self.label_std + self.label_mean
        err = torch.exp(0.5 * log_var) * self.label_std * self.err_scale
        if self.edge_index.shape[0] > 0:
            noise = noise_level(x, self.i_flux, self.i_error, self.i_mask)
        else:
            noise = torch.zeros_like(value[:, 0])
        for k in range(self.edge_index.shape[0]):
            i = int(self.edge_index[k])
            v, e = apply_edge_table(
                value[:, i],
                err[:, i],
                noise,
                self.edge_noise[k],
                self.edge_true[k],
                self.edge_table[k],
                self.edge_err_factor[k],
            )
            value = torch.cat([value[:, :i], v[:, None], value[:, i + 1 :]], dim=1)
            err = torch.cat([err[:, :i], e[:, None], err[:, i + 1 :]], dim=1)
        d = feat - self.feat_mean
        score = torch.sqrt((d @ self.feat_prec * d).sum(dim=1) / float(d.shape[1]))
        out: dict[str, torch.Tensor] = {"ood_score": score}
        for i, name in enumerate(self.names):
            out[name] = value[:, i]
            out[name + "_err"] = err[:, i]
        recon = self.reconstructor
        if recon is not None:
            zeros = torch.zeros_like(value[:, 0])
            av = value[:, self.i_av].clamp(min=0.0) if self.i_av >= 0 else zeros
            sigma = value[:, self.i_sigma].clamp(min=1.0) if self.i_sigma >= 0 else zeros + 100.0
            velocity = value[:, self.i_velocity] if self.i_velocity >= 0 else zeros
            chi2s: list[torch.Tensor] = []
            floors: list[torch.Tensor] = []
            for s in range(0, x.shape[0], self.rebuild_chunk):
                e = s + self.rebuild_chunk
                c, f = self._chi2(x[s:e], recon(weights[s:e], av[s:e], velocity[s:e], sigma[s:e]))
                chi2s.append(c)
                floors.append(f)
            out["chi2"] = torch.cat(chi2s) if chi2s else zeros
            out["chi2_floor"] = torch.cat(floors) if floors else zeros
            # (n, nmetal, nage) -> (n, nage, nmetal), the maps' (age, metal) order
            out["weights"] = weights.reshape(-1, self.n_metal, self.n_age).transpose(1, 2)
        return out
