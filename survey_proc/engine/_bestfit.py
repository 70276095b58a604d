"""``--save-model``: a fit's best-fit spectra rebuilt from its maps, as a cube store beside them.

The fit's maps keep, per spaxel, the velocity, sigma, A_V and the light weights over the SSP grid;
the estimator's :meth:`~survey_proc.estimators.Estimator.rebuild` turns them back into the model
spectrum on the fit's rest-frame grid. The store holds the spectrum the fit saw (``flux``, ``var``,
``mask``: de-redshifted, resampled and normalised as the fit's input) and the ``model``, so that
``flux - model`` shows the residuals pixel by pixel (in DS9 or QFitsView after ``survey-proc export``,
or with xarray). It is written through the stores' one write path: region by region, resumable,
verified, staged and renamed into place when complete.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from survey_proc import __version__
from survey_proc.engine._region import read_feature_axis, read_region_inputs
from survey_proc.engine._template import spatial_chunks
from survey_proc.errors import OptionError
from survey_proc.estimators import Estimator, load_estimator
from survey_proc.stores import (
    Region,
    StoreWrite,
    cube_compressors,
    make_regions,
    open_input_store,
    read_arrays,
    run_signature,
    spatial_dims,
    wave_attrs,
    with_region_arrays,
    write_store,
)

log = logging.getLogger(__name__)

#: the maps' variables a rebuild reads (av is absent where a fit holds it, h3 and h4 where it fits none)
FIT_VALUES = ("velocity", "sigma", "av", "h3", "h4", "weights")
#: the flux units of the best-fit store: each spectrum divided by its median, as the fit saw it
NORMALISED = "1 (flux / its median over the fitted range)"
#: what each region of the best-fit store writes
BEST_FIT_ARRAYS = ("flux", "var", "mask", "model")


def best_fit_path(maps: str | os.PathLike) -> Path:
    """Where ``--save-model`` writes: ``<maps without .zarr>.model.zarr`` beside the maps."""
    maps = Path(maps)
    stem = maps.name[: -len(".zarr")] if maps.name.endswith(".zarr") else maps.name
    return maps.with_name(f"{stem}.model.zarr")


def write_best_fit(maps: str | os.PathLike, out: str | os.PathLike | None = None) -> StoreWrite:
    """Rebuild the best-fit spectra of a finished fit's ``maps`` into a cube store at ``out``
    (default :func:`best_fit_path`); a survey-proc store already there is replaced."""
    job = _BestFitJob.of(str(maps))
    out = str(out or best_fit_path(maps))
    cube = open_input_store(job.cube, "wave", require_redshift=False)
    dims = spatial_dims(cube)
    sizes, chunks = {d: cube.sizes[d] for d in dims}, spatial_chunks(cube)
    template = with_region_arrays(_template(cube, dims, chunks, job), sizes, chunks)
    written = write_store(
        out,
        template,
        make_regions(sizes, chunks),
        job,
        signature=run_signature({"best_fit_of": job.maps, "maps_created": job.created, "software": __version__}),
        what="best-fit spectra",
        names=list(BEST_FIT_ARRAYS),
        inputs=[job.maps, job.cube],
        desc="best-fit regions",
    )
    log.info(f"best-fit spectra written to {out} (flux, model; the residuals are flux - model)")
    return written


@dataclass(frozen=True)
class _BestFitJob:
    """What each region needs (picklable): the maps, the cube and the fit's manifest; called on a
    region, it returns the region's best-fit arrays."""

    maps: str
    cube: str
    manifest: str
    redshift: float
    created: str

    @classmethod
    def of(cls, maps: str) -> _BestFitJob:
        try:
            attrs = dict(zarr.open_group(maps, mode="r").attrs)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise OptionError(
                f"{maps}: no maps store there (run the fit first: survey-proc run --method fit)"
            ) from None
        if attrs.get("model_estimator") != "fit":
            raise OptionError(
                f"{maps}: made by the {attrs.get('model_estimator', 'unknown')!r} estimator; only a fit "
                "(--method fit) has best-fit spectra to save"
            )
        if attrs.get("status") != "complete":
            raise OptionError(f"{maps}: the fit is not finished (rerun the same command to complete it first)")
        return cls(maps, attrs["cube"], attrs["model_manifest"], float(attrs["redshift"]), str(attrs.get("created")))

    def __call__(self, region: Region) -> dict[str, np.ndarray]:
        est = _estimator(self.manifest)
        spec = est.manifest.input
        axis, lsf = read_feature_axis(self.cube, self.manifest)
        shape = tuple(b - a for _, a, b in region.slices)
        n = int(np.prod(shape))
        read = read_region_inputs(self.cube, region, with_redshift=True)
        z = np.full(n, self.redshift) if read["redshift"] is None else np.asarray(read["redshift"], float).reshape(n)
        flux, var, mask = (np.asarray(read[k]).reshape(n, -1) for k in ("flux", "var", "mask"))
        prep = spec.prepare_batch(flux, var, mask, axis, z if read["redshift"] is not None else self.redshift)
        values = read_arrays(self.maps, list(FIT_VALUES), region.block)
        values = {k: np.asarray(v).reshape(n, *np.shape(v)[len(shape) :]) for k, v in values.items() if v is not None}
        model = est.rebuild(prep.x, spec.batch_meta(z, axis, lsf), values)
        good = (prep.x[:, 2] < 0.5) & (prep.x[:, 1] > 0)
        arrays = {
            "flux": np.where(good, prep.x[:, 0], np.nan),
            "var": np.where(good, prep.x[:, 1] ** 2, np.nan),
            "mask": ~good,
            "model": model,
        }
        return {k: v.reshape(*shape, -1).astype(bool if k == "mask" else np.float32) for k, v in arrays.items()}


