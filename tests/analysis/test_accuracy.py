"""Accuracy of maps against truth: known answers, the flag and error maps, the JSON record, the figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from survey_proc.analysis import Accuracy, PropertyAccuracy, accuracy_vs_truth, plot_maps_vs_truth
from survey_proc.stores import Flag


@pytest.fixture()
def maps_and_truth():
    """A 4 x 5 field: log_age = truth + 0.1 (error 0.2), metallicity = truth + [-0.1, 0, 0.1] (no error
    map), one flagged pixel holding a wild value, sigma missing from the truth."""
    rng = np.random.default_rng(1)
    age = rng.uniform(8.5, 10.0, (4, 5))
    met = rng.uniform(-1.0, 0.2, (4, 5))
    flag = np.zeros((4, 5), np.uint8)
    flag[0, 0] = Flag.LOW_SNR
    est_age = age + 0.1
    est_age[0, 0] = 99.0
    est_met = met + 0.1 * (np.arange(20).reshape(4, 5) % 3 - 1)
    maps = xr.Dataset(
        {
            "log_age": (("y", "x"), est_age, {"units": "dex"}),
            "log_age_err": (("y", "x"), np.full((4, 5), 0.2)),
            "metallicity": (("y", "x"), est_met, {"units": "dex"}),
            "sigma": (("y", "x"), np.full((4, 5), 100.0)),
            "flag": (("y", "x"), flag),
        }
    )
    truth = xr.Dataset({"log_age": (("y", "x"), age), "metallicity": (("y", "x"), met)})
    return maps, truth


def test_bias_scatter_and_coverage_over_unflagged_pixels(maps_and_truth):
    acc = accuracy_vs_truth(*maps_and_truth)
    assert isinstance(acc, Accuracy)
    assert (acc.spaxels, acc.used) == (20, 19) and acc.flagged_fraction == pytest.approx(0.05)
    assert set(acc.properties) == {"log_age", "metallicity"}  # sigma has no truth, av no map
    age = acc.properties["log_age"]
    assert age.n == 19 and age.units == "dex"
    assert age.bias == pytest.approx(0.1) and age.robust_sigma == pytest.approx(0.0, abs=1e-12)
    assert age.coverage_68 == 1.0  # |0.1| <= 0.2 everywhere
    met = acc.properties["metallicity"]
    assert met.bias == pytest.approx(0.0, abs=1e-12) and met.robust_sigma == pytest.approx(1.4826 * 0.1)
    assert met.coverage_68 is None


def test_all_pixels_count_when_asked(maps_and_truth):
    acc = accuracy_vs_truth(*maps_and_truth, good_only=False)
    assert acc.used == 20 and acc.flagged_fraction == 0.0
    assert acc.properties["log_age"].n == 20 and acc.properties["log_age"].coverage_68 == pytest.approx(19 / 20)


def test_no_usable_pixel_gives_nan_not_an_error(maps_and_truth):
    maps, truth = maps_and_truth
    maps["flag"][:] = Flag.FIT_FAILED
    age = accuracy_vs_truth(maps, truth, ["log_age"]).properties["log_age"]
    assert age.n == 0 and np.isnan(age.bias) and np.isnan(age.robust_sigma) and np.isnan(age.coverage_68)


def test_json_record_keeps_the_demo_layout(maps_and_truth):
    record = accuracy_vs_truth(*maps_and_truth).to_json()
    assert list(record) == ["spaxels", "used", "flagged_fraction", "log_age", "metallicity"]
    assert list(record["log_age"]) == ["bias", "robust_sigma", "n", "units", "coverage_68"]
    assert "coverage_68" not in record["metallicity"]
    json.dumps(record)  # plain JSON types
    assert PropertyAccuracy(0.0, 1.0, 3, "dex").to_json() == {"bias": 0.0, "robust_sigma": 1.0, "n": 3, "units": "dex"}


def test_figure_is_a_png(maps_and_truth, tmp_path):
    path = plot_maps_vs_truth(*maps_and_truth, tmp_path / "f.png", title="t")
    assert path == tmp_path / "f.png" and path.read_bytes()[:4] == b"\x89PNG"
