"""``survey-proc resample``: a photometric image store brought to another pixel scale and seeing.

The target is a model's (its manifest's ``pixel_scale_arcsec`` and ``psf_fwhm_arcsec``) or given
outright; the images' own scale and seeing come from the store's attributes (``pixel_scale_arcsec``,
``psf_fwhm_arcsec``) or the caller. The new store is written through
:func:`~survey_proc.stores.write_store` (verified, resumable, in place once complete), with the
filter curves, the redshift and the provenance of the resampling; a mock's truth group is not
carried over (its maps are on the old grid).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from survey_proc import __version__
from survey_proc.errors import CubeError, OptionError
from survey_proc.estimators import load_manifest
from survey_proc.resample._operators import Resampling
from survey_proc.stores import (
    check_output,
    content_fingerprint,
    filters_from_store,
    make_regions,
    open_photometry_store,
    photometry_template,
    run_signature,
    with_region_arrays,
    write_store,
)
from survey_proc.synth import ab_magnitude

#: attributes of the input kept in the resampled store
_KEPT = ("redshift", "instrument", "source", "mock_config", "ssp_library", "filter_source")
METHOD = (
    "flux-conserving rebinning (exact 1-D pixel overlaps, separable) after Gaussian PSF matching "
    "(sigma_k^2 = sigma_out^2 - sigma_in^2 - pixel_out^2/12); variances propagated exactly for "
    "independent input pixels; survey_proc.resample"
)


@dataclass(frozen=True)
class Resampled:
    """What :func:`resample_store` wrote."""

    path: str
    shape_in: tuple[int, int]
    shape_out: tuple[int, int]
    scale_in: float
    scale_out: float
    psf_in: float
    psf_out: float
    kernel_sigma_arcsec: float
    seconds: float


def model_target(model: str) -> tuple[float, float]:
    """(pixel scale, seeing FWHM) in arcsec that an image model was trained on (its manifest)."""
    spec = load_manifest(model).raw.get("input", {})
    if "pixel_scale_arcsec" not in spec:
        raise OptionError(f"model {model} reads no images (its input has no pixel_scale_arcsec): nothing to match")
    return float(spec["pixel_scale_arcsec"]), float(spec.get("psf_fwhm_arcsec", 0.0))


def resample_store(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    pixel_scale: float,
    psf_fwhm: float,
    input_psf_fwhm: float | None = None,
    input_pixel_scale: float | None = None,
    chunk: int = 32,
) -> Resampled:
    """Resample the (y, x, band) images of ``store`` to ``pixel_scale`` arcsec pixels and a Gaussian
    seeing of ``psf_fwhm`` arcsec FWHM, written to ``out`` (see :mod:`survey_proc.resample._operators`)."""
    t0 = time.perf_counter()
    ds = open_photometry_store(store)
    if tuple(ds["flux"].dims) != ("y", "x", "band"):
        raise CubeError(f"{store}: resample works on (y, x, band) images, not {tuple(ds['flux'].dims)}")
    scale_in = _attr(ds, "pixel_scale_arcsec", input_pixel_scale, "--input-pixel-scale", store)
    psf_in = _attr(ds, "psf_fwhm_arcsec", input_psf_fwhm, "--input-psf", store)
    check_output(out, [store], what="photometry")
    try:
        op = Resampling.between((ds.sizes["y"], ds.sizes["x"]), scale_in, pixel_scale, psf_in, psf_fwhm)
    except ValueError as exc:
        raise OptionError(f"cannot resample {store}: {exc}") from exc
    flux, var, mask = op.apply(ds["flux"].values, ds["var"].values, ds["mask"].values)
    mag, err = ab_magnitude(flux, var)
    arrays = {"flux": flux, "var": var, "mask": mask, "mag": mag.astype(np.float32), "mag_err": err.astype(np.float32)}
    attrs = {k: ds.attrs[k] for k in _KEPT if k in ds.attrs}
    attrs |= {
        "pixel_scale_arcsec": pixel_scale,
        "psf_fwhm_arcsec": psf_fwhm,
        "resampled_from": str(Path(store).resolve()),
        "resample_method": METHOD,
        "resample_input": f"{scale_in:g} arcsec pixels, seeing {psf_in:g} arcsec FWHM",
        "software": f"survey-proc {__version__}",
    }
    ny, nx = op.shape_out
    sizes, chunks = {"y": ny, "x": nx}, {"y": min(chunk, ny), "x": min(chunk, nx)}
    template = photometry_template(spatial=sizes, filters=filters_from_store(ds), attrs=attrs, chunk=chunks)
    identity = {"content": content_fingerprint(store), "scale": pixel_scale, "psf": psf_fwhm, "psf_in": psf_in}
    write_store(
        out,
        with_region_arrays(template, sizes, chunks),
        make_regions(sizes, chunks),
        lambda region: {name: a[region.block] for name, a in arrays.items()},
        signature=run_signature(identity | {"scale_in": scale_in, "software": __version__}),
        what="photometry",
        names=list(arrays),
        inputs=[store],
        desc="resampled regions",
    )
    return Resampled(
        str(out),
        (ds.sizes["y"], ds.sizes["x"]),
        (ny, nx),
        scale_in,
        pixel_scale,
        psf_in,
        psf_fwhm,
        op.sigma_kernel_arcsec,
        time.perf_counter() - t0,
    )


def _attr(ds, name: str, given: float | None, option: str, store) -> float:
    """A store attribute the caller may override; OptionError naming the option if neither is there."""
    value = given if given is not None else ds.attrs.get(name)
    if value is None:
        raise OptionError(f"{store} has no '{name}' attribute: pass {option} (arcsec)")
    return float(value)
