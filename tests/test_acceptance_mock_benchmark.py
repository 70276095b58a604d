"""benchmarks/acceptance_mock.py: issue 2's mock through named models, scored as tests/test_engine.py
scores the default."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from benchmarks.acceptance_mock import BOUNDS, main, muse_networks, score


def test_score_counts_unflagged_spaxels_against_the_bounds():
    truth = xr.Dataset({"log_age": (("y", "x"), np.full((4, 4), 9.5)), "av": (("y", "x"), np.zeros((4, 4)))})
    truth["metallicity"] = truth.av
    maps = truth.copy(deep=True)
    maps["flag"] = (("y", "x"), np.zeros((4, 4), np.uint16))
    maps["av"] = maps.av + np.linspace(-0.2, 0.2, 16).reshape(4, 4)  # robust scatter ~0.16 mag: beyond 0.10
    s = score(maps, truth)
    assert s["unflagged"] == 1.0 and s["log_age"] == 0.0 and s["av"] > BOUNDS["av"] and not s["meets_issue_2"]
    maps["flag"] = (("y", "x"), np.where(np.abs(maps.av.values) > 0.05, 8, 0).astype(np.uint16))
    s = score(maps, truth)  # the flagged spaxels are left out, but too many are flagged
    assert s["unflagged"] == 0.25 and s["av"] <= BOUNDS["av"] and not s["meets_issue_2"] and "sigma" not in s
    maps["av"] = truth.av + np.linspace(-0.12, 0.12, 16).reshape(4, 4)
    maps["flag"] = (("y", "x"), np.where(np.abs(maps.av.values) > 0.11, 8, 0).astype(np.uint16))
    s = score(maps, truth)  # 14 of 16 unflagged, their A_V scatter ~0.08 mag: issue 2 met
    assert s["unflagged"] == 0.875 and s["av"] <= BOUNDS["av"] and s["meets_issue_2"]


def test_the_models_are_the_shipped_muse_networks_the_default_first():
    names = muse_networks()
    assert names[0] == "default" and {"muse-cnn-wide", "muse-7100", "muse-mix-recon-k5-distil"} <= set(names)
    assert not {"sdss-cnn", "narrowband", "ugriz-maps", "fit", "ppxf"} & set(names)  # other inputs, not networks


def test_a_small_run_writes_the_record(tmp_path):
    out = tmp_path / "acc.json"
    report = main(["--models", "default", "--seeds", "7", "--size", "8", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == report["rows"] and len(report["rows"]) == 1
    row = report["rows"][0]
    assert row["model"] == "default" and row["model_id"].startswith("muse-cnn-fast@") and row["spaxels"] == 64
    assert 0.5 < row["unflagged"] <= 1.0 and 0 < row["log_age"] < 0.3 and "velocity" not in row
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "| `default (muse-cnn-fast)` | 7 |" in out.with_suffix(".md").read_text()