def _estimator(manifest: str) -> Estimator:
    """The fit's estimator (``load_estimator`` keeps it loaded once per process)."""
    est = load_estimator(manifest, device="cpu")
    if not est.rebuilds_spectra:
        raise OptionError(f"{manifest}: this estimator does not rebuild spectra (only --method fit does)")
    return est


def _template(cube: xr.Dataset, dims: tuple[str, ...], chunks: dict[str, int], job: _BestFitJob) -> xr.Dataset:
    """The empty best-fit store: the fit's rest-frame grid, the cube's spatial coordinates."""
    spec = _estimator(job.manifest).manifest.input
    lam = np.asarray(spec.wave, np.float64)
    shape = (*(cube.sizes[d] for d in dims), lam.size)
    block = (*(min(chunks[d], cube.sizes[d]) for d in dims), lam.size)
    described = {
        "flux": (np.float32, {"long_name": "the spectrum the fit saw", "units": NORMALISED}),
        "var": (np.float32, {"long_name": "its variance", "units": f"({NORMALISED})**2"}),
        "mask": (bool, {"long_name": "pixel not fitted (True = masked or without a finite error)"}),
        "model": (np.float32, {"long_name": "the best-fit spectrum", "units": NORMALISED}),
    }
    axis, lsf = read_feature_axis(job.cube, job.manifest)
    fwhm = spec.batch_meta(np.array([job.redshift]), axis, lsf).lsf_fwhm_model
    ds = xr.Dataset(
        {k: ((*dims, "wave"), da.zeros(shape, chunks=block, dtype=t), a) for k, (t, a) in described.items()},
        coords={"wave": ("wave", lam, wave_attrs("rest", spec.medium))},
        attrs={
            "title": "survey-proc best-fit spectra",
            "source": "survey-proc --save-model",
            "maps": str(Path(job.maps).resolve()),
            "cube": job.cube,
            "model_manifest": job.manifest,
            "redshift": 0.0,
            "observed_redshift": job.redshift,
            "software": f"survey-proc {__version__}",
        },
    )
    if fwhm is not None:  # rest-frame FWHM at the fit's pixels (at the cube's redshift)
        ds["lsf_fwhm"] = ("wave", np.asarray(fwhm, np.float64).reshape(-1, lam.size)[0], {"units": "Angstrom"})
    small = {k: c for k, c in cube.coords.items() if set(c.dims) <= set(dims) and k not in dims}
    ds = ds.assign_coords({**{d: cube[d] for d in dims if d in cube.coords}, **small})
    for v in BEST_FIT_ARRAYS:
        ds[v].encoding.update({"chunks": block, "compressors": cube_compressors()})
    return ds
