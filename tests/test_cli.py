"""The verbs a new user meets first, through the console script."""

from __future__ import annotations

import json
import subprocess
import sys

import xarray as xr


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "survey_proc", *args], capture_output=True, text=True, timeout=timeout)


def test_mock_then_run_then_validate(tmp_path):
    cube = tmp_path / "c.zarr"
    p = _cli("mock", str(cube), "--nx", "12", "--ny", "10", "--seed", "2", "--snr", "25", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "truth maps in its group 'truth'" in p.stdout
    assert xr.open_zarr(cube).flux.shape == (10, 12, 3681)
    p = _cli("validate", str(cube))
    assert p.returncode == 0 and "valid" in p.stdout
    p = _cli("run", "--cube", str(cube), "--workers", "2", "--quiet")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "c.maps.zarr"  # default output beside the cube
    assert f"maps written to {out}" in p.stdout
    assert "spectra processed: 120 of 120" in p.stdout and "spectra/s" in p.stdout
    assert xr.open_zarr(out).log_age.shape == (10, 12)
    p = _cli("run", "--cube", str(cube), "--workers", "2", "--quiet")
    assert p.returncode == 0 and "were already done" in p.stdout


def test_demo_writes_maps_figure_and_numbers(tmp_path):
    p = _cli("demo", "--dir", str(tmp_path), "--nx", "12", "--workers", "2")
    assert p.returncode == 0, p.stderr
    png = tmp_path / "demo_maps_vs_truth.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    acc = json.loads((tmp_path / "demo_accuracy.json").read_text())
    assert acc["spaxels"] == 144 and acc["log_age"]["robust_sigma"] < 0.3
    assert f"figure: {png}" in p.stdout


def test_models_lists_the_default(tmp_path):
    p = _cli("models")
    assert p.returncode == 0 and p.stdout.startswith("default")
