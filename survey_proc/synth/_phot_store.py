"""Photometric stores from cubes (synthetic photometry on Dask) and mock photometry with truth.

- :func:`photometry_from_store`: every spectrum of a cube or catalogue integrated through a filter
  set, one Dask task per stored chunk (``xarray.apply_ufunc`` over the spatial chunks, the
  spectral axis whole), written to a photometric store beside which the curves are kept; a mock's
  truth group is copied along.
- :func:`write_mock_photometry`: the mock galaxy of a :class:`MockConfig` (the very galaxy and truth
  :func:`write_mock` makes for the same config) observed through a filter set, noise per band.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc.ssp import FilterSet, SSPLibrary, load_ssp_library
from survey_proc.stores import (
    FLUX_UNITS,
    consolidate,
    create_photometry_store,
    filter_dataset,
    lsf_fwhm_at,
    open_spectral_store,
    spatial_dims,
    write_region,
)
from survey_proc.synth._mock import MockConfig, galaxy_maps, truth_dataset
from survey_proc.synth._photometry import (
    PhotometrySynthesiser,
    ab_magnitude,
    band_noise,
    flux_unit_cgs,
    sky_line_windows,
    synthetic_photometry,
)

#: attributes of a cube that a photometric store made from it keeps
_KEPT_ATTRS = ("redshift", "pixel_scale_arcsec", "instrument", "source", "mock_config", "ssp_library")


def _copy_truth(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Copy a mock's ``truth`` group; False if ``src`` has none."""
    import zarr

    if "truth" not in zarr.open_group(str(src), mode="r"):
        return False
    truth = xr.open_zarr(src, group="truth", consolidated=False)
    truth.to_zarr(dst, group="truth", mode="w", zarr_format=3, consolidated=False)
    return True


def photometry_from_store(
    cube: str | os.PathLike,
    filters: FilterSet,
    out: str | os.PathLike,
    *,
    cluster: str | None = None,
    workers: int | None = None,
    min_coverage: float = 0.99,
    max_masked: float = 0.2,
    mask_sky: bool = True,
    progress: bool = True,
) -> dict:
    """Synthetic photometry of every spectrum of ``cube`` through ``filters``, written to ``out``.

    ``mask_sky`` leaves the pixels within 2 FWHM of the bright night-sky lines (:data:`SKY_LINES`) out
    of the band integrals, as the spectral models mask them: IFU sky-subtraction residuals there would
    otherwise bias the narrow bands that hold them by several per cent in faint pixels.
    Returns a summary dict (spectra, seconds, spectra/s, bands masked for coverage, output path).
    """
    from survey_proc import __version__
    from survey_proc.cluster import make_client
    from survey_proc.config import get

    t0 = time.perf_counter()
    ds = open_spectral_store(cube, require_redshift=False)
    dims = spatial_dims(ds)
    wave = np.asarray(ds["wave"].values, np.float64)
    unit = flux_unit_cgs(str(ds["flux"].attrs["units"]))
    nb = len(filters)
    sky = sky_line_windows(wave, lsf_fwhm_at(ds)) if mask_sky else np.zeros(wave.size, bool)

    def block(flux: np.ndarray, var: np.ndarray, mask: np.ndarray):
        shape = flux.shape[:-1]
        ph = synthetic_photometry(
            flux.reshape(-1, flux.shape[-1]),
            var.reshape(-1, var.shape[-1]),
            mask.reshape(-1, mask.shape[-1]) | sky[None, :],
            wave,
            filters,
            unit,
            min_coverage,
            max_masked,
        )
        mag, err = ph.ab()
        return tuple(
            a.reshape(*shape, nb) for a in (ph.flux, ph.var, ph.mask, mag.astype(np.float32), err.astype(np.float32))
        )

    outs = xr.apply_ufunc(
        block,
        ds["flux"],
        ds["var"],
        ds["mask"],
        input_core_dims=[["wave"]] * 3,
        output_core_dims=[["band"]] * 5,
        dask="parallelized",
        output_dtypes=[np.float32, np.float32, bool, np.float32, np.float32],
        dask_gufunc_kwargs={"output_sizes": {"band": nb}},
    )
    coverage = synthetic_photometry(np.zeros((1, wave.size)), None, None, wave, filters).coverage
    names = ("flux", "var", "mask", "mag", "mag_err")
    attrs = {
        "flux": {"units": FLUX_UNITS, "long_name": "band flux density f_nu (AB system)"},
        "var": {"units": f"{FLUX_UNITS}**2", "long_name": "variance of flux"},
        "mask": {"long_name": "bad band measurement (True = do not use)"},
        "mag": {"units": "mag", "long_name": "AB magnitude (NaN where flux <= 0)"},
        "mag_err": {"units": "mag", "long_name": "1-sigma uncertainty of the AB magnitude"},
    }
    result = xr.Dataset({n: o.transpose(*dims, "band").assign_attrs(attrs[n]) for n, o in zip(names, outs)})
    fds = filter_dataset(filters)
    result = result.assign_coords(band=fds["band"]).merge(fds)
    result = result.drop_vars([c for c in ("wave",) if c in result.coords])
    result.attrs = {
        **fds.attrs,
        "photometric_system": "AB",
        **{k: ds.attrs[k] for k in _KEPT_ATTRS if k in ds.attrs},
        "synthetic_photometry_of": str(Path(cube).resolve()),
        "sky_lines_masked": int(mask_sky),
        "band_coverage": [float(c) for c in coverage],
        "software": f"survey-proc {__version__}",
    }
    chunks = {d: int(max(ds["flux"].chunks[i])) for i, d in enumerate(ds["flux"].dims) if d in dims}
    encoding = {n: {"chunks": (*tuple(chunks[d] for d in dims), nb)} for n in names}
    delayed = result.to_zarr(out, mode="w", zarr_format=3, consolidated=False, compute=False, encoding=encoding)
    with make_client(cluster or get("run.cluster"), workers, 1) as client:
        t_compute = time.perf_counter()
        if client is None:
            delayed.compute(scheduler="synchronous")
        else:
            future = client.compute(delayed)
            if progress:
                from distributed import progress as show

                show(future)
            future.result()
        compute_seconds = time.perf_counter() - t_compute
    truth = _copy_truth(cube, out)
    consolidate(out)
    n = int(np.prod([ds.sizes[d] for d in dims]))
    seconds = time.perf_counter() - t0
    return {
        "path": str(out),
        "spectra": n,
        "bands": nb,
        "seconds": seconds,
        "spectra_per_s": n / compute_seconds,
        "bands_short_of_coverage": [b for b, c in zip(filters.bands, coverage) if c < min_coverage],
        "truth": truth,
    }


