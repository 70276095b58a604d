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
