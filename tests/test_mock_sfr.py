"""The star-formation-rate truth of the mocks: SFR over the last 100 Myr from their histories, in the
photometric mocks' truth (not the cubes', whose golden outputs stay as they were), and H-alpha
following it in the varied training galaxies."""

from __future__ import annotations

import numpy as np
import xarray as xr

from survey_proc.ssp import load_filters
from survey_proc.synth import (
    SFR_FLOOR,
    GalaxyParams,
    MockConfig,
    constant_sfh,
    galaxy_maps,
    sfr_per_light,
    write_mock,
    write_mock_photometry,
)


def test_sfr_of_a_constant_history_is_its_mass_over_its_duration(ssp_lib):
    for duration in (2e8, 1e9, 5e9):
        w = constant_sfh(ssp_lib, duration, np.array([0.0, -0.5]))
        initial_mass_per_light = (w / ssp_lib.light_in_window()).sum(axis=(1, 2))
        np.testing.assert_allclose(sfr_per_light(w, ssp_lib) / initial_mass_per_light, 1 / duration, rtol=1e-9)
    old = np.zeros((1, ssp_lib.metal.size, ssp_lib.log_age.size))
    old[0, 3, -1] = 1.0  # one 15.8 Gyr SSP: no recent star formation
    assert sfr_per_light(old, ssp_lib)[0] == 0.0


def test_photometric_mocks_carry_the_sfr_truth_and_cubes_keep_theirs(tmp_path, ssp_lib):
    cfg = MockConfig(nx=12, ny=12, chunk=12, galaxy=GalaxyParams(young_disc=0.05, young_sfh="constant"))
    write_mock_photometry(tmp_path / "p.zarr", cfg, load_filters("sdss"), ssp_lib)
    truth = xr.open_zarr(tmp_path / "p.zarr", group="truth")
    sfr = truth.log_sfr_surface_density.values
    assert truth.log_sfr_surface_density.attrs["units"] == "log10(Msun/yr/kpc2)"
    assert (sfr > np.log10(2 * SFR_FLOOR)).all() and (sfr < 1).all()  # diffuse star formation everywhere
    write_mock(tmp_path / "c.zarr", MockConfig(nx=4, ny=4, chunk=4), ssp_lib)
    assert "log_sfr_surface_density" not in xr.open_zarr(tmp_path / "c.zarr", group="truth")


def test_halpha_follows_the_star_formation_rate(ssp_lib):
    from survey_proc.synth._mock import halpha_equivalent_width

    g = GalaxyParams(young_disc=0.1, young_sfh="constant", halpha_from_sfr=True, arm_strength=0.0)
    cfg = MockConfig(nx=8, ny=8, galaxy=g)
    maps = galaxy_maps(cfg, ssp_lib, np.random.default_rng(0))
    ew = halpha_equivalent_width(maps.weights, ssp_lib, cfg.redshift)
    np.testing.assert_allclose(maps.halpha / maps.light, ew, rtol=1e-6)
    assert 1 < np.median(ew) < 100  # Angstrom: a star-forming disc
