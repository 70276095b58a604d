"""``--method fit``: pPXF's model solved for a whole batch of spectra at once in torch, seeded by a network.

The bundle (``estimators/models/fit/manifest.json``) reads the same input as the ``ppxf`` bundle
(rest-frame spectra on a ln(lambda) grid, emission-line and sky masks) and fits each spectrum with the
same E-MILES SSPs (LSF-matched to the data at every pixel), a Calzetti (2000) screen and a Gaussian
LOSVD, minimising chi^2 with the cube's variance (:mod:`._fitcore`). The fit starts from a network's
answer (``fit.seed``, the default model): its sigma and A_V, and templates around its age and [M/H]
for the working set; the velocity starts at the cross-correlation peak.

Outputs per spectrum: light-weighted ``log_age`` and ``metallicity``, their mass-weighted
``log_age_mass`` and ``metallicity_mass``, ``av``, ``sigma``, ``velocity`` (relative to the systemic
redshift), each with an error from the curvature of chi^2 scaled by the reduced chi^2; ``chi2``
(reduced); ``chi2_floor`` (the same with a model error of ``model_floor`` added to the noise, which
POOR_FIT judges); ``weights`` (age, metal) light fractions; ``mass_to_light`` (M_sun per unit mean
light in the light window, before dust); ``mass_to_light_r`` (M_sun / L_sun in SDSS r, rest frame,
before dust: stars and remnants of the library's IMF); ``log_mass_flux`` (log10 of the stellar mass
behind one unit of the data's flux: M_sun per (L_sun/A) of window light, times the spectrum's
normalisation in the store's flux units; the engine turns it into ``log_mass_surface_density``).
A spectrum with too few good pixels, or a fit that gives nonsense, gets NaN (the engine flags it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from survey_proc.errors import ModelError
from survey_proc.estimators._base import Estimator, Manifest
from survey_proc.estimators._fitcore import FitLimits, FitState, Templates
from survey_proc.estimators._fiterrors import covariance
from survey_proc.estimators._fitstart import starting_working_sets, velocity_seed
from survey_proc.estimators._fitstream import fit_stream
from survey_proc.estimators._load import load_estimator
from survey_proc.estimators._ppxf import TemplateCache, check_weights_grid, crop_for_grid, prepare_templates
from survey_proc.preprocess import BatchMeta, batch_error_inflation, masked_median
from survey_proc.ssp import (
    MODEL_FLOOR,
    attenuation_curve,
    band_luminosity,
    load_filters,
    load_ssp_library,
    log_wave_grid,
)

#: every output this estimator can give (the manifest picks)
KNOWN_OUTPUTS = {
    "log_age", "metallicity", "log_age_mass", "metallicity_mass", "av", "sigma", "velocity", "chi2", "chi2_floor",
    "weights",
    "mass_to_light", "mass_to_light_r", "log_mass_flux", "h3", "h4",
}  # fmt: skip


@dataclass(frozen=True)
class FitOptions:
    """The manifest's ``fit`` section."""

    seed: str | None = "default"  #: network bundle whose estimates start each fit (None: the fixed starts)
    working_set: int = 12  #: templates solved at once (a 32x32 mock: <= 10 used at the optimum for 99.8 %)
    mdegree: int = 0  #: degree of a multiplicative Legendre polynomial (as pPXF's mdegree; 0: none)
    #: LOSVD moments, as pPXF's ``moments``: 2 (v, sigma) or 4 (and Gauss-Hermite h3, h4)
    moments: int = 2
    h_range: float = 0.3  #: |h3|, |h4| at most
    #: pPXF's penalty towards a Gaussian LOSVD (``bias``): None its default, 0.7 sqrt(500 / good pixels)
    bias: float | None = None
    iterations: int = 12  #: Levenberg-Marquardt steps at most
    tol: float = 1e-4  #: relative chi^2 change under which a fit has converged (pPXF's default ftol)
    start_sigma: float = 100.0  #: km/s, without a seed model
    start_av: float = 0.3  #: mag, without a seed model
    sigma_range: tuple[float, float] = (5.0, 1000.0)
    av_range: tuple[float, float] = (0.0, 5.0)
    search_velocity: float = 1500.0  #: |v| searched by the cross-correlation start, km/s
    max_velocity: float = 3500.0  #: template margin beyond the data range, km/s
    min_good_fraction: float = 0.2  #: spectra with fewer good pixels are not fitted
    #: a model error (fraction of the model) added in quadrature to the noise in ``chi2_floor``: how well
    #: SSP libraries agree with each other (``ssp.MODEL_FLOOR``)
    model_floor: float = MODEL_FLOOR
    lsf_resolution: float = 0.01  #: Angstrom; LSFs equal to this precision share templates
    template_cache: int = 16  #: LSF-matched template sets kept per process
    cpu_batch: int = 32  #: spectra fitted together on a CPU (measured: 16-128 within 10 %, 8 and 256 1.4x slower)
    gpu_batch: int = 2048  #: ... on a GPU

    @classmethod
    def from_manifest(cls, section: dict[str, Any]) -> FitOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ModelError(f"unknown fit option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
        return cls(**values)

    def reach(self) -> float:
        """km/s the LOSVD may move light by: the velocities searched, 500 km/s beyond, and 5 sigma at the
        largest sigma."""
        return self.search_velocity + 500.0 + 5.0 * self.sigma_range[1]

    def limits(self) -> FitLimits:
        return FitLimits(
            self.sigma_range, self.av_range, self.h_range, self.bias, self.search_velocity, self.iterations, self.tol
        )


#: spectra rebuilt at once (their columns over the whole SSP grid are held in memory)
REBUILD_ROWS = 16
#: batches of spectra seeded and streamed through the fit together (:func:`fit_stream`)
STREAM = 8


class FitEstimator(Estimator):
    """Fits every spectrum of a batch together (a CPU or a GPU), starting from a network's estimates."""

    def __init__(self, manifest: Manifest, device: str = "cpu", threads: int | None = None) -> None:
        self.manifest = manifest
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.options = FitOptions.from_manifest(manifest.raw.get("fit", {}))
        self._systematics = manifest.error_systematics  #: checked once; its library terms give <name>_sys_err
        spec = manifest.input
        if getattr(spec, "velscale", None) is None:
            raise ModelError(f"{manifest.path}: the fit needs a ln-lambda input grid (input.wave.velscale)")
        if tuple(spec.channels[:3]) != ("flux", "error", "mask"):
            raise ModelError(f"{manifest.path}: the fit needs input channels flux, error, mask; found {spec.channels}")
        self.velscale = float(spec.velscale)
        self.lam = np.asarray(spec.wave, np.float64)
        self._library()
        self._check_outputs()
        # spectra the engine prepares and hands over at once: a GPU takes many more
        cpu_block = int(manifest.batch_size or self.options.cpu_batch)
        self.batch_size = max(cpu_block, self.options.gpu_batch) if self.device.type == "cuda" else cpu_block
        self.seed = Seed(self.options.seed, self.lam, self.device, threads) if self.options.seed else None
        self.templates_for = TemplateCache(self._templates, self.options.lsf_resolution, self.options.template_cache)
        self.provenance = {
            "ssp_library": self.lib.provenance.get("source", "E-MILES"),
            "ssp_digest": self.lib.digest(),
            "torch": torch.__version__,
            "seed_model": self.seed.model_id if self.seed else "",
        }

    def _library(self) -> None:
        lib = load_ssp_library()
        self.lib = crop_for_grid(lib, self.lam, self.options.max_velocity)
        self.lam_temp = log_wave_grid(self.lib.wave[0] + 1.0, self.lib.wave[-1] - 1.0, self.velscale)
        self.log_age = np.asarray(lib.log_age, np.float64)
        self.metal = np.asarray(lib.metal, np.float64)
        nage, nmetal = self.log_age.size, self.metal.size
        # per template in prepare_templates' order (age-major, then metal): its values and M/L
        self.age_of = np.repeat(self.log_age, nmetal)
        self.metal_of = np.tile(self.metal, nage)
        window = lib.light_in_window()
        self.ml_of = np.asarray((lib.mass / window).T, np.float64).reshape(-1)
        # r-band light per unit window light (the filter curves are fetched only when asked for; else 1)
        r_light = np.ones_like(window)
        if "mass_to_light_r" in self.manifest.output_names:
            r_light = band_luminosity(lib, load_filters("sdss"), "r") / window
        self.r_light_of = np.asarray(r_light.T, np.float64).reshape(-1)
        self.dust_k = attenuation_curve(self.lam, "calzetti00")

    def _check_outputs(self) -> None:
        outputs = {o.name: o for o in self.manifest.outputs}
        extra = sorted(set(outputs) - KNOWN_OUTPUTS)
        if extra:
            raise ModelError(f"{self.manifest.path}: the fit cannot produce output(s) {', '.join(extra)}")
        if self.options.moments not in (2, 4):
            raise ModelError(
                f"{self.manifest.path}: fit.moments is 2 (v, sigma) or 4 (and h3, h4), not {self.options.moments}"
            )
        if {"h3", "h4"} & set(outputs) and self.options.moments != 4:
            raise ModelError(f"{self.manifest.path}: outputs h3 and h4 need fit.moments = 4")
        if (self.options.bias or 0) < 0 or self.options.h_range <= 0:
            raise ModelError(f"{self.manifest.path}: fit.bias must be >= 0 (or null) and fit.h_range > 0")
        check_weights_grid(self.manifest, outputs, self.log_age, self.metal)

    def _templates(self, fwhm: np.ndarray) -> Templates:
        """LSF-matched templates for the data's FWHM at the model pixels, in Fourier space (cached in
        ``templates_for``)."""
        tem = prepare_templates(self.lib, self.lam, fwhm, self.lam_temp)
        return Templates(
            tem.reshape(tem.shape[0], -1).T, self.lam_temp, self.lam, self.velscale, self.dust_k, self.device,
            mdegree=self.options.mdegree, reach=self.options.reach(), grid=tem.shape[1:],
        )  # fmt: skip

    def predict(self, x: np.ndarray, meta: BatchMeta | None = None) -> dict[str, np.ndarray]:
        """Fit each spectrum of ``x`` (n, 3, L); ``meta.lsf_fwhm_model`` (L,) or (n, L) is required."""
        if meta is None or meta.lsf_fwhm_model is None:
            raise ModelError(
                "the fit needs the data's instrumental FWHM (cube attribute or variable 'lsf_fwhm') to match the "
                "templates"
            )
        fwhm = np.asarray(meta.lsf_fwhm_model, np.float64)
        norm = self._norm(meta, x.shape[0])
        inflation = batch_error_inflation(meta, x)
        out = self._empty(x.shape[0])
        groups = [np.arange(x.shape[0])] if fwhm.ndim == 1 else _rows_by_lsf(fwhm, self.options.lsf_resolution)
        for rows in groups:
            tpl = self.templates_for(fwhm if fwhm.ndim == 1 else fwhm[rows[0]])
            block = STREAM * self._chunk()
            for start in range(0, rows.size, block):
                part = rows[start : start + block]
                self._fit_rows(tpl, x[part], part, out, norm, inflation)
        return self._systematics.add(self.manifest.declared(out))

    rebuilds_spectra = True

    def rebuild(self, x: np.ndarray, meta: BatchMeta | None, values: dict[str, np.ndarray]) -> np.ndarray:
        """The best-fit spectra (n, L) of ``x`` from the fit's maps: ``velocity``, ``sigma``, ``av`` (n,;
        absent where the fit holds A_V: its value), ``h3``, ``h4`` (n,; with ``fit.moments`` 4) and
        ``weights`` (n, age, metal). The weights' overall scale and the multiplicative polynomial are not
        kept in the maps: they are solved by weighted least squares, which at the fit's optimum gives the
        fit's own. NaN rows where a value is."""
        if meta is None or meta.lsf_fwhm_model is None:
            raise ModelError("rebuilding the fit needs the data's instrumental FWHM (cube 'lsf_fwhm')")
        fwhm = np.asarray(meta.lsf_fwhm_model, np.float64)
        grid = np.asarray(values["weights"], np.float64).reshape(x.shape[0], -1)
        kin = np.stack([np.asarray(v, np.float64) for v in self._rebuild_values(values, x.shape[0])], 1)
        ok = np.isfinite(kin).all(1) & np.isfinite(grid).all(1) & (np.nan_to_num(grid).sum(1) > 0)
        out = np.full((x.shape[0], x.shape[2]), np.nan, np.float32)
        groups = [np.arange(x.shape[0])] if fwhm.ndim == 1 else _rows_by_lsf(fwhm, self.options.lsf_resolution)
        for rows in groups:
            rows = rows[ok[rows]]
            tpl = self.templates_for(fwhm if fwhm.ndim == 1 else fwhm[rows[0]]) if rows.size else None
            for start in range(0, rows.size, REBUILD_ROWS):
                part = rows[start : start + REBUILD_ROWS]
                out[part] = self._rebuild_rows(tpl, x[part], kin[part], grid[part])
        return out

    def _rebuild_values(self, values: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
        """velocity, sigma, A_V (its held value where the fit holds it) and h3, h4 with 4 moments, from the
        maps' ``values``; ModelError naming what a rebuild needs and the maps lack."""
        names = ("velocity", "sigma", "av") + (("h3", "h4") if self.options.moments == 4 else ())
        if values.get("av") is None and self.options.limits().holds_av:
            values = {**values, "av": np.full(n, self.options.av_range[0])}
        missing = [k for k in (*names, "weights") if values.get(k) is None]
        if missing:
            raise ModelError(
                f"rebuilding {self.manifest.name}'s spectra needs its maps' {', '.join(missing)}: add them to the "
                "bundle's outputs"
            )
        return [values[k] for k in names]

    def _rebuild_rows(self, tpl: Templates, x: np.ndarray, kin: np.ndarray, grid: np.ndarray) -> np.ndarray:
        y, w8 = _data(x, self.device)
        kin = torch.as_tensor(kin, dtype=torch.float32, device=self.device)
        v, sigma, av, h = kin[:, 0], kin[:, 1], kin[:, 2], kin[:, 3:]
        ws = torch.arange(tpl.ntemp, device=self.device).expand(x.shape[0], -1)
        w = torch.as_tensor(grid, dtype=torch.float32, device=self.device)
        shape = torch.bmm(w[:, None, :], tpl.columns(ws, v, sigma, av, kern=tpl.kernel(v, sigma, h)))[:, 0].double()
        # the scale and the multiplicative polynomial (if any) by weighted least squares: both enter the
        # model linearly once the shape is fixed, so this is the fit's own optimum
        design = torch.cat([shape[:, None], tpl.legendre.double()[None] * shape[:, None]], dim=1)  # (n, 1 + d, L)
        dw = design * w8.double()[:, None, :]
        normal = dw @ design.transpose(1, 2) + 1e-30 * torch.eye(design.shape[1], dtype=torch.float64)
        coef = torch.linalg.solve(normal, (dw * y.double()[:, None, :]).sum(-1))
        return (coef[:, None, :] @ design)[:, 0].cpu().numpy()

    def _chunk(self) -> int:
        return self.options.gpu_batch if self.device.type == "cuda" else self.options.cpu_batch

    def _empty(self, n: int) -> dict[str, np.ndarray]:
        names = [n_ for n_ in KNOWN_OUTPUTS if n_ != "weights"]
        out = {name: np.full(n, np.nan, np.float32) for name in names}
        out |= {f"{name}_err": np.full(n, np.nan, np.float32) for name in names}
        out["weights"] = np.full((n, self.log_age.size, self.metal.size), np.nan, np.float32)
        return out

    def _norm(self, meta: BatchMeta, n: int) -> np.ndarray:
        """Each row's flux normalisation (the store's units), which ``log_mass_flux`` needs."""
        if meta.norm is not None:
            return np.asarray(meta.norm, np.float64).reshape(n)
        if "log_mass_flux" in self.manifest.output_names:
            raise ModelError("the fit's log_mass_flux needs each spectrum's flux normalisation (BatchMeta.norm)")
        return np.full(n, np.nan)

    def _fit_rows(
        self,
        tpl: Templates,
        x: np.ndarray,
        rows: np.ndarray,
        out: dict[str, np.ndarray],
        norm: np.ndarray,
        inflation: np.ndarray,
    ) -> None:
        y, w8 = _data(x, self.device)
        ok = (w8 > 0).sum(1) >= self.options.min_good_fraction * x.shape[2]
        if not bool(ok.any()):
            return
        idx = torch.nonzero(ok).flatten()
        y, w8, x = y[idx], w8[idx], x[idx.cpu().numpy()]
        sigma0, av0, ws0 = self._starts(x)
        v0 = velocity_seed(tpl, y, w8, sigma0, av0, ws0, self.options.search_velocity)
        limits, rows = self.options.limits(), rows[idx.cpu().numpy()]
        for done, state in fit_stream(tpl, y, w8, v0, sigma0, av0, ws0, limits, self.options.moments, self._chunk()):
            self._write(tpl, state, y[done], w8[done], rows[done.cpu().numpy()], out, norm, inflation)

    def _starts(self, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sigma, A_V and the working set each fit starts from (the seed network's, else the fixed ones)."""
        n, k = x.shape[0], self.options.working_set
        lo_s, hi_s = self.options.sigma_range
        if self.seed is not None:
            est = self.seed.estimate(x)
            sigma = np.clip(
                np.nan_to_num(est["sigma"], nan=self.options.start_sigma), max(lo_s, 20.0), min(hi_s, 600.0)
            )
            av = np.clip(np.nan_to_num(est["av"], nan=self.options.start_av), *self.options.av_range)
            age = np.nan_to_num(est["log_age"], nan=float(np.median(self.log_age)))
            metal = np.nan_to_num(est["metallicity"], nan=0.0)
        else:
            sigma = np.full(n, self.options.start_sigma)
            av = np.full(n, self.options.start_av)
            age = np.full(n, float(np.median(self.log_age)))
            metal = np.zeros(n)
        ws = starting_working_sets(self.log_age, self.metal, age, metal, k)
        dt = torch.float32
        return (
            torch.as_tensor(sigma, dtype=dt, device=self.device),
            torch.as_tensor(av, dtype=dt, device=self.device),
            torch.as_tensor(ws, device=self.device),
        )

    def _write(
        self,
        tpl: Templates,
        s: FitState,
        y,
        w8: torch.Tensor,
        rows: np.ndarray,
        out: dict,
        norm: np.ndarray,
        inflation: np.ndarray,
    ) -> None:
        """The fitted values, their errors and the weight grid into ``out`` at ``rows`` (``norm``: the
        flux normalisation of every row of the batch; ``inflation``: what the noise resampling shared
        between its pixels grows each row's variances by, :func:`~survey_proc.preprocess.batch_error_inflation`)."""
        good = (w8 > 0).sum(1)
        hold_av = self.options.limits().holds_av
        dof = (good - s.ws.shape[1] - s.nonlinear + int(hold_av)).clamp(min=1)
        cov = covariance(tpl, s, good, dof, hold_av, self.options.bias)  # (n, p + k, p + k)
        cov = cov * torch.as_tensor(inflation[rows], dtype=cov.dtype, device=cov.device)[:, None, None]
        cov_w = cov[:, s.nonlinear :, s.nonlinear :]
        ws = s.ws.cpu()
        age = torch.as_tensor(self.age_of)[ws]
        met = torch.as_tensor(self.metal_of)[ws]
        ml = torch.as_tensor(self.ml_of)[ws]
        r_light = torch.as_tensor(self.r_light_of)[ws]
        w = s.w.double().cpu()
        cov_w = cov_w.cpu()
        ones = torch.ones_like(w)
        values = {
            "log_age": weighted_mean(cov_w, w, ones, age),
            "metallicity": weighted_mean(cov_w, w, ones, met),
            "log_age_mass": weighted_mean(cov_w, w, ml, age),
            "metallicity_mass": weighted_mean(cov_w, w, ml, met),
            "mass_to_light": weighted_mean(cov_w, w, ones, ml),
            "mass_to_light_r": weighted_mean(cov_w, w, r_light, ml / r_light),
            "log_mass_flux": log_weighted_sum(cov_w, w, ml, torch.as_tensor(norm[rows])),
        }
        err = torch.sqrt(torch.diagonal(cov[:, :3, :3], dim1=1, dim2=2).clamp(min=0)).cpu()
        values |= {
            "velocity": (s.v.cpu(), err[:, 0]),
            "sigma": (s.sigma.cpu(), err[:, 1]),
            "av": (s.av.cpu(), err[:, 2]),
        }
        if s.h.shape[1]:
            h_err = torch.sqrt(torch.diagonal(cov[:, 3:5, 3:5], dim1=1, dim2=2).clamp(min=0)).cpu()
            values |= {"h3": (s.h[:, 0].cpu(), h_err[:, 0]), "h4": (s.h[:, 1].cpu(), h_err[:, 1])}
        finite = torch.isfinite(s.chi2.cpu()) & (w.sum(1) > 0)
        for name, (value, error) in values.items():
            out[name][rows] = np.where(finite.numpy(), value.double().numpy(), np.nan)
            out[f"{name}_err"][rows] = np.where(finite.numpy(), error.double().numpy(), np.nan)
        out["chi2"][rows] = np.where(finite.numpy(), (s.chi2.cpu() / dof.cpu()).numpy(), np.nan)
        model = torch.where(w8 > 0, s.model / w8.sqrt().clamp(min=1e-30), 0.0)  # the state's is whitened
        floored = floored_chi2(y, w8, model, self.options.model_floor) / dof
        out["chi2_floor"][rows] = np.where(finite.numpy(), floored.cpu().numpy(), np.nan)
        grid = torch.zeros((w.shape[0], tpl.ntemp), dtype=torch.float64).scatter_add_(1, ws, w)
        grid = grid / grid.sum(1, keepdim=True).clamp(min=1e-300)
        grid = grid.reshape(-1, self.log_age.size, self.metal.size).numpy()
        out["weights"][rows] = np.where(finite.numpy()[:, None, None], grid, np.nan)

    def warm_up(self) -> None:
        """The seed network's first calls (TorchScript optimises its graph then)."""
        if self.seed is not None:
            self.seed.estimator.warm_up()


def log_weighted_sum(cov_w: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, factor: torch.Tensor):
    """log10(factor * sum(w * scale)) (n,) and its error from the weights' covariance (n, k, k); float64."""
    total = (w * scale).double().sum(1)
    var = (scale.double()[:, None, :] @ cov_w.double() @ scale.double()[:, :, None])[:, 0, 0]
    value = torch.log10(factor.double() * total)
    error = var.clamp(min=0).sqrt() / (total * math.log(10.0))
    return value, error


def weighted_mean(cov_w: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, values: torch.Tensor):
    """Mean of ``values`` (n, k) over the weights ``w * scale``, and its error from the weights'
    covariance (n, k, k); float64."""
    m = (w * scale).double()
    total = m.sum(1).clamp(min=1e-300)
    mean = (m * values).sum(1) / total
    grad = scale.double() * (values.double() - mean[:, None]) / total[:, None]
    var = (grad[:, None, :] @ cov_w.double() @ grad[:, :, None])[:, 0, 0]
    return mean, var.clamp(min=0).sqrt()


def floored_chi2(
    y: torch.Tensor, w8: torch.Tensor, model: torch.Tensor, floor: float, double: bool = True
) -> torch.Tensor:
    """chi^2 (n,) with ``floor`` x model added in quadrature to each good pixel's noise (W = 1/variance).

    Summed in float64 unless ``double`` is False (a network's rebuilt spectra: ~4x cheaper, and float32
    holds a sum of a few thousand terms of order one to ~1e-6)."""
    dtype = torch.float64 if double else y.dtype
    var = torch.where(w8 > 0, 1.0 / w8.clamp(min=1e-30), torch.zeros_like(w8)).to(dtype)
    total = (var + (floor * model.to(dtype)) ** 2).clamp(min=1e-30)
    return torch.where(w8 > 0, (y - model).to(dtype) ** 2 / total, torch.zeros_like(total)).sum(1)


def _data(x: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux (masked pixels 0) and inverse variance (0 where masked or without a finite error)."""
    flux = torch.as_tensor(x[:, 0], dtype=torch.float32, device=device)
    err = torch.as_tensor(x[:, 1], dtype=torch.float32, device=device)
    good = (torch.as_tensor(x[:, 2], device=device) < 0.5) & (err > 0) & torch.isfinite(flux) & torch.isfinite(err)
    inv = torch.where(good, 1.0 / torch.where(good, err, torch.ones_like(err)) ** 2, torch.zeros_like(err))
    return torch.where(good, flux, torch.zeros_like(flux)), inv


def _rows_by_lsf(fwhm: np.ndarray, step: float) -> list[np.ndarray]:
    """Rows of a per-spectrum FWHM array (n, L) grouped by equal LSF (to ``step``)."""
    keys = np.round(fwhm / step).astype(np.int64)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    return [np.flatnonzero(inverse.ravel() == g) for g in range(int(inverse.max()) + 1)]


class Seed:
    """The network whose estimates start the fit, fed the fit's own input resampled onto its grid."""

    def __init__(self, model: str, lam: np.ndarray, device: torch.device, threads: int | None) -> None:
        self.estimator = load_estimator(model, device=str(device), threads=threads)
        spec = self.estimator.manifest.input
        if getattr(spec, "kind", "") != "spectrum" or tuple(spec.channels[:3]) != ("flux", "error", "mask"):
            raise ModelError(f"fit seed model {model!r} must read spectra with channels flux, error, mask")
        self.model_id = self.estimator.manifest.model_id
        wave = np.asarray(spec.wave, np.float64)
        self.index = np.clip(np.searchsorted(lam, wave) - 1, 0, lam.size - 2)
        self.frac = ((wave - lam[self.index]) / (lam[self.index + 1] - lam[self.index])).astype(np.float32)
        self.outside = (wave < lam[0]) | (wave > lam[-1])

    def estimate(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The network's outputs for the fit's inputs (n, 3, L) (median-normalised again on its grid)."""
        x = np.asarray(x, np.float32)
        left, z = np.take(x, self.index, axis=2), np.take(x, self.index + 1, axis=2)  # (3x fancy indexing's speed)
        masked = np.maximum(left[:, 2], z[:, 2]) > 0.5  # a masked neighbour masks the pixel
        masked[:, self.outside] = True
        z -= left
        z *= self.frac
        z += left
        z[:, 2] = masked
        med = masked_median(z[:, 0], ~masked)  # as the engine normalises the network's own input
        med = np.where(np.isfinite(med) & (med > 0), med, 1.0).astype(np.float32)
        z[:, :2] /= med[:, None, None]
        return self.estimator.predict(np.nan_to_num(z, copy=False))
