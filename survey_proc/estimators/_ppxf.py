"""pPXF (Cappellari 2017, 2023) as an estimator behind the same engine as the neural models.

The bundle is a manifest without a model file (``estimators/models/ppxf/manifest.json``): its
``input`` section asks :func:`survey_proc.preprocess.prepare` for rest-frame spectra on a ln(lambda)
grid with the same emission-line and sky masks as the default model, and its ``ppxf`` section holds
the fit options (:class:`PPXFOptions`). Templates are the E-MILES SSPs of
:func:`survey_proc.ssp.load_ssp_library`, each normalised to unit mean flux in
:data:`survey_proc.ssp.LIGHT_WINDOW`, so the fitted weights are light fractions before dust — the
convention of the mock truth (see :mod:`survey_proc.synth._populations`). They are matched to the
data's instrumental FWHM at every model pixel (``meta.lsf_fwhm_model``, from the engine), once
per distinct LSF within a worker process. Each spectrum is fitted for a Gaussian LOSVD (velocity
relative to the systemic redshift, dispersion), a Calzetti (2000) screen (pPXF's ``reddening``,
the law of the mocks) and the template weights, optionally regularised.

Outputs: ``log_age`` and ``metallicity`` (light-weighted, from the weights), ``av``, ``sigma``,
``velocity`` and their formal errors where pPXF gives them (``sigma_err``, ``velocity_err``,
scaled by sqrt(chi2)), the weight grid ``weights`` (age, metal), ``chi2``. A fit that raises or
returns nonsense gives NaN (the engine flags it ``fit_failed``).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Generic, TypeVar

import numpy as np

from survey_proc.errors import ModelError
from survey_proc.estimators._base import Estimator, Manifest
from survey_proc.preprocess import BatchMeta, batch_error_inflation
from survey_proc.ssp import C_KMS, LIGHT_WINDOW, SSPLibrary, load_ssp_library, log_wave_grid, match_lsf, resample

T = TypeVar("T")


@dataclass(frozen=True)
class PPXFOptions:
    """The manifest's ``ppxf`` section (velocities in km/s, A_V in mag)."""

    moments: int = 2  #: Gauss-Hermite moments of the LOSVD (2: V, sigma; 4: and h3, h4)
    bias: float | None = None  #: pPXF's penalty on h3, h4 (None: pPXF's default; 0: none, as the fit)
    degree: int = -1  #: additive Legendre polynomial degree (-1: none)
    mdegree: int = 0  #: multiplicative polynomial degree (0: none; dust does that job)
    reddening: float | None = 0.3  #: starting A_V of the Calzetti (2000) screen; None: not fitted
    start_velocity: float = 0.0  #: relative to the systemic redshift
    start_sigma: float = 100.0
    regul: float = 0.0  #: regularisation strength (0: none); smooths the weight grid
    reg_ord: int = 2
    velscale_ratio: int = 1  #: template pixels per data pixel
    max_velocity: float = 3500.0  #: template margin beyond the data range (pPXF needs ~2900)
    clean: bool = False  #: pPXF's iterative sigma-clipping of outliers
    ftol: float = 1e-4  #: pPXF's stopping rule: relative chi^2 change (its default)
    lsf_resolution: float = 0.01  #: Angstrom; LSFs equal to this precision share templates
    template_cache: int = 16  #: LSF-matched template sets kept per process

    @classmethod
    def from_manifest(cls, section: dict[str, Any]) -> PPXFOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ModelError(f"unknown pPXF option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**section)


#: the numbers of a FitResult the estimator's outputs take as they are
FIT_VALUES = ("av", "sigma", "velocity", "sigma_err", "velocity_err", "chi2", "h3", "h4", "h3_err", "h4_err")


def _hermite(pp, moments: int, scale: float) -> dict[str, float]:
    """h3, h4 and their errors (scaled as velocity's and sigma's) of a fit with 4 moments; {} otherwise."""
    if moments != 4:
        return {}
    return {
        "h3": float(pp.sol[2]),
        "h4": float(pp.sol[3]),
        "h3_err": float(pp.error[2] * scale),
        "h4_err": float(pp.error[3] * scale),
    }


@dataclass
class FitResult:
    """The numbers of one pPXF fit (weights normalised to light fractions, (nage, nmetal))."""

    velocity: float
    sigma: float
    velocity_err: float
    sigma_err: float
    av: float
    chi2: float
    weights: np.ndarray
    h3: float = np.nan
    h4: float = np.nan
    h3_err: float = np.nan
    h4_err: float = np.nan


def light_weighted_grid(weights: np.ndarray, log_age: np.ndarray, metal: np.ndarray) -> tuple[float, float]:
    """Light-weighted log age (yr) and [M/H] (dex) of a light-fraction grid (nage, nmetal)."""
    w = weights / weights.sum()
    return float(w.sum(axis=1) @ log_age), float(w.sum(axis=0) @ metal)


def prepare_templates(lib: SSPLibrary, fwhm_wave: np.ndarray, fwhm: np.ndarray, lam_temp: np.ndarray) -> np.ndarray:
    """E-MILES templates for pPXF: (npix, nage, nmetal) on ``lam_temp`` (ln grid, rest frame).

    Each SSP is degraded from the library's FWHM to the data's ``fwhm`` (Angstrom, rest frame,
    given at ``fwhm_wave`` and held constant beyond), divided by its mean flux in the light window
    (before matching, as the mocks do) and resampled.
    """
    target = np.interp(lib.wave, fwhm_wave, fwhm)
    flux = lib.flux.reshape(-1, lib.wave.size)
    matched = match_lsf(lib.wave, flux, lib.fwhm, target)
    norm = lib.light_in_window(LIGHT_WINDOW).reshape(-1, 1)
    log_flux = resample(lib.wave, matched / norm, lam_temp)  # (nmetal*nage, npix)
    nmetal, nage = lib.flux.shape[:2]
    return np.ascontiguousarray(log_flux.reshape(nmetal, nage, -1).transpose(2, 1, 0), np.float64)


def crop_for_grid(lib: SSPLibrary, lam: np.ndarray, max_velocity: float) -> SSPLibrary:
    """``lib`` cut to what templates for the model grid ``lam`` need: the grid shifted by up to
    ``max_velocity`` km/s either way and the light-normalisation window, with 20 Angstrom to spare."""
    margin = np.exp(max_velocity / C_KMS)
    return lib.crop(min(lam[0] / margin, LIGHT_WINDOW[0]) - 20.0, max(lam[-1] * margin, LIGHT_WINDOW[1]) + 20.0)


def check_weights_grid(manifest: Manifest, outputs: dict, log_age: np.ndarray, metal: np.ndarray) -> None:
    """Refuse a ``weights`` output whose dims or coordinates are not the SSP library's (age, metal) grid."""
    if "weights" not in outputs:
        return
    coords = outputs["weights"].coords
    if outputs["weights"].dims != ("age", "metal") or not (
        np.allclose(coords.get("age", []), log_age, atol=1e-4)
        and np.allclose(coords.get("metal", []), metal, atol=1e-4)
    ):
        raise ModelError(
            f"{manifest.path}: output 'weights' must have dims (age, metal) with the "
            f"SSP library's grid ({log_age.size} ages, {metal.size} [M/H])"
        )


class TemplateCache(Generic[T]):
    """LSF-matched templates per data FWHM (equal to ``step`` Angstrom), the ``size`` most recently used
    kept: ``build(fwhm)`` makes them on a miss."""

    def __init__(self, build: Callable[[np.ndarray], T], step: float, size: int) -> None:
        self.build, self.step, self.size = build, float(step), int(size)
        self._items: OrderedDict[bytes, T] = OrderedDict()

    def __call__(self, fwhm: np.ndarray) -> T:
        fwhm = np.asarray(fwhm, np.float64)
        key = hashlib.sha1(np.round(fwhm / self.step).astype(np.int64).tobytes()).digest()
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = self.build(fwhm)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


class PPXFEstimator(Estimator):
    """Fits every spectrum of a batch with pPXF, one after another, on the CPU."""

    def __init__(self, manifest: Manifest, device: str = "cpu", threads: int | None = None) -> None:
        if not str(device).startswith("cpu"):
            raise ModelError(f"pPXF runs on the CPU only (asked for device {device!r})")
        try:
            import ppxf
            from ppxf.ppxf import ppxf as ppxf_fit
        except ImportError as exc:
            raise ModelError("the pPXF estimator needs the ppxf package: pip install 'survey-proc[ppxf]'") from exc
        self.manifest = manifest
        self._systematics = manifest.error_systematics  #: checked once, as the fit and the networks do
        self._ppxf = ppxf_fit
        self.threads = int(threads) if threads else None
        self.version = getattr(ppxf, "__version__", "") or _package_version("ppxf")
        self.options = PPXFOptions.from_manifest(manifest.raw.get("ppxf", {}))
        spec = manifest.input
        if spec.velscale is None:
            raise ModelError(f"{manifest.path}: pPXF needs a ln-lambda input grid (input.wave.velscale)")
        if spec.channels[:3] != ("flux", "error", "mask"):
            raise ModelError(f"{manifest.path}: pPXF needs input channels flux, error, mask; found {spec.channels}")
        self.velscale = float(spec.velscale)
        self.lam = spec.wave
        lib = load_ssp_library()
        self._check_outputs(lib)
        self.lib = crop_for_grid(lib, self.lam, self.options.max_velocity)
        ratio = int(self.options.velscale_ratio)
        self.lam_temp = log_wave_grid(self.lib.wave[0] + 1.0, self.lib.wave[-1] - 1.0, self.velscale / ratio)
        self.log_age = np.asarray(lib.log_age, np.float64)
        self.metal = np.asarray(lib.metal, np.float64)
        #: LSF-matched templates for the data FWHM at the model pixels (cached per process)
        self.templates_for = TemplateCache(self._templates, self.options.lsf_resolution, self.options.template_cache)
        self.provenance = {
            "ppxf_version": self.version,
            "ssp_library": lib.provenance.get("source", "E-MILES"),
            "ssp_digest": lib.digest(),
        }

    def _check_outputs(self, lib: SSPLibrary) -> None:
        outputs = {o.name: o for o in self.manifest.outputs}
        check_weights_grid(self.manifest, outputs, np.asarray(lib.log_age), np.asarray(lib.metal))
        if "av" in outputs and self.options.reddening is None:
            raise ModelError(f"{self.manifest.path}: output 'av' needs the ppxf option 'reddening' (a start A_V)")
        known = {"log_age", "metallicity", "av", "sigma", "velocity", "chi2", "weights"}
        known |= {"h3", "h4"} if self.options.moments == 4 else set()
        extra = sorted(set(outputs) - known)
        if extra:
            raise ModelError(
                f"{self.manifest.path}: pPXF cannot produce output(s) {', '.join(extra)} (h3, h4: moments 4)"
            )
        for name in ("log_age", "metallicity", "av", "chi2", "weights"):
            if name in outputs and outputs[name].error:
                raise ModelError(f"{self.manifest.path}: pPXF gives no uncertainty for '{name}' (set error: false)")

    def _templates(self, fwhm: np.ndarray) -> np.ndarray:
        return prepare_templates(self.lib, self.lam, fwhm, self.lam_temp)

    def fit(self, flux: np.ndarray, error: np.ndarray, bad: np.ndarray, templates: np.ndarray) -> FitResult:
        """One pPXF fit of a prepared spectrum (model grid, median-normalised)."""
        o = self.options
        good = ~bad & (error > 0) & np.isfinite(flux) & np.isfinite(error)
        noise = np.where(good, error, 1.0)
        nage, nmetal = templates.shape[1:]
        kwargs: dict[str, Any] = {}
        if o.regul > 0:
            kwargs.update(regul=o.regul, reg_dim=(nage, nmetal), reg_ord=o.reg_ord)
        if o.reddening is not None:
            kwargs["reddening"] = float(o.reddening)
        if o.bias is not None:
            kwargs["bias"] = float(o.bias)
        pp = self._ppxf(
            templates.reshape(templates.shape[0], -1),
            flux.astype(np.float64),
            noise.astype(np.float64),
            self.velscale,
            [o.start_velocity, o.start_sigma],
            moments=o.moments,
            degree=o.degree,
            mdegree=o.mdegree,
            lam=self.lam,
            lam_temp=self.lam_temp,
            mask=good,
            quiet=True,
            velscale_ratio=o.velscale_ratio,
            clean=o.clean,
            ftol=o.ftol,
            **kwargs,
        )
        weights = np.asarray(pp.weights, np.float64).reshape(nage, nmetal)
        total = weights.sum()
        scale = np.sqrt(pp.chi2) if np.isfinite(pp.chi2) and pp.chi2 > 0 else np.nan
        return FitResult(
            velocity=float(pp.sol[0]),
            sigma=float(pp.sol[1]),
            velocity_err=float(pp.error[0] * scale),
            sigma_err=float(pp.error[1] * scale),
            av=float(pp.reddening) if o.reddening is not None else np.nan,
            chi2=float(pp.chi2),
            weights=weights / total if total > 0 else np.full_like(weights, np.nan),
            **_hermite(pp, o.moments, scale),
        )

    def predict(self, x: np.ndarray, meta: BatchMeta | None = None) -> dict[str, np.ndarray]:
        """Fit each spectrum of ``x`` (n, 3, L); ``meta.lsf_fwhm_model`` (L,) or (n, L) is required."""
        if meta is None or meta.lsf_fwhm_model is None:
            raise ModelError(
                "pPXF needs the data's instrumental FWHM (cube attribute or variable 'lsf_fwhm') to match the templates"
            )
        fwhm = np.asarray(meta.lsf_fwhm_model, np.float64)
        n = x.shape[0]
        nage, nmetal = self.log_age.size, self.metal.size
        out = {name: np.full(n, np.nan, np.float32) for name in ("log_age", "metallicity", *FIT_VALUES)}
        out["weights"] = np.full((n, nage, nmetal), np.nan, np.float32)
        with _blas_threads(self.threads):
            for i in range(n):
                templates = self.templates_for(fwhm if fwhm.ndim == 1 else fwhm[i])
                try:
                    r = self.fit(x[i, 0], x[i, 1], x[i, 2] > 0.5, templates)
                except Exception:
                    continue
                if not np.isfinite(r.weights).all():
                    continue
                out["log_age"][i], out["metallicity"][i] = light_weighted_grid(r.weights, self.log_age, self.metal)
                for name in FIT_VALUES:
                    out[name][i] = getattr(r, name)
                out["weights"][i] = r.weights
        scale = np.sqrt(batch_error_inflation(meta, x)).astype(np.float32)  # the noise resampling shares
        for name in FIT_VALUES:
            if name.endswith("_err"):
                out[name] *= scale
        return self._systematics.add(self.manifest.declared(out))


def _blas_threads(threads: int | None):
    """Context limiting BLAS/OpenMP threads to ``threads`` (pPXF's least squares would otherwise use
    every core in each worker and the workers would fight over them); a no-op for None."""
    if not threads:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=int(threads))


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return ""
