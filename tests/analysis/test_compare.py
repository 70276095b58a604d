"""Comparing two maps stores: statistics with known answers, the JSON record, figures, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from survey_proc.analysis import (
    DifferenceStats,
    compare_maps,
    compare_stores,
    difference_stats,
    good_pixels,
    pearson,
    plot_comparison,
    running_difference,
)
from survey_proc.errors import CubeError
from survey_proc.stores import Flag


def test_difference_stats_known_answer():
    ref = np.arange(30, dtype=float)
    d = 0.1 + np.tile([-0.2, 0.0, 0.2], 10)  # median 0.1, |d - median| median 0.2
    s = difference_stats(ref + d, ref)
    assert s.n == 30
    assert s.bias == pytest.approx(0.1)
    assert s.robust_sigma == pytest.approx(1.4826 * 0.2)
    assert s.mean_difference == pytest.approx(0.1)
    assert s.rms == pytest.approx(np.sqrt(np.mean(d**2)))
    assert s.correlation == pytest.approx(np.corrcoef(ref + d, ref)[0, 1])
    run = running_difference(ref, d, bins=3)
    assert run.n == [10, 10, 10] and run.median == pytest.approx([0.1, 0.1, 0.1])
    assert difference_stats(-ref, ref).correlation == pytest.approx(-1.0)


def _maps(values: dict[str, np.ndarray], flag: np.ndarray, name: str) -> xr.Dataset:
    ds = xr.Dataset({k: (("y", "x"), v.astype(np.float32), {"units": "u"}) for k, v in values.items()})
    ds["flag"] = (("y", "x"), flag.astype(np.uint8))
    ds.attrs["model_name"] = name
    return ds


@pytest.fixture()
def known_stores(tmp_path):
    """B and truth; A = B + 0.1 in log_age, A = -B in metallicity, one flagged and one NaN pixel."""
    rng = np.random.default_rng(0)
    truth_age = rng.uniform(8.5, 10.0, (6, 5))
    b_age = truth_age + 0.05
    a_age = b_age + 0.1
    b_met = rng.uniform(-1.0, 0.2, (6, 5))
    flag_a = np.zeros((6, 5), np.uint8)
    flag_a[0, 0] = Flag.FIT_FAILED
    a_age[0, 0] = 99.0  # excluded by its flag
    a_age[1, 1] = np.nan  # excluded as not finite
    a = _maps({"log_age": a_age, "metallicity": -b_met}, flag_a, "model")
    b = _maps({"log_age": b_age, "metallicity": b_met}, np.zeros((6, 5)), "ppxf")
    truth = xr.Dataset(
        {"log_age": (("y", "x"), truth_age.astype(np.float32)), "metallicity": (("y", "x"), b_met.astype(np.float32))}
    )
    paths = {k: tmp_path / f"{k}.zarr" for k in ("a", "b", "cube")}
    a.to_zarr(paths["a"], zarr_format=3, consolidated=False)
    b.to_zarr(paths["b"], zarr_format=3, consolidated=False)
    truth.to_zarr(paths["cube"], group="truth", zarr_format=3, consolidated=False)
    return paths, a, b, truth


def test_compare_maps_known_answer(known_stores):
    _, a, b, truth = known_stores
    res = compare_maps(a, b, truth, labels=("model", "ppxf"))
    assert res.used["both_good"] == 29  # the flagged pixel is left out
    ab = res.pairs["model vs ppxf"]
    assert ab["log_age"].n == 28  # ... and the NaN one
    assert ab["log_age"].bias == pytest.approx(0.1, abs=1e-5)
    assert ab["log_age"].robust_sigma == pytest.approx(0.0, abs=1e-5)
    assert ab["log_age"].correlation == pytest.approx(1.0, abs=1e-6)
    assert ab["metallicity"].correlation == pytest.approx(-1.0, abs=1e-6)
    assert res.pairs["ppxf vs truth"]["log_age"].bias == pytest.approx(0.05, abs=1e-5)
    assert res.pairs["model vs truth"]["log_age"].bias == pytest.approx(0.15, abs=1e-5)
    assert res.pairs["ppxf vs truth"]["metallicity"].rms == pytest.approx(0.0, abs=1e-6)


def test_running_difference_with_few_or_no_pairs():
    assert running_difference(np.zeros(0), np.zeros(0)).reference == []
    run = running_difference(np.arange(5.0), np.ones(5), bins=8)  # fewer than 2 per bin: 2 bins
    assert sum(run.n) == 5 and len(run.n) == 2 and run.median == [1.0, 1.0]
    run = running_difference(np.ones(6), np.arange(6.0))  # a constant reference: one bin
    assert run.n == [6] and run.median == [2.5]


def test_statistics_of_too_few_pairs_are_nan():
    s = difference_stats(np.array([1.0, np.nan]), np.array([0.5, 0.0]))
    assert s.n == 1 and s.bias == 0.5 and np.isnan(s.correlation)
    assert np.isnan(pearson(np.ones(5), np.arange(5.0)))
    empty = difference_stats(np.array([np.nan]), np.array([1.0]))
    assert empty.n == 0 and np.isnan(empty.bias) and np.isnan(empty.rms) and empty.running.n == []


def test_good_pixels_are_unflagged_or_fitted():
    ds = xr.Dataset({"flag": (("y", "x"), np.array([[0, Flag.LOW_SNR, Flag.FIT_FAILED]], np.uint8))})
    assert good_pixels(ds).tolist() == [[True, False, False]]
    assert good_pixels(ds, good_only=False).tolist() == [[True, True, False]]  # low S/N is still a fit


def test_without_truth_the_second_store_is_the_reference(known_stores):
    _, a, b, _ = known_stores
    res = compare_maps(a, b, labels=("model", "ppxf"), names=("log_age", "metallicity", "sigma"))
    assert res.reference == "ppxf" and list(res.pairs) == ["model vs ppxf"]
    assert set(res.pairs["model vs ppxf"]) == {"log_age", "metallicity"}  # sigma is in neither
    stats = res.pairs["model vs ppxf"]["log_age"]
    assert isinstance(stats, DifferenceStats) and stats.units == "u"


def test_json_record_layout(known_stores):
    _, a, b, truth = known_stores
    record = compare_maps(a, b, truth, labels=("model", "ppxf")).to_json()
    assert list(record) == ["labels", "reference", "used_pixels", "pairs", "figures"]
    assert list(record["pairs"]) == ["model vs truth", "ppxf vs truth", "model vs ppxf"]
    age = record["pairs"]["model vs ppxf"]["log_age"]
    assert list(age) == ["n", "bias", "mean_difference", "robust_sigma", "rms", "correlation", "running", "units"]
    assert list(age["running"]) == ["reference", "median", "p16", "p84", "n"]
    json.dumps(record)


def test_compare_stores_writes_what_it_returns(known_stores, tmp_path):
    paths, *_ = known_stores
    res = compare_stores(paths["a"], paths["a"], tmp_path / "out", names=("log_age",))
    assert res.labels == ("model (A)", "model (B)")  # the same model twice: told apart
    written = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert written["pairs"] == json.loads(json.dumps(res.to_json()["pairs"]))
    assert written["a"] == str(paths["a"]) and written["truth"] == ""
    assert res.figures == [str(tmp_path / "out" / "compare_log_age.png")]
    cube = tmp_path / "small.zarr"
    xr.Dataset({"log_age": (("y", "x"), np.zeros((2, 2), np.float32))}).to_zarr(
        cube, group="truth", zarr_format=3, consolidated=False
    )
    with pytest.raises(CubeError, match="does not match the maps"):
        compare_stores(paths["a"], paths["b"], tmp_path / "out", truth_cube=cube)


def test_catalogue_figure_has_only_the_running_difference(tmp_path):
    n = 40
    ref = np.linspace(0.0, 1.0, n)
    a = xr.Dataset({"av": (("object",), ref + 0.1), "flag": (("object",), np.zeros(n, np.uint8))})
    b = xr.Dataset({"av": (("object",), ref), "flag": (("object",), np.zeros(n, np.uint8))})
    png = plot_comparison(a, b, "av", tmp_path / "c.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_compare_cli_writes_figures_and_json(known_stores, tmp_path):
    paths, *_ = known_stores
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "survey_proc",
            "compare",
            str(paths["a"]),
            str(paths["b"]),
            "--truth",
            str(paths["cube"]),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    numbers = json.loads((out / "compare.json").read_text())
    assert numbers["reference"] == "truth" and numbers["labels"] == ["model", "ppxf"]
    assert numbers["pairs"]["model vs ppxf"]["log_age"]["bias"] == pytest.approx(0.1, abs=1e-5)
    for name in ("log_age", "metallicity"):
        assert (out / f"compare_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "model vs ppxf:" in proc.stdout and "bias" in proc.stdout
    # maps of different cubes are refused with a clear message
    other = tmp_path / "other.zarr"
    xr.Dataset(
        {"log_age": (("y", "x"), np.zeros((3, 3), np.float32)), "flag": (("y", "x"), np.zeros((3, 3), np.uint8))}
    ).to_zarr(other, zarr_format=3, consolidated=False)
    proc = subprocess.run(
        [sys.executable, "-m", "survey_proc", "compare", str(paths["a"]), str(other)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "cover different pixels" in proc.stderr and "Traceback" not in proc.stderr
