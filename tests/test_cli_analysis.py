"""Verbs that read maps (``compare``, ``gradients``): what they print and where they write by default."""

from __future__ import annotations

import json
import shutil

import pytest

from survey_proc.cli import main


@pytest.fixture(scope="module")
def two_maps(tmp_path_factory, mock16, run_model):
    """The 16 x 16 mock's maps (serial run), and a copy of them under another name."""
    folder = tmp_path_factory.mktemp("maps")
    cube = folder / "c.zarr"
    shutil.copytree(mock16, cube)
    assert main(["run", "--cube", str(cube), "--model", run_model, "--cluster", "none", "--quiet"]) == 0
    shutil.copytree(folder / "c.maps.zarr", folder / "d.maps.zarr")
    return cube, folder / "c.maps.zarr", folder / "d.maps.zarr"


def test_compare_writes_beside_the_first_store_by_default(two_maps, capsys):
    cube, a, b = two_maps
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--truth", str(cube)]) == 0
    out = capsys.readouterr().out.splitlines()
    folder = a.with_name("c.maps_vs_d.maps")
    assert out[0].startswith("compared over ") and out[0].endswith(
        "unflagged in both stores (differences: first - second)"
    )
    assert out[-1] == f"numbers: {folder / 'compare.json'}"
    assert out[-2].startswith(f"figures: {folder / 'compare_log_age.png'}")
    assert any(line.endswith("(A) vs truth:") for line in out)
    pair = json.loads((folder / "compare.json").read_text())["pairs"]
    assert all(s["bias"] == 0.0 for s in next(p for k, p in pair.items() if "(A) vs" in k and "(B)" in k).values())


def test_gradients_print_the_fits_and_where_they_went(two_maps, tmp_path, capsys):
    _, a, _ = two_maps
    capsys.readouterr()
    assert main(["gradients", str(a), "--compare", "truth", "--out", str(tmp_path), "--draws", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{a}: R_e ") and "from " in out[0]
    assert any(line.lstrip().startswith("log_age ") and "per R_e" in line for line in out)
    assert out[-1] == f"  numbers: {tmp_path / 'c.maps.gradients.json'}"
    report = json.loads((tmp_path / "c.maps.gradients.json").read_text())
    assert report["options"]["n_draws"] == 10 and report["options"]["r_max"] == 1.0  # the library's default
