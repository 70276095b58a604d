"""A network that rebuilds its spectra (``muse-recon``, ``muse-mix-recon``: issue 17's GalProTE design): the
light-fraction grid, the velocity and the reduced chi2 of the rebuilt spectrum in the maps, and ``poor_fit``
where the rebuilt spectrum does not match the data."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from survey_proc.engine import RunConfig, run
from survey_proc.estimators import load_manifest
from survey_proc.stores import Flag


@pytest.mark.parametrize("model", ["muse-recon", "muse-mix-recon", "muse-mix-recon-k5-distil"])
def test_a_rebuilding_network_rebuilds_its_spectra_and_flags_one_that_does_not_match(cube_copy, tmp_path, model):
    root = zarr.open_group(str(cube_copy), mode="r+")
    wave = root["wave"][:]
    flux = root["flux"]
    # a ripple the SSPs cannot make (20 % at a 60 A period) in four bright spaxels of the middle row
    ripple = (1.0 + 0.2 * np.sin(2 * np.pi * wave / 60.0)).astype(np.float32)
    flux[8, 6:10, :] = flux[8, 6:10, :] * ripple
    out = tmp_path / "m.zarr"
    summary = run(RunConfig(cube=str(cube_copy), out=str(out), model=model, cluster="none", progress=False))
    maps = xr.open_zarr(out)
    flag = maps.flag.values
    poor = (flag & int(Flag.POOR_FIT)) > 0
    # the run's summary says how well the spectra were rebuilt
    median = np.nanmedian(maps.chi2.values)
    assert f"rebuilt spectra: median chi2 {median:.2f}" in summary.format()
    assert summary.fit_quality.endswith(f"; poor_fit {int(poor.sum())}")
    rule = load_manifest(model).raw["flags"]["POOR_FIT"][0]
    assert rule["output"] == "chi2_floor" and rule["above"] >= 3.0
    assert np.array_equal(poor, np.nan_to_num(maps.chi2_floor.values) > rule["above"])
    assert poor[8, 6:10].all(), maps.chi2_floor.values[8, 6:10]  # the rippled spaxels
    clean = np.ones(flag.shape, bool)
    clean[8, 6:10] = False
    fitted = clean & np.isfinite(maps.chi2.values)
    assert poor[fitted].mean() < 0.02
    # in library the rebuilt spectra match the data to the noise
    assert 0.7 < np.median(maps.chi2.values[fitted]) < 1.5
    assert (maps.chi2_floor.values[fitted] <= maps.chi2.values[fitted] * (1 + 1e-5)).all()

    # the grid: light fractions summing to one, whose light-weighted age and [M/H] follow the network's
    ok = clean & (flag == 0)
    weights = maps.weights.transpose("y", "x", "age", "metal").values[ok]
    assert (weights >= 0).all() and np.allclose(weights.sum(axis=(1, 2)), 1.0, atol=1e-3)
    age = (weights.sum(axis=2) * maps.age.values).sum(axis=1)
    metal = (weights.sum(axis=1) * maps.metal.values).sum(axis=1)
    assert np.median(np.abs(age - maps.log_age.values[ok])) < 0.08
    assert np.median(np.abs(metal - maps.metallicity.values[ok])) < 0.08

    # the velocity against the mock's truth, within its errors for most spaxels
    truth = xr.open_zarr(cube_copy, group="truth")
    dv = (maps.velocity.values - truth.velocity.values)[ok]
    assert np.abs(np.median(dv)) < 15.0
    assert np.mean(np.abs(dv) < 2 * maps.velocity_err.values[ok]) > 0.85