def write_mock_photometry(
    path: str | os.PathLike,
    cfg: MockConfig,
    filters: FilterSet,
    lib: SSPLibrary | None = None,
    synthesiser: PhotometrySynthesiser | None = None,
) -> dict:
    """Photometric store of the mock galaxy of ``cfg`` through ``filters``, with its truth maps.

    The galaxy, its populations and truth are those :func:`~survey_proc.synth.write_mock` builds
    for the same config; fluxes come from :class:`PhotometrySynthesiser` (nebular lines included),
    noise per band from the cube's noise model (:func:`band_noise`: S/N ``cfg.snr`` per Angstrom at the
    brightest spaxel, integrated over each band), and a fraction ``cfg.bad_pixel_fraction`` of
    measurements masked.
    """
    from survey_proc import __version__

    t0 = time.perf_counter()
    lib = lib or load_ssp_library()
    maps, flux, var, mask = mock_band_fluxes(cfg, lib, filters, synthesiser)
    truth = truth_dataset(maps, lib, cfg)
    attrs = {
        "redshift": cfg.redshift,
        "pixel_scale_arcsec": cfg.pixel_scale_arcsec,
        "psf_fwhm_arcsec": cfg.psf_fwhm_pixels * cfg.pixel_scale_arcsec,
        "instrument": f"{filters.name} imaging (mock)",
        "source": "survey-proc mock photometry",
        "software": f"survey-proc {__version__}",
        "mock_config": str(asdict(cfg)),
        "ssp_library": lib.provenance.get("source", "E-MILES"),
    }
    create_photometry_store(path, spatial={"y": cfg.ny, "x": cfg.nx}, filters=filters, attrs=attrs, chunk=cfg.chunk)
    truth.to_zarr(path, group="truth", mode="w", zarr_format=3, consolidated=False)
    mag, err = ab_magnitude(flux, var)
    write_region(
        path,
        {},
        {"flux": flux, "var": var, "mask": mask, "mag": mag.astype(np.float32), "mag_err": err.astype(np.float32)},
    )
    consolidate(path)
    return {
        "path": str(path),
        "pixels": cfg.nx * cfg.ny,
        "bands": len(filters),
        "seconds": time.perf_counter() - t0,
        "r_e_spaxel": maps.r_e,
    }


def mock_band_fluxes(
    cfg: MockConfig,
    lib: SSPLibrary,
    filters: FilterSet,
    synthesiser: PhotometrySynthesiser | None = None,
    noise: bool = True,
):
    """(galaxy maps, flux, var, mask) of the mock galaxy of ``cfg``: band arrays (ny, nx, nband) in nJy.

    With ``noise=False`` the noise-free fluxes are returned with their variance (no draw, no mask).
    """
    rng = np.random.default_rng(cfg.seed)
    maps = galaxy_maps(cfg, lib, rng)
    ps = synthesiser or PhotometrySynthesiser(lib, filters, cfg.redshift)
    scale = maps.light / maps.light.max() * cfg.peak_flux
    halpha = maps.halpha * cfg.peak_flux / maps.light.max()
    flux = ps.observe(
        maps.weights.reshape(-1, *maps.weights.shape[2:]),
        maps.av.ravel(),
        scale.ravel(),
        halpha.ravel(),
        maps.velocity.ravel(),
    )
    shape = (cfg.ny, cfg.nx, len(filters))
    if cfg.psf_fwhm_pixels > 0:  # seeing: every band image blurred by the same Gaussian
        from scipy.ndimage import gaussian_filter

        sigma = cfg.psf_fwhm_pixels / 2.3548
        flux = gaussian_filter(flux.reshape(shape), (sigma, sigma, 0), mode="constant").reshape(flux.shape)
    var = band_noise(flux, filters, cfg.snr, cfg.sky_fraction, cfg.peak_flux)
    if not noise:
        return maps, flux.reshape(shape), var.reshape(shape), np.zeros(shape, bool)
    n_rng = np.random.default_rng([cfg.seed, 1_000_001])
    observed = flux + n_rng.standard_normal(flux.shape).astype(np.float32) * np.sqrt(var)
    mask = n_rng.random(flux.shape) < cfg.bad_pixel_fraction
    observed[mask] = np.nan
    return maps, observed.reshape(shape), var.reshape(shape), mask.reshape(shape)
