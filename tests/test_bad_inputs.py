"""Absurd or broken inputs (issue 16, item 6): one line naming the problem and exit 2, never a
traceback or an all-NaN store with exit 0."""

from __future__ import annotations

import os
import subprocess

import pytest
import xarray as xr

from survey_proc.cli import main


def _refused(argv: list[str], capsys, *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"survey-proc {argv[0]}: error:") and "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--snr", "0"], "--snr (S/N per Angstrom of the brightest spaxels) is 0, expected a finite value > 0"),
        (["--snr", "nan"], "is nan, expected a finite value > 0"),
        (["--redshift", "5"], "does not cover the cube's 4750-9350 A; it covers them for -0.010 <= z <= 0.84"),
        (["--pixel-scale", "-1"], "--pixel-scale (arcsec) is -1"),
    ],
    ids=["snr-0", "snr-nan", "redshift-5", "pixel-scale"],
)
def test_mock_refuses_options_no_mock_can_be_made_with(tmp_path, capsys, options, expected):
    out = tmp_path / "m.zarr"
    _refused(["mock", str(out), "--nx", "4", "--ny", "4", "--quiet", *options], capsys, expected)
    assert not out.exists()


def test_run_refuses_a_min_snr_that_is_not_a_number(mock16, tmp_path, capsys):
    out = tmp_path / "m.zarr"
    _refused(["run", "--cube", str(mock16), "--out", str(out), "--min-snr", "nan", "--quiet"], capsys, "--min-snr nan")
    assert not out.exists()


def test_a_two_dimensional_variance_is_named(mock16, tmp_path, capsys):
    ds = xr.open_zarr(mock16).drop_encoding()
    bad = ds.assign(var=(("y", "x"), ds["var"].isel(wave=0).values, ds["var"].attrs))
    bad.drop_vars([v for v in bad if v.startswith("region_")]).to_zarr(
        tmp_path / "v.zarr", zarr_format=3, consolidated=False
    )
    _refused(
        ["validate", str(tmp_path / "v.zarr")],
        capsys,
        "variable 'var' has dims ('y', 'x'), expected ('y', 'x', 'wave')",
    )


def _unwritable(folder) -> bool:
    """Make ``folder`` read-only (as root, immutable); True if writing there now fails."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    try:
        (folder / "probe").write_text("")
    except OSError:
        return True
    (folder / "probe").unlink()
    return False


def test_a_read_only_output_folder_is_named(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    try:
        if not _unwritable(folder):
            pytest.skip("cannot make a folder read-only here")
        _refused(["mock", str(folder / "m.zarr"), "--nx", "4", "--ny", "4", "--quiet"], capsys, "is not writable")
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)
