"""A mock cube written to a store: the galaxy of :mod:`._mock` observed region by region, with noise.

:func:`write_mock` draws the galaxy once, then synthesises its spectra one region (a chunk of
``cfg.chunk`` x ``cfg.chunk`` spaxels) at a time through :func:`survey_proc.stores.write_store`, so
memory stays bounded whatever the cube size, the store is verified, and a write cut short resumes.
Each region's noise has its own seed (``[cfg.seed, k]``, k its row-major position), so the cube does
not depend on the order of work nor on the threads.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
from dask.system import CPU_COUNT

from survey_proc import __version__
from survey_proc.ssp import SSPLibrary, load_ssp_library, muse_lsf_fwhm
from survey_proc.stores import (
    Region,
    check_output,
    cube_template,
    make_regions,
    run_signature,
    with_region_arrays,
    write_store,
)
from survey_proc.synth._mock import GalaxyMaps, MockConfig, galaxy_maps, truth_dataset
from survey_proc.synth._spectra import Synthesiser, emission_line_spectra, sky_line_profile

#: the flux unit of mock cubes, as stored
MOCK_FLUX_UNITS = "1e-20 erg/s/cm2/Angstrom"


@dataclass(frozen=True)
class MockCube:
    """What :func:`write_mock` wrote."""

    path: str
    spaxels: int
    wavelengths: int
    seconds: float
    r_e_spaxel: float  #: effective radius of the galaxy, spaxels
    regions_resumed: int = 0  #: regions an earlier, cut-short write had finished


@dataclass(frozen=True)
class NoiseModel:
    """var = gain F + sky + sky lines; S/N per Angstrom ``cfg.snr`` at the brightest spaxel."""

    gain: float
    sky_var: float
    sky_line_var: np.ndarray  #: (nwave,)
    sky_resid: np.ndarray  #: (nwave,) sky-line residual added to every spectrum

    @classmethod
    def of(cls, cfg: MockConfig, sky_profiles: np.ndarray, sky_amp: np.ndarray) -> NoiseModel:
        peak = cfg.peak_flux
        snr_pix = cfg.snr * np.sqrt(cfg.wave_step)
        gain = peak / (snr_pix**2 * (1 + cfg.sky_fraction))
        sky_var = cfg.sky_fraction * gain * peak
        sky_line_var = sky_var * 30.0 * sky_profiles.max(axis=0)
        sky_resid = (sky_amp[:, None] * sky_profiles).sum(axis=0) * np.sqrt(sky_line_var)
        return cls(gain, sky_var, sky_line_var, sky_resid)

    def variance(self, flux: np.ndarray) -> np.ndarray:
        return self.gain * np.clip(flux, 0, None) + self.sky_var + self.sky_line_var[None, :]


@dataclass
class MockRegions:
    """Computes the ``flux``, ``var``, ``mask`` of one region of the mock (``compute`` of :func:`write_store`)."""

    cfg: MockConfig
    maps: GalaxyMaps
    synth: Synthesiser
    noise: NoiseModel
    order: dict[str, int]  #: region key -> row-major position (the region's noise seed)
    covered: np.ndarray | None = None  #: (nwave,) wavelengths the library covers (None: all)

    def __call__(self, region: Region) -> dict[str, np.ndarray]:
        cfg, maps = self.cfg, self.maps
        sub = region.block
        shape = tuple(s.stop - s.start for s in sub)
        r_rng = np.random.default_rng([cfg.seed, self.order[region.key]])
        scale = maps.light / maps.light.max() * cfg.peak_flux
        w = maps.weights[sub].reshape(-1, *maps.weights.shape[2:])
        av, velocity = maps.av[sub].ravel(), maps.velocity[sub].ravel()
        flux = self.synth.observe(w, av, velocity, maps.sigma[sub].ravel(), scale[sub].ravel())
        wave = self.synth.wave_obs
        halpha = (maps.halpha * cfg.peak_flux / maps.light.max())[sub].ravel()
        flux += emission_line_spectra(
            wave, cfg.redshift, halpha, velocity, np.full(flux.shape[0], 30.0), av, muse_lsf_fwhm
        )
        var = self.noise.variance(flux)
        noise = r_rng.standard_normal(flux.shape).astype(np.float32) * np.sqrt(var)
        observed = flux + noise + self.noise.sky_resid[None, :].astype(np.float32)
        mask = r_rng.random(flux.shape) < cfg.bad_pixel_fraction
        observed[mask] = np.nan
        if self.covered is not None:  # beyond the library: masked, no data
            mask[:, ~self.covered] = True
            observed[:, ~self.covered] = np.nan
            var[:, ~self.covered] = np.nan
        return {
            "flux": observed.reshape(*shape, -1).astype(np.float32),
            "var": var.reshape(*shape, -1).astype(np.float32),
            "mask": mask.reshape(*shape, -1),
        }


def write_mock(
    path: str | os.PathLike, cfg: MockConfig, lib: SSPLibrary | None = None, threads: int | None = None
) -> MockCube:
    """Build a mock cube store at ``path``: ``flux``, ``var``, ``mask`` (dims y, x, wave) and the
    truth maps in group ``truth``; ``threads``: regions made at once (None: the cores this process
    may use; the synthesis is NumPy work that mostly releases the GIL). Options no mock can be made
    with raise :class:`~survey_proc.errors.OptionError` before anything is written.
    """
    t0 = time.perf_counter()
    lib, cfg = _library_of(cfg, lib)
    cfg.check(lib)
    check_output(path, what="mock cube")  # before the galaxy is made
    rng = np.random.default_rng(cfg.seed)
    maps = galaxy_maps(cfg, lib, rng)
    wave = cfg.wave
    sky_profiles = sky_line_profile(wave, muse_lsf_fwhm)
    noise = NoiseModel.of(cfg, sky_profiles, rng.normal(0.0, 1.0, sky_profiles.shape[0]))
    sizes, chunks = {"y": cfg.ny, "x": cfg.nx}, {"y": cfg.chunk, "x": cfg.chunk}
    regions = make_regions(sizes, chunks)
    covered = cfg.covered(lib)
    compute = MockRegions(
        cfg,
        maps,
        Synthesiser(lib, wave, cfg.redshift, muse_lsf_fwhm),
        noise,
        {r.key: k for k, r in enumerate(regions)},
        None if covered.all() else covered,
    )
    template = cube_template(
        ny=cfg.ny,
        nx=cfg.nx,
        wave=wave,
        flux_units=MOCK_FLUX_UNITS,
        attrs=_attrs(cfg, lib, covered),
        chunk=cfg.chunk,
        lsf_fwhm=muse_lsf_fwhm(wave),
    )
    written = write_store(
        path,
        with_region_arrays(template, sizes, chunks),
        regions,
        compute,
        signature=run_signature(
            {"mock": asdict(cfg), "library": lib.provenance.get("sha256"), "software": __version__}
        ),
        what="cube",
        names=["flux", "var", "mask"],
        groups={"truth": truth_dataset(maps, lib, cfg)},
        threads=max(1, min(int(threads or CPU_COUNT), len(regions))),
        desc="mock regions",
    )
    return MockCube(
        str(path), cfg.nx * cfg.ny, wave.size, time.perf_counter() - t0, maps.r_e, regions_resumed=written.resumed
    )


def _library_of(cfg: MockConfig, lib: SSPLibrary | None) -> tuple[SSPLibrary, MockConfig]:
    """The library of the mock: ``lib`` if given (``cfg.library`` then names it), else ``cfg.library`` loaded."""
    if lib is None:
        return load_ssp_library(cfg.library), cfg
    return lib, cfg if lib.name == cfg.library else replace(cfg, library=lib.name)


def _attrs(cfg: MockConfig, lib: SSPLibrary, covered: np.ndarray) -> dict:
    attrs = {
        "redshift": cfg.redshift,
        "instrument": "MUSE (mock)",
        "lsf": "MUSE, Bacon et al. (2017) eq. 8",
        "source": "survey-proc mock",
        "software": f"survey-proc {__version__}",
        "mock_config": str(asdict(cfg)),
        "ssp_library": lib.provenance.get("source", "E-MILES"),
        "ssp_library_name": lib.name,
        "ssp_library_role": lib.role,
        "pixel_scale_arcsec": cfg.pixel_scale_arcsec,
    }
    if not covered.all():
        wave = cfg.wave[covered]
        attrs["masked_beyond_library"] = (
            f"pixels outside {wave[0]:.2f}-{wave[-1]:.2f} A (observed) are masked: the SSP library "
            f"{lib.name!r} does not cover them ({int((~covered).sum())} of {covered.size})"
        )
    return attrs
