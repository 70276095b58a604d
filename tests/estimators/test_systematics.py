"""A manifest's ``error_systematics``: terms added in quadrature to the errors the model reports, one of
them growing with the novelty score."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from survey_proc.engine._template import output_variables
from survey_proc.errors import ModelError
from survey_proc.estimators import ErrorSystematics, TorchScriptEstimator, read_manifest


def test_terms_add_in_quadrature_keeping_dtype_and_nans():
    out = {
        "log_age": np.array([9.0, 9.5, 10.0], np.float32),
        "log_age_err": np.array([0.03, np.nan, 0.0], np.float32),
        "av_err": np.array([0.1, 0.2, 0.3], np.float32),
    }
    ErrorSystematics(terms={"log_age": 0.04, "av": 0.0}).add(out)
    assert out["log_age_err"].dtype == np.float32
    np.testing.assert_allclose(out["log_age_err"][[0, 2]], [0.05, 0.04], rtol=1e-6)
    assert np.isnan(out["log_age_err"][1])
    np.testing.assert_array_equal(out["av_err"], np.array([0.1, 0.2, 0.3], np.float32))  # a zero term: unchanged
    np.testing.assert_array_equal(out["log_age"], np.array([9.0, 9.5, 10.0], np.float32))


def test_the_novelty_term_ramps_with_the_score():
    sys = ErrorSystematics(
        terms={"metallicity": 0.03}, novelty_terms={"metallicity": 0.4}, novelty_output="ood_score", novelty_from=1.0,
        novelty_to=2.0,
    )  # fmt: skip
    score = np.array([0.5, 1.0, 1.5, 2.0, 9.0, np.nan], np.float32)
    np.testing.assert_allclose(sys.weight(score), [0, 0, 0.5, 1, 1, 0])
    out = {"ood_score": score, "metallicity_err": np.full(6, 0.04, np.float32)}
    sys.add(out)
    expected = np.sqrt(0.04**2 + 0.03**2 + (np.array([0, 0, 0.5, 1, 1, 0]) * 0.4) ** 2)
    np.testing.assert_allclose(out["metallicity_err"], expected, rtol=1e-6)
    assert sys.describe("metallicity")["systematic_novelty_term"] == 0.4 and sys.describe("av") == {}


def _bundle_with(tmp_path, default_bundle, entry):
    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle, bundle)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw.pop("error_systematics", None)
    if entry is not None:
        raw["error_systematics"] = entry
    (bundle / "manifest.json").write_text(json.dumps(raw))
    return read_manifest(bundle)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"terms": {"snr": 0.1}}, r"outputs without errors \(snr\)"),
        ({"terms": {"log_age": -0.1, "av": "x"}}, r"terms.log_age is not a number >= 0; terms.av is not"),
        ({"novelty": {"output": "nope", "from": 1, "to": 2, "terms": {}}}, "'nope' is not an output"),
        ({"novelty": {"output": "ood_score", "from": 2, "to": 1, "terms": {}}}, "to is not above"),
        ({"novelty": {"output": "ood_score", "terms": {}}}, "needs numbers 'from' and 'to'"),
        ([0.1], "not a mapping"),
    ],
)
def test_a_bad_error_systematics_is_refused_with_its_reasons(tmp_path, default_bundle, entry, message):
    with pytest.raises(ModelError, match=message):
        _ = _bundle_with(tmp_path, default_bundle, entry).error_systematics


def test_the_estimator_returns_the_grown_errors_and_the_maps_say_so(tmp_path, default_bundle):
    plain = _bundle_with(tmp_path / "a", default_bundle, None)
    entry = {
        "terms": {"log_age": 0.07, "metallicity": 0.11},
        "novelty": {"output": "ood_score", "from": 0.0, "to": 1e-6, "terms": {"metallicity": 0.2}},
    }
    calibrated = _bundle_with(tmp_path / "b", default_bundle, entry)
    assert not plain.error_systematics and calibrated.error_systematics.names() == {"log_age", "metallicity"}
    spec = plain.input
    rng = np.random.default_rng(0)
    x = np.ones((6, len(spec.channels), spec.wave.size), np.float32)
    x[:, 0] += 0.05 * rng.standard_normal((6, spec.wave.size)).astype(np.float32)
    x[:, 1], x[:, 2] = 0.03, 0.0
    a, b = TorchScriptEstimator(plain).predict(x), TorchScriptEstimator(calibrated).predict(x)
    assert (a["ood_score"] > 1e-6).all()  # the novelty term in full
    np.testing.assert_allclose(b["log_age_err"], np.hypot(a["log_age_err"], 0.07), rtol=1e-5)
    np.testing.assert_allclose(b["metallicity_err"], np.sqrt(a["metallicity_err"] ** 2 + 0.11**2 + 0.2**2), rtol=1e-5)
    for name in ("log_age", "metallicity", "av", "sigma"):
        np.testing.assert_array_equal(a[name], b[name])  # the estimates themselves do not move
    for name in ("av", "sigma"):
        np.testing.assert_array_equal(a[f"{name}_err"], b[f"{name}_err"])
    attrs = {name: a for name, _, a, _ in output_variables(calibrated)}
    assert (
        attrs["log_age_err"]["systematic_term"] == 0.07 and attrs["metallicity_err"]["systematic_novelty_term"] == 0.2
    )
    assert not any(k.startswith("systematic") for k in attrs["av_err"])


def test_the_library_term_is_its_own_map_and_leaves_the_error_alone():
    out = {
        "metallicity": np.array([0.0, 0.1, np.nan], np.float32),
        "metallicity_err": np.array([0.05, 0.06, np.nan], np.float32),
        "av_err": np.array([0.1, 0.2, 0.3], np.float32),
    }
    sys = ErrorSystematics(terms={"av": 0.1}, library_terms={"metallicity": 0.21})
    assert sys and sys.names() == {"av", "metallicity"}
    sys.add(out)
    np.testing.assert_array_equal(out["metallicity_err"], np.array([0.05, 0.06, np.nan], np.float32))
    assert out["metallicity_sys_err"].dtype == np.float32
    np.testing.assert_allclose(out["metallicity_sys_err"][:2], [0.21, 0.21], rtol=1e-6)
    assert np.isnan(out["metallicity_sys_err"][2])  # no error, no systematic either
    assert "av_sys_err" not in out and sys.describe("metallicity")["sys_err_map"].startswith("metallicity_sys_err")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"library": {"metallicity": -0.2}}, r"library.metallicity is not a number >= 0"),
        ({"library": {"ood_score": 0.2}}, r"outputs without errors \(ood_score\)"),
        ({"library": [0.2]}, r"library is not a mapping"),
    ],
)
def test_a_bad_library_term_is_refused(tmp_path, default_bundle, entry, message):
    with pytest.raises(ModelError, match=message):
        _ = _bundle_with(tmp_path, default_bundle, entry).error_systematics


def test_a_run_writes_the_library_systematic_beside_the_error_and_into_fits(tmp_path, default_bundle, cube_copy):
    import zarr
    from astropy.io import fits

    from survey_proc.engine import RunConfig, run
    from survey_proc.stores import export_maps_fits, open_maps

    calibrated = _bundle_with(tmp_path, default_bundle, {"library": {"metallicity": 0.19, "log_age": 0.05}})
    flux = zarr.open_group(str(cube_copy), mode="r+")["flux"]
    flux[3, 4, :] = np.full(flux.shape[-1], np.nan, np.float32)  # a spaxel with no data: not fitted
    maps = tmp_path / "maps.zarr"
    run(RunConfig(cube=str(cube_copy), out=str(maps), model=str(calibrated.path), cluster="none", progress=False,
                  plot=False))  # fmt: skip
    ds = open_maps(maps)
    fitted = np.isfinite(ds["metallicity_err"].values)
    assert fitted.sum() == fitted.size - 1 and not fitted[3, 4]
    np.testing.assert_allclose(ds["metallicity_sys_err"].values[fitted], 0.19, rtol=1e-6)
    assert np.isnan(ds["metallicity_sys_err"].values[~fitted]).all()
    assert "av_sys_err" not in ds and "sigma_sys_err" not in ds
    attrs = ds["metallicity_sys_err"].attrs
    assert attrs["units"] == ds["metallicity"].attrs["units"] and "SSP-library systematic" in attrs["long_name"]
    assert attrs["ssp_library_systematic"] == pytest.approx(0.19)
    assert ds["metallicity_err"].attrs["sys_err_map"].startswith("metallicity_sys_err")
    export_maps_fits(maps, tmp_path / "maps.fits")
    with fits.open(tmp_path / "maps.fits") as hdul:
        assert hdul["METALLICITY"].header["SYSDATA"] == "METALLICITY_SYS_ERR"
        np.testing.assert_allclose(hdul["METALLICITY_SYS_ERR"].data[fitted], 0.19, rtol=1e-6)
        assert "LOG_AGE_SYS_ERR" in hdul and "AV_SYS_ERR" not in hdul


def test_the_fit_reports_a_library_systematic_its_manifest_names(tmp_path):
    from conftest import write_small_mock

    from survey_proc.engine import RunConfig, run
    from survey_proc.estimators import resolve_model
    from survey_proc.stores import open_maps

    bundle = tmp_path / "fit"
    shutil.copytree(resolve_model("fit").parent, bundle)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["error_systematics"] = {"library": {"av": 0.12, "metallicity": 0.2}}
    (bundle / "manifest.json").write_text(json.dumps(raw))
    cube = write_small_mock(tmp_path / "c.zarr", seed=5, n=4, chunk=4)
    run(RunConfig(cube=str(cube), out=str(tmp_path / "m.zarr"), model=str(bundle), cluster="none", progress=False,
                  plot=False))  # fmt: skip
    ds = open_maps(tmp_path / "m.zarr")
    fitted = np.isfinite(ds["av_err"].values)
    assert fitted.any()
    np.testing.assert_allclose(ds["av_sys_err"].values[fitted], 0.12, rtol=1e-6)
    np.testing.assert_allclose(ds["metallicity_sys_err"].values[fitted], 0.2, rtol=1e-6)
    assert "log_age_sys_err" not in ds and "log_age_err" in ds


def test_a_failed_fit_blanks_the_library_systematic_too(tmp_path, default_bundle):
    from survey_proc.engine._estimate import _flag_and_blank
    from survey_proc.stores import FLAG_DTYPE, Flag

    manifest = _bundle_with(tmp_path, default_bundle, {"library": {"metallicity": 0.2}})
    n = 3
    outputs = {name: np.full((n, *(len(c) for c in coords.values())), 0.5, np.float32)
               for name, _, _, coords in output_variables(manifest)}  # fmt: skip
    outputs["metallicity"][1] = np.nan  # the estimator returned no number for row 1
    flags = np.zeros(n, FLAG_DTYPE)
    _flag_and_blank(manifest, outputs, flags, np.ones(n, bool))
    assert flags[1] & FLAG_DTYPE(Flag.FIT_FAILED)
    assert np.isnan(outputs["metallicity_sys_err"][1]) and np.isnan(outputs["metallicity_err"][1])
    np.testing.assert_array_equal(outputs["metallicity_sys_err"][[0, 2]], [0.5, 0.5])
