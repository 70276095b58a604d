"""Photometric stores from cubes (synthetic photometry on Dask) and mock photometry with truth.

Both write through :func:`survey_proc.stores.write_store` (one region per spatial chunk: verified,
resumable, the store renamed into place once complete):

- :func:`photometry_from_store`: every spectrum of a cube or catalogue integrated through a filter
  set, one Dask task per stored chunk (:class:`BandIntegrals`: the worker reads the region, the
  spectral axis whole, and commits its photometry), written to a photometric store beside which
  the curves are kept; a mock's truth group is copied along.
- :func:`write_mock_photometry`: the mock galaxy of a :class:`MockConfig` (the very galaxy and truth
  :func:`write_mock` makes for the same config) observed through a filter set, noise per band.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from scipy.ndimage import gaussian_filter

from survey_proc import __version__, config
from survey_proc.cluster import make_client
from survey_proc.errors import CubeError
from survey_proc.ssp import FilterSet, SSPLibrary, load_ssp_library
from survey_proc.stores import (
    SPECTRAL_DIM,
    Region,
    check_output,
    content_fingerprint,
    flux_unit_cgs,
    lsf_fwhm_at,
    make_regions,
    open_spectral_store,
    photometry_template,
    pixel_scale_arcsec,
    read_arrays,
    run_signature,
    spatial_dims,
    with_region_arrays,
    write_store,
)
from survey_proc.synth._mock import MockConfig, galaxy_maps, truth_dataset
from survey_proc.synth._photometry import (
    PhotometrySynthesiser,
    ab_magnitude,
    band_noise,
    sky_line_windows,
    synthetic_photometry,
)

#: attributes of a cube that a photometric store made from it keeps
_KEPT_ATTRS = ("redshift", "pixel_scale_arcsec", "instrument", "source", "mock_config", "ssp_library")
#: the arrays each region of a photometric store writes
_NAMES = ("flux", "var", "mask", "mag", "mag_err")


@dataclass(frozen=True)
class SyntheticPhotometry:
    """What :func:`photometry_from_store` wrote."""

    path: str
    spectra: int
    bands: int
    seconds: float
    spectra_per_s: float  #: over the regions computed, cluster start-up excluded
    bands_short_of_coverage: list[str]  #: masked everywhere: the spectra do not cover them
    truth: bool  #: a mock's truth maps were copied along
    regions_resumed: int = 0  #: regions an earlier, cut-short write had finished


@dataclass(frozen=True)
class MockPhotometry:
    """What :func:`write_mock_photometry` wrote."""

    path: str
    pixels: int
    bands: int
    seconds: float
    r_e_spaxel: float


@dataclass(frozen=True)
class BandIntegrals:
    """Synthetic photometry of one region of a cube or catalogue (the ``compute`` of its regions;
    small and picklable, so it runs on Dask workers, which read the region themselves)."""

    cube: str
    wave: np.ndarray
    filters: FilterSet
    unit: float  #: the cube's flux unit, erg/s/cm2/A
    sky: np.ndarray  #: (nwave,) pixels left out of the band integrals (bright sky lines)
    min_coverage: float
    max_masked: float

    def __call__(self, region: Region) -> dict[str, np.ndarray]:
        read = read_arrays(self.cube, ["flux", "var", "mask"], region.block)
        flux, var, mask = read["flux"], read["var"], read["mask"]
        shape, nwave = flux.shape[:-1], flux.shape[-1]
        ph = synthetic_photometry(
            flux.reshape(-1, nwave),
            var.reshape(-1, nwave),
            mask.reshape(-1, nwave) | self.sky[None, :],
            self.wave,
            self.filters,
            self.unit,
            self.min_coverage,
            self.max_masked,
        )
        mag, err = ph.ab()
        values = (ph.flux, ph.var, ph.mask, mag.astype(np.float32), err.astype(np.float32))
        return {name: a.reshape(*shape, len(self.filters)) for name, a in zip(_NAMES, values)}


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
) -> SyntheticPhotometry:
    """Synthetic photometry of every spectrum of ``cube`` through ``filters``, written to ``out``.

    One region per stored chunk of the cube, computed on the Dask client of ``cluster`` (default
    ``survey-proc.run.cluster``; ``none``: here) and written by the worker that computed it.
    ``mask_sky`` leaves the pixels within 2 FWHM of the bright night-sky lines (:data:`SKY_LINES`) out
    of the band integrals, as the spectral models mask them: IFU sky-subtraction residuals there would
    otherwise bias the narrow bands that hold them by several per cent in faint pixels.
    """
    t0 = time.perf_counter()
    ds = open_spectral_store(cube, require_redshift=False)
    dims = spatial_dims(ds)
    wave = np.asarray(ds["wave"].values, np.float64)
    sky = sky_line_windows(wave, lsf_fwhm_at(ds)) if mask_sky else np.zeros(wave.size, bool)
    compute = BandIntegrals(str(cube), wave, filters, _flux_unit(ds, cube), sky, min_coverage, max_masked)
    coverage = synthetic_photometry(np.zeros((1, wave.size)), None, None, wave, filters).coverage
    sizes = {d: ds.sizes[d] for d in dims}
    chunks = {d: int(max(ds["flux"].chunks[i])) for i, d in enumerate(ds["flux"].dims) if d in dims}
    template = _photometry_of(ds, filters, sizes, chunks, _attrs(ds, cube, filters, mask_sky, coverage))
    identity = {"content": content_fingerprint(cube), "filters": _filters_id(filters), "mask_sky": mask_sky}
    identity |= {"min_coverage": min_coverage, "max_masked": max_masked, "software": __version__}
    truth = _truth(cube)
    with make_client(cluster or config.get("run.cluster"), workers, 1) as client:
        t_compute = time.perf_counter()
        written = write_store(
            out,
            with_region_arrays(template, sizes, chunks),
            make_regions(sizes, chunks),
            compute,
            signature=run_signature(identity),
            what="photometry",
            names=list(_NAMES),
            inputs=[cube],
            groups={"truth": truth} if truth is not None else None,
            client=client,
            desc="photometry",
        )
        compute_seconds = time.perf_counter() - t_compute
    n = int(np.prod(list(sizes.values())))
    return SyntheticPhotometry(
        path=str(out),
        spectra=n,
        bands=len(filters),
        seconds=time.perf_counter() - t0,
        spectra_per_s=n / compute_seconds,
        bands_short_of_coverage=[b for b, c in zip(filters.bands, coverage) if c < min_coverage],
        truth=truth is not None,
        regions_resumed=written.resumed,
    )


def _filters_id(filters: FilterSet) -> str:
    """The identity of a filter set: its name, bands and curves."""
    h = hashlib.sha256(f"{filters.name}{filters.bands}".encode())
    h.update(np.ascontiguousarray(filters.wave).tobytes() + np.ascontiguousarray(filters.response).tobytes())
    return h.hexdigest()[:16]


def _truth(cube: str | os.PathLike) -> xr.Dataset | None:
    """A mock's ``truth`` group, to be copied along (None if the cube has none)."""
    if "truth" not in zarr.open_group(str(cube), mode="r"):
        return None
    return xr.open_zarr(cube, group="truth", consolidated=False)


