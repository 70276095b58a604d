"""A manifest's ``error_systematics``: terms added in quadrature to the errors the model reports."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from survey_proc.engine._template import output_variables
from survey_proc.errors import ModelError
from survey_proc.estimators import TorchScriptEstimator, add_systematics, read_manifest


def test_add_systematics_adds_in_quadrature_and_keeps_dtype_and_nans():
    out = {
        "log_age": np.array([9.0, 9.5, 10.0], np.float32),
        "log_age_err": np.array([0.03, np.nan, 0.0], np.float32),
        "av_err": np.array([0.1, 0.2, 0.3], np.float32),
    }
    add_systematics({"log_age": 0.04, "av": 0.0}, out)
    assert out["log_age_err"].dtype == np.float32
    np.testing.assert_allclose(out["log_age_err"][[0, 2]], [0.05, 0.04], rtol=1e-6)
    assert np.isnan(out["log_age_err"][1])
    np.testing.assert_array_equal(out["av_err"], np.array([0.1, 0.2, 0.3], np.float32))  # a zero term: unchanged
    np.testing.assert_array_equal(out["log_age"], np.array([9.0, 9.5, 10.0], np.float32))


def _bundle_with(tmp_path, default_bundle, terms):
    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle, bundle)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw.pop("error_systematics", None)
    if terms is not None:
        raw["error_systematics"] = terms
    (bundle / "manifest.json").write_text(json.dumps(raw))
    return read_manifest(bundle)


@pytest.mark.parametrize(
    ("terms", "message"),
    [({"snr": 0.1}, "without errors"), ({"log_age": -0.1}, "not a number >= 0"), ({"av": "x"}, "not a number")],
)
def test_a_bad_error_systematics_is_refused_with_its_reason(tmp_path, default_bundle, terms, message):
    with pytest.raises(ModelError, match=message):
        _ = _bundle_with(tmp_path, default_bundle, terms).error_systematics


def test_the_estimator_adds_the_manifest_terms_to_its_errors(tmp_path, default_bundle):
    plain = _bundle_with(tmp_path / "a", default_bundle, None)
    terms = {"log_age": 0.07, "metallicity": 0.11}
    calibrated = _bundle_with(tmp_path / "b", default_bundle, terms)
    assert plain.error_systematics == {} and calibrated.error_systematics == terms
    spec = plain.input
    rng = np.random.default_rng(0)
    x = np.ones((6, len(spec.channels), spec.wave.size), np.float32)
    x[:, 0] += 0.05 * rng.standard_normal((6, spec.wave.size)).astype(np.float32)
    x[:, 1], x[:, 2] = 0.03, 0.0
    a, b = TorchScriptEstimator(plain).predict(x), TorchScriptEstimator(calibrated).predict(x)
    for name in ("log_age", "metallicity"):
        np.testing.assert_allclose(b[f"{name}_err"], np.hypot(a[f"{name}_err"], terms[name]), rtol=1e-5)
        np.testing.assert_array_equal(a[name], b[name])  # the estimates themselves do not move
    for name in ("av", "sigma"):
        np.testing.assert_array_equal(a[f"{name}_err"], b[f"{name}_err"])
    attrs = {name: a for name, _, a, _ in output_variables(calibrated)}
    assert attrs["metallicity_err"]["systematic_term"] == 0.11 and "systematic_term" not in attrs["av_err"]
