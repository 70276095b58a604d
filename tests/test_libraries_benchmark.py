"""The library benchmark's measures (benchmarks/libraries.py) on maps whose answers are known, and one
small end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from benchmarks.libraries import Options, add_shift_auc, auc, cli, method_available, score_maps
from survey_proc.stores import Flag


def test_auc():
    assert auc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert auc([4, 3, 2, 1], [False, False, True, True]) == 0.0
    assert auc([1, 1, 1, 1], [False, True, False, True]) == 0.5  # ties count half
    assert np.isnan(auc([1, 2], [True, True]))


def _maps_and_truth():
    """4 x 5 spaxels: truth 0; errors 1; estimates 0.5 (inside 1 sigma), 1.5 (inside 2) or 3 (off), some
    flagged. ood_score is high exactly where the estimate is off."""
    est = np.array([[0.5] * 5, [1.5] * 5, [3.0] * 5, [0.5, 0.5, 3.0, 3.0, np.nan]])
    flag = np.zeros((4, 5), np.uint8)
    flag[3, 2] = Flag.OUT_OF_DISTRIBUTION
    flag[3, 4] = Flag.NO_DATA
    flag[0, 0] = Flag.LOW_SNR
    score = np.where(est > 2, 5.0, 1.0)
    dims = ("y", "x")
    maps = xr.Dataset(
        {
            "log_age": (dims, est),
            "log_age_err": (dims, np.ones((4, 5))),
            "sigma": (dims, est * 10),
            "flag": (dims, flag),
            "ood_score": (dims, score),
        }
    )
    truth = xr.Dataset({"log_age": (dims, np.zeros((4, 5))), "sigma": (dims, np.zeros((4, 5)))})
    return maps, truth


def test_score_maps():
    maps, truth = _maps_and_truth()
    s = score_maps(maps, truth, "default", "mock", 1.0)
    assert s.spaxels == 20 and s.fitted == pytest.approx(19 / 20) and s.flagged == pytest.approx(3 / 20)
    assert s.ood_flagged == pytest.approx(1 / 19)
    p = s.properties["log_age"]
    good = 20 - 3  # unflagged, finite: 4 + 5 + 5 + 3 at 0.5, 1.5, 3.0, (0.5, 0.5, 3.0)
    assert p.n_good == good
    assert p.coverage_68 == pytest.approx(6 / good)  # 4 + 2 at 0.5
    # off by > 2 sigma and unflagged: 5 + 1 (the flagged ood one and the no-data one count as flagged)
    assert p.ok_2sigma == pytest.approx(1 - 6 / 20)
    assert p.off_2sigma == 7 and p.auc_ood == 1.0 and s.auc_ood_any == 1.0
    assert "sigma" in s.properties and np.isnan(s.properties["sigma"].coverage_68)  # no sigma_err: no coverage
    assert np.isnan(s.properties["sigma"].auc_ood)


def test_the_total_error_adds_the_library_systematic():
    maps, truth = _maps_and_truth()
    assert np.isnan(score_maps(maps, truth, "default", "mock", 1.0).properties["log_age"].ok_2sigma_total)
    maps["log_age_sys_err"] = maps["log_age_err"] * np.sqrt(3.0)  # total error 2: the 3.0s are within 2 sigma
    p = score_maps(maps, truth, "default", "mock", 1.0).properties["log_age"]
    assert p.ok_2sigma == pytest.approx(1 - 6 / 20) and p.ok_2sigma_total == 1.0
    assert p.coverage_68 == pytest.approx(6 / 17) and p.coverage_68_total == pytest.approx(6 / 17 + 5 / 17)


def test_the_change_of_library_is_scored_against_the_emiles_run_of_the_same_method():
    results = [
        {"library": {"name": n}, "scores": [{"method": "default", "cube": c} for c in cubes]}
        for n, cubes in (("emiles", ("mock",)), ("bc03", ("mock", "control")))
    ]
    ood = {
        ("emiles", "default", "mock"): np.array([1.0, 1.1, 0.9]),
        ("bc03", "default", "mock"): np.array([2.0, 3.0]),
        ("bc03", "default", "control"): np.array([1.0, 1.0]),
    }
    add_shift_auc(results, ood)
    assert "auc_vs_emiles" not in results[0]["scores"][0]
    assert results[1]["scores"][0]["auc_vs_emiles"] == 1.0
    assert results[1]["scores"][1]["auc_vs_emiles"] == pytest.approx(0.5)


def test_methods_of_this_build():
    assert method_available("ppxf") and not method_available("no-such-method")


def test_a_small_run_writes_json_markdown_and_png(tmp_path):
    out = tmp_path / "lib.json"
    argv = ["--libraries", "emiles", "--models", "default", "--size", "6", "--sample", "0", "--json", str(out)]
    assert cli(argv) == 0
    report = json.loads(out.read_text())
    (entry,) = report["libraries"]
    assert entry["library"]["name"] == "emiles" and entry["library"]["cube_pixels_masked"] == 0.0
    (score,) = entry["scores"]
    assert score["method"] == "default" and score["spaxels"] == 36
    assert score["ood_threshold"] > 0 and score["ood_p99"] >= score["ood_p50"] > 0
    assert set(score["properties"]) == {"log_age", "metallicity", "av", "sigma"}
    assert report["options"] == {**report["options"], "size": 6, "sample": 0, "models": ["default"]}
    md = out.with_suffix(".md").read_text()
    assert "| emiles | calibration |" in md and out.with_suffix(".png").stat().st_size > 10_000
    assert Options().libraries[0] == "emiles"


def test_uncalibrated_runs_each_model_as_exported_beside_its_calibrated_self(tmp_path):
    out = tmp_path / "lib.json"
    argv = ["--libraries", "emiles", "--models", "default", "--size", "6", "--sample", "0", "--uncalibrated"]
    assert cli([*argv, "--json", str(out)]) == 0
    (entry,) = json.loads(out.read_text())["libraries"]
    after, before = ({s["method"]: s for s in entry["scores"]}[m] for m in ("default", "default@uncalibrated"))
    for prop in ("log_age", "metallicity", "av"):  # the same estimates; the errors only grow
        assert after["properties"][prop]["bias"] == before["properties"][prop]["bias"]
        assert after["properties"][prop]["coverage_68"] >= before["properties"][prop]["coverage_68"]
    assert "## `default` before → after its library calibration" in out.with_suffix(".md").read_text()