def _photometry_of(
    ds: xr.Dataset, filters: FilterSet, sizes: dict[str, int], chunks: dict[str, int], attrs: dict
) -> xr.Dataset:
    """The template of the photometry of ``ds``: its spatial coordinates kept, the curves beside."""
    # loaded: the template's lazy arrays are never computed, its NumPy ones are written with it
    coords = {k: v.variable.compute() for k, v in ds["flux"].coords.items() if SPECTRAL_DIM not in v.dims}
    template = photometry_template(spatial=sizes, filters=filters, attrs=attrs, chunk=chunks, coords=coords)
    if "redshift" in ds and ds["redshift"].dims == tuple(sizes):  # a catalogue's redshift per object
        template["redshift"] = ds["redshift"].variable.compute()
    return template.drop_vars([c for c in (SPECTRAL_DIM,) if c in template.coords])


def _attrs(ds: xr.Dataset, cube: str | os.PathLike, filters: FilterSet, mask_sky: bool, coverage) -> dict:
    return {
        "photometric_system": "AB",
        **{k: ds.attrs[k] for k in _KEPT_ATTRS if k in ds.attrs},
        "synthetic_photometry_of": str(Path(cube).resolve()),
        "sky_lines_masked": int(mask_sky),
        "band_coverage": [float(c) for c in coverage],
        "software": f"survey-proc {__version__}",
    }


