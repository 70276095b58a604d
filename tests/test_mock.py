"""Mock cubes: realistic ingredients and truth maps that follow from what was put in."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from survey_proc.stores import open_cube
from survey_proc.synth import light_weighted, mass_weighted


def test_mock_store_follows_the_schema(mock16):
    ds = open_cube(mock16)
    assert dict(ds.flux.sizes) == {"y": 16, "x": 16, "wave": 3681}
    # written region by region (chunks of 8: 2 x 2 regions), every region verified and marked
    assert ds.region_done.dims == ("region_y", "region_x") and ds.region_done.values.all()
    assert ds.region_spectra.values.sum() == 256 and ds.attrs["survey_proc_store"] == "cube"
    assert ds.wave.attrs["frame"] == "observed" and ds.wave.attrs["medium"] == "air"
    assert float(ds.wave[0]) == 4750.0 and float(ds.wave[-1]) == 9350.0
    assert ds.attrs["redshift"] == pytest.approx(0.008)
    assert ds["lsf_fwhm"].shape == (3681,)


def test_truth_follows_from_the_weights(mock16, ssp_lib):
    t = xr.open_zarr(mock16, group="truth")
    for name in ("log_age", "metallicity", "av", "sigma", "velocity", "log_age_mw", "metallicity_mw"):
        assert name in t and t[name].attrs["units"]
    w = np.swapaxes(t.weights.values.astype(float), -1, -2)  # (y, x, metal, age)
    assert np.allclose(w.sum(axis=(-2, -1)), 1.0, atol=1e-5)
    la, mh = light_weighted(w, ssp_lib)
    np.testing.assert_allclose(t.log_age.values, la, atol=1e-5)
    np.testing.assert_allclose(t.metallicity.values, mh, atol=1e-5)
    lam, _ = mass_weighted(w, ssp_lib)
    assert np.nanmean(lam - la) > 0  # mass-weighted ages are older than light-weighted ones
    # several SSPs per spaxel, not one
    assert np.median((w > 0.01).sum(axis=(-2, -1))) >= 3


def test_galaxy_structure_gradients_dust_kinematics(mock16):
    t = xr.open_zarr(mock16, group="truth").load()
    r = t.radius.values / t.attrs["r_e_spaxel"]
    inner, outer = r < 0.5, r > 1.2
    assert t.log_age.values[inner].mean() > t.log_age.values[outer].mean() + 0.2
    assert t.metallicity.values[inner].mean() > t.metallicity.values[outer].mean() + 0.1
    assert t.av.values.min() >= 0 and t.av.values.max() <= 1.5 and t.av.values.std() > 0.1
    assert t.sigma.values[inner].mean() > t.sigma.values[outer].mean() + 40
    v = t.velocity.values
    assert v.max() > 50 and v.min() < -50  # a rotating disc
    assert (t.halpha_flux.values > 0).mean() > 0.05  # star-forming arms with emission


def test_noise_matches_the_requested_snr_and_falls_outwards(mock16):
    ds = open_cube(mock16).load()
    t = xr.open_zarr(mock16, group="truth")
    f, v = ds.flux.values, ds["var"].values
    with np.errstate(invalid="ignore"):
        snr = np.nanmedian(f / np.sqrt(v), axis=-1) / np.sqrt(1.25)
    centre = np.unravel_index(np.argmax(t.light.values), t.light.shape)
    assert snr[centre] == pytest.approx(30.0, rel=0.15)
    assert snr[0, 0] < 0.6 * snr[centre]
    # the noise really is what the variance says: residual from a smoothed spectrum
    spec = f[centre]
    ok = np.isfinite(spec)
    resid = (spec[ok][1:-1] - 0.5 * (spec[ok][:-2] + spec[ok][2:])) / np.sqrt(1.5 * v[centre][ok][1:-1])
    assert 0.8 < np.std(resid[np.abs(resid) < 10]) < 1.3


def test_emission_lines_and_sky_residuals_are_present(mock16):
    ds = open_cube(mock16)
    t = xr.open_zarr(mock16, group="truth")
    z = ds.attrs["redshift"]
    wave = ds.wave.values
    y, x = np.unravel_index(np.argmax(t.halpha_flux.values), t.halpha_flux.shape)
    spec = ds.flux[y, x].values
    ha = np.abs(wave - 6562.8 * (1 + z)) < 10
    cont = (wave > 6620 * (1 + z)) & (wave < 6680 * (1 + z))
    assert np.nanmax(spec[ha]) > np.nanmedian(spec[cont]) * 1.5
    var = ds["var"][y, x].values
    sky = np.abs(wave - 5577.34) < 2
    assert var[sky].max() > 3 * np.median(var)


def test_same_seed_same_cube(tmp_path, ssp_lib):
    from survey_proc.synth import MockConfig, write_mock

    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    for p in (a, b):
        write_mock(p, MockConfig(nx=6, ny=6, seed=3, chunk=4), ssp_lib)
    np.testing.assert_array_equal(xr.open_zarr(a).flux.values, xr.open_zarr(b).flux.values)
