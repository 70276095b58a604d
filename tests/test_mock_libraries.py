"""Mocks from SSP libraries other than E-MILES: the truth on the library's grid, what the cube says
about its library, and the wavelengths a library does not cover (refused, or masked on request)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr

from survey_proc import ssp
from survey_proc.cli import main
from survey_proc.errors import DataUnavailableError, OptionError
from survey_proc.synth import MockConfig, Synthesiser, library_observed_range, light_weighted, write_mock


@pytest.fixture(scope="module")
def m11_miles():
    try:
        return ssp.load_ssp_library("m11-miles")
    except DataUnavailableError as exc:  # no registry and no cached wheel
        pytest.skip(str(exc))


def test_a_library_short_of_the_cube_is_refused_unless_masking(tmp_path, m11_miles):
    cfg = MockConfig(nx=6, ny=6, seed=4, chunk=6, library="m11-miles")
    with pytest.raises(OptionError, match=r"\(3550-7400 A rest frame\) does not cover.*--mask-uncovered"):
        write_mock(tmp_path / "refused.zarr", cfg, m11_miles)
    assert not (tmp_path / "refused.zarr").exists()

    info = write_mock(tmp_path / "m.zarr", dataclasses.replace(cfg, mask_uncovered=True), m11_miles)
    ds = xr.open_zarr(tmp_path / "m.zarr")
    lo, hi = library_observed_range(m11_miles, cfg.redshift)
    beyond = (ds.wave.values < lo) | (ds.wave.values > hi)
    assert beyond.sum() > 1000 and not beyond[ds.wave.values < 7000].any()  # the red end, from ~7390 A
    mask, flux, var = ds["mask"].values, ds.flux.values, ds["var"].values
    assert mask[..., beyond].all() and np.isnan(flux[..., beyond]).all() and np.isnan(var[..., beyond]).all()
    inside = ~mask[..., ~beyond]  # the covered part is a normal mock (a few random bad pixels)
    assert inside.mean() > 0.99 and np.isfinite(flux[..., ~beyond][inside]).all()
    assert ds.attrs["ssp_library_name"] == "m11-miles" and ds.attrs["ssp_library_role"] == "calibration"
    assert "M11-MILES" in ds.attrs["ssp_library"] and "are masked" in ds.attrs["masked_beyond_library"]
    assert "'library': 'm11-miles'" in ds.attrs["mock_config"] and info.spaxels == 36

    truth = xr.open_zarr(tmp_path / "m.zarr", group="truth")
    assert truth.attrs["ssp_library"] == "m11-miles"
    np.testing.assert_allclose(truth.metal.values, m11_miles.metal)
    np.testing.assert_allclose(truth.age.values, m11_miles.log_age)
    w = np.swapaxes(truth.weights.values.astype(float), -1, -2)
    log_age, metal = light_weighted(w, m11_miles)
    np.testing.assert_allclose(truth.log_age.values, log_age, atol=1e-5)
    np.testing.assert_allclose(truth.metallicity.values, metal, atol=1e-5)
    assert m11_miles.metal[0] <= metal.min() and metal.max() <= m11_miles.metal[-1]


def test_a_library_covering_nothing_is_refused_even_when_masking(m11_miles):
    cfg = MockConfig(wave_start=8000.0, wave_stop=9000.0, library="m11-miles", mask_uncovered=True)
    with pytest.raises(OptionError, match="covers none of the cube's wavelengths"):
        cfg.check(m11_miles)


def test_masking_changes_nothing_where_the_library_covers_the_cube(tmp_path, ssp_lib):
    cfg = MockConfig(nx=4, ny=4, seed=5, chunk=4)
    write_mock(tmp_path / "a.zarr", cfg, ssp_lib)
    write_mock(tmp_path / "b.zarr", dataclasses.replace(cfg, mask_uncovered=True), ssp_lib)
    a, b = xr.open_zarr(tmp_path / "a.zarr"), xr.open_zarr(tmp_path / "b.zarr")
    for name in ("flux", "var", "mask"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert "masked_beyond_library" not in b.attrs and b.attrs["ssp_library_name"] == "emiles"


def test_a_given_library_names_the_mock(tmp_path, ssp_lib):
    renamed = dataclasses.replace(ssp_lib, name="bpass")  # the spectra of E-MILES, named otherwise
    write_mock(tmp_path / "c.zarr", MockConfig(nx=2, ny=2, chunk=2), renamed)
    ds = xr.open_zarr(tmp_path / "c.zarr")
    assert ds.attrs["ssp_library_name"] == "bpass" and "'library': 'bpass'" in ds.attrs["mock_config"]


def test_the_synthesiser_leaves_what_the_library_lacks_nan(ssp_lib):
    short = ssp_lib.crop(3000.0, 7000.0)
    wave = np.arange(4750.0, 9000.0, 1.25)
    synth = Synthesiser(short, wave, 0.01, lambda w: np.full_like(w, 2.6))
    weights = np.full((2, *short.flux.shape[:2]), 1.0 / short.n_templates)
    flux = synth.observe(weights, [0.2, 0.5], [0, 100], [80, 150])
    lo, hi = library_observed_range(short, 0.01)
    sound = (wave >= lo) & (wave <= hi)
    assert np.isfinite(flux[:, sound]).all() and np.isnan(flux[:, wave > short.wave[-1] * 1.01]).all()
    full = Synthesiser(ssp_lib, wave, 0.01, lambda w: np.full_like(w, 2.6))
    ref = full.observe(weights, [0.2, 0.5], [0, 100], [80, 150])
    np.testing.assert_allclose(flux[:, sound], ref[:, sound], rtol=2e-3)  # the same spectra where both cover


def test_cli_mock_library(tmp_path, capsys, m11_miles):
    from survey_proc.cli._data import LIBRARIES

    assert ssp.library_names() == LIBRARIES  # --help lists them without importing the library code
    cube = tmp_path / "m.zarr"
    argv = ["mock", str(cube), "--nx", "4", "--ny", "4", "--library", "m11-miles", "--quiet"]
    assert main(argv) == 2
    assert "--mask-uncovered" in capsys.readouterr().err
    assert main([*argv, "--mask-uncovered"]) == 0
    assert ", SSP library m11-miles) written to" in capsys.readouterr().out
    assert xr.open_zarr(cube).attrs["ssp_library_name"] == "m11-miles"
    assert main(["mock", str(tmp_path / "x.zarr"), "--library", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown SSP library 'nope'; known: emiles, m11-miles" in err and len(err.strip().splitlines()) == 1