def write_mock_photometry(
    path: str | os.PathLike,
    cfg: MockConfig,
    filters: FilterSet,
    lib: SSPLibrary | None = None,
    synthesiser: PhotometrySynthesiser | None = None,
) -> MockPhotometry:
    """Photometric store of the mock galaxy of ``cfg`` through ``filters``, with its truth maps.

    The galaxy, its populations and truth are those :func:`~survey_proc.synth.write_mock` builds
    for the same config; fluxes come from :class:`PhotometrySynthesiser` (nebular lines included),
    noise per band from the cube's noise model (:func:`band_noise`: S/N ``cfg.snr`` per Angstrom at the
    brightest spaxel, integrated over each band), and a fraction ``cfg.bad_pixel_fraction`` of
    measurements masked. The whole galaxy is made at once (a seeing blurs across regions), then
    written region by region through :func:`~survey_proc.stores.write_store`.
    """
    t0 = time.perf_counter()
    cfg.check()
    check_output(path, what="photometry")  # before the galaxy is made
    lib = lib or load_ssp_library(cfg.library)
    maps, flux, var, mask = mock_band_fluxes(cfg, lib, filters, synthesiser)
    mag, err = ab_magnitude(flux, var)
    arrays = {"flux": flux, "var": var, "mask": mask, "mag": mag.astype(np.float32), "mag_err": err.astype(np.float32)}
    attrs = {
        "redshift": cfg.redshift,
        "pixel_scale_arcsec": cfg.pixel_scale_arcsec,
        "psf_fwhm_arcsec": cfg.psf_fwhm_pixels * cfg.pixel_scale_arcsec,
        "instrument": f"{filters.name} imaging (mock)",
        "source": "survey-proc mock photometry",
        "software": f"survey-proc {__version__}",
        "mock_config": str(asdict(cfg)),
        "ssp_library": lib.provenance.get("source", "E-MILES"),
        "ssp_library_name": lib.name,
    }
    sizes, chunks = {"y": cfg.ny, "x": cfg.nx}, {"y": cfg.chunk, "x": cfg.chunk}
    template = photometry_template(spatial=sizes, filters=filters, attrs=attrs, chunk=cfg.chunk)
    identity = {"mock": asdict(cfg), "filters": _filters_id(filters), "library": lib.provenance.get("sha256")}
    identity["software"] = __version__
    write_store(
        path,
        with_region_arrays(template, sizes, chunks),
        make_regions(sizes, chunks),
        lambda region: {name: a[region.block] for name, a in arrays.items()},
        signature=run_signature(identity),
        what="photometry",
        names=list(_NAMES),
        groups={"truth": truth_dataset(maps, lib, cfg, sfr=True)},
        desc="mock regions",
    )
    return MockPhotometry(str(path), cfg.nx * cfg.ny, len(filters), time.perf_counter() - t0, maps.r_e)


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


def _flux_unit(ds: xr.Dataset, cube) -> float:
    """erg/s/cm^2/Angstrom per pixel of one unit of the cube's flux; refuses a cube that is not flux-calibrated."""
    unit, why = flux_unit_cgs(str(ds["flux"].attrs.get("units", "")), pixel_scale_arcsec(ds.attrs))
    if unit is None:
        raise CubeError(f"{cube}: cannot integrate its spectra into band fluxes: {why} (e.g. '1e-20 erg/s/cm2/A')")
    return unit
