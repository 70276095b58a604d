"""pPXF behind the engine: its configuration, the template set, one known fit, a run on a LocalCluster."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("ppxf")

from survey_proc.engine import estimate_region
from survey_proc.estimators import load_estimator, load_manifest
from survey_proc.stores import Flag


@pytest.mark.parametrize("ppxf, model", [("ppxf", "default"), ("ppxf-7100", "muse-7100")])
def test_packaged_configuration_matches_the_model_inputs(ssp_lib, ppxf, model):
    """Each packaged pPXF configuration fits the range, and masks, of the neural model it is compared with."""
    m = load_manifest(ppxf)
    spec, neural = m.input, load_manifest(model).input
    assert m.estimator == "ppxf" and m.file is None
    assert spec.masks_rest == neural.masks_rest and spec.masks_observed == neural.masks_observed
    assert (spec.frame, spec.wave_start) == ("rest", neural.wave_start)
    assert neural.wave_stop - 10 < spec.wave[-1] <= neural.wave_stop
    dln = np.diff(np.log(spec.wave))
    np.testing.assert_allclose(dln * 299792.458, spec.velscale, rtol=1e-9)  # a ln-lambda grid
    weights = {o.name: o for o in m.outputs}["weights"]
    np.testing.assert_allclose(weights.coords["age"], ssp_lib.log_age, atol=1e-5)
    np.testing.assert_allclose(weights.coords["metal"], ssp_lib.metal, atol=1e-5)
    assert m.model_id.startswith(f"{ppxf}@") and len(m.digest) == 64  # no file: the manifest is hashed


def test_templates_are_light_normalised_and_lsf_matched(ssp_lib):
    from survey_proc.estimators import prepare_templates
    from survey_proc.ssp import LIGHT_WINDOW, log_wave_grid

    lam = log_wave_grid(4700.0, 7200.0, 64.0)
    sharp = prepare_templates(ssp_lib, lam, np.full(lam.size, ssp_lib.fwhm), lam)
    broad = prepare_templates(ssp_lib, lam, np.full(lam.size, 6.0), lam)
    assert sharp.shape == (lam.size, 25, 6) and np.isfinite(sharp).all()
    window = (lam >= LIGHT_WINDOW[0]) & (lam <= LIGHT_WINDOW[1])
    np.testing.assert_allclose(sharp[window].mean(axis=0), 1.0, rtol=0.02)
    # the broader LSF washes out absorption lines: less pixel-to-pixel structure
    assert np.abs(np.diff(broad, axis=0)).mean() < 0.8 * np.abs(np.diff(sharp, axis=0)).mean()


def test_one_fit_recovers_known_parameters(ssp_lib):
    """A single-SSP spectrum with known kinematics and dust, observed like MUSE, fitted by pPXF."""
    from survey_proc.ssp import muse_lsf_fwhm
    from survey_proc.synth import Synthesiser

    wave = 4750.0 + 1.25 * np.arange(3681)
    z = 0.01
    weights = np.zeros((1, 6, 25))
    weights[0, 4, 19] = 1.0  # [M/H] = 0, log age = 9.7
    synth = Synthesiser(ssp_lib, wave, z, muse_lsf_fwhm)
    flux = synth.observe(weights, np.array([0.4]), np.array([60.0]), np.array([120.0]), 100.0)
    var = (flux / 80.0) ** 2  # S/N 80 per pixel, noise-free so the answer is exact up to pPXF itself
    est = load_estimator("ppxf", threads=1)
    found = estimate_region(flux, var, np.zeros(flux.shape, bool), wave, z, est, 5.0, muse_lsf_fwhm(wave))
    out, flags, snr = found.outputs, found.flags, found.snr
    assert flags[0] == 0 and snr[0] > 50
    assert out["velocity"][0] == pytest.approx(60.0, abs=5.0)
    assert out["sigma"][0] == pytest.approx(120.0, abs=10.0)
    assert out["av"][0] == pytest.approx(0.4, abs=0.05)
    assert out["log_age"][0] == pytest.approx(ssp_lib.log_age[19], abs=0.08)
    assert out["metallicity"][0] == pytest.approx(0.0, abs=0.1)
    assert out["weights"].shape == (1, 25, 6) and out["weights"][0].sum() == pytest.approx(1.0, abs=1e-5)
    assert 0 < out["sigma_err"][0] < 10 and 0 < out["velocity_err"][0] < 10


def test_regularisation_is_a_manifest_option(tmp_path, ssp_lib):
    """A copy of the packaged configuration with ``regul`` set gives a smoother weight grid."""
    from survey_proc.ssp import muse_lsf_fwhm
    from survey_proc.synth import Synthesiser

    raw = json.loads(load_manifest("ppxf").path.read_text())
    raw["ppxf"]["regul"] = 100.0
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    wave = 4750.0 + 1.25 * np.arange(3681)
    weights = np.zeros((1, 6, 25))
    weights[0, 3, 14:18] = 0.25
    flux = Synthesiser(ssp_lib, wave, 0.0, muse_lsf_fwhm).observe(
        weights, np.array([0.2]), np.array([0.0]), np.array([100.0]), 100.0
    )
    var = (flux / 50.0) ** 2
    fits = {}
    for name, model in (("plain", "ppxf"), ("regularised", tmp_path)):
        est = load_estimator(model, threads=1)
        found = estimate_region(flux, var, np.zeros(flux.shape, bool), wave, 0.0, est, 5.0, muse_lsf_fwhm(wave))
        out, flags = found.outputs, found.flags
        assert flags[0] == 0
        fits[name] = out["weights"][0]
    assert (fits["regularised"] > 1e-3).sum() > (fits["plain"] > 1e-3).sum()


def test_a_failed_fit_gives_nan_and_fit_failed(mock16):
    import zarr

    est = load_estimator("ppxf", threads=1)
    grp = zarr.open_group(str(mock16), mode="r")
    flux = np.asarray(grp["flux"][8, 6:8])
    var, mask = np.asarray(grp["var"][8, 6:8]), np.asarray(grp["mask"][8, 6:8])
    original = est._ppxf
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise np.linalg.LinAlgError("SVD did not converge")
        return original(*args, **kwargs)

    est._ppxf = broken
    try:
        found = estimate_region(
            flux, var, mask, np.asarray(grp["wave"][:]), 0.008, est, 5.0, np.asarray(grp["lsf_fwhm"][:])
        )
        out, flags = found.outputs, found.flags
    finally:
        est._ppxf = original
    assert flags[0] & Flag.FIT_FAILED and np.isnan(out["log_age"][0]) and np.isnan(out["weights"][0]).all()
    assert flags[1] == 0 and np.isfinite(out["log_age"][1])


@pytest.fixture(scope="module")
def ppxf_run(tmp_path_factory, ssp_lib):
    """``survey-proc run --method ppxf`` on a 4 x 4 mock (S/N 60) with a LocalCluster of 2 workers."""
    from survey_proc.synth import MockConfig, write_mock

    cube = tmp_path_factory.mktemp("ppxf") / "c.zarr"
    write_mock(cube, MockConfig(nx=4, ny=4, seed=5, snr=60.0, chunk=2), ssp_lib)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "survey_proc",
            "run",
            "--cube",
            str(cube),
            "--method",
            "ppxf",
            "--workers",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    out = cube.with_name("c.ppxf.zarr")
    return proc.stdout, xr.open_zarr(out), xr.open_zarr(cube, group="truth")


def test_ppxf_maps_schema(ppxf_run):
    stdout, maps, _ = ppxf_run
    assert "spectra processed: 16 of 16" in stdout and "with 2 worker(s)" in stdout
    assert "every region verified" in stdout
    for name in ("log_age", "metallicity", "av", "sigma", "velocity", "chi2", "sigma_err", "velocity_err", "flag"):
        assert maps[name].dims == ("y", "x") and maps[name].attrs["units"], name
    assert maps["weights"].dims == ("y", "x", "age", "metal") and maps.sizes["age"] == 25
    np.testing.assert_allclose(maps["weights"].sum(("age", "metal")).values, 1.0, atol=1e-4)
    assert (maps.flag.values == 0).all()
    assert np.all((maps.chi2.values > 0.7) & (maps.chi2.values < 1.4))  # the noise model is right
    assert maps.attrs["model_estimator"] == "ppxf"
    assert maps.attrs["model_software"]["ppxf_version"]


def test_ppxf_maps_are_close_to_the_truth(ppxf_run):
    _, maps, truth = ppxf_run
    bounds = {"log_age": 0.1, "metallicity": 0.1, "av": 0.08, "sigma": 20.0, "velocity": 10.0}
    for name, bound in bounds.items():
        err = np.median(np.abs(maps[name].values - truth[name].values))
        assert err < bound, f"{name}: median |pPXF - truth| = {err:.3f} >= {bound}"
