"""Absurd or broken inputs (issue 16, item 6): one line naming the problem and exit 2, never a
traceback or an all-NaN store with exit 0."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from conftest import crop_minicube

from survey_proc.cli import main


@pytest.fixture(scope="module")
def small_fits(tmp_path_factory):
    return crop_minicube(tmp_path_factory.mktemp("fits") / "c.fits", slice(0, 8), slice(0, 8))


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


def test_ingest_refuses_an_absurd_redshift(small_fits, tmp_path, capsys):
    _refused(["ingest", str(small_fits), str(tmp_path / "c.zarr"), "--redshift", "-3"], capsys, "--redshift -3")


def _fits_with(src, dst, **change) -> None:
    with fits.open(src) as hdul:
        hdus = [hdul[0].copy()] + [
            fits.ImageHDU(change.get(h.name, h.data), header=h.header, name=h.name) for h in hdul[1:]
        ]
        fits.HDUList(hdus).writeto(dst)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncated", "the file may be truncated or damaged"),
        ("stat-rows", "STAT (3681, 6, 8) differs from DATA (3681, 8, 8)"),
        ("dq-shape", "DQ (3681, 8, 5) differs from DATA (3681, 8, 8)"),
    ],
)
def test_ingest_explains_a_broken_fits_file(small_fits, tmp_path, capsys, damage, expected):
    bad = tmp_path / "bad.fits"
    if damage == "truncated":
        bad.write_bytes(small_fits.read_bytes()[: small_fits.stat().st_size // 2])
    else:
        with fits.open(small_fits) as hdul:
            stat, dq = hdul["STAT"].data, hdul["DQ"].data
            _fits_with(small_fits, bad, **({"STAT": stat[:, :6]} if damage == "stat-rows" else {"DQ": dq[:, :, :5]}))
    out = tmp_path / "c.zarr"
    _refused(["ingest", str(bad), str(out), "--redshift", "0.086", "--quiet"], capsys, expected)
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


def test_run_over_the_bins_of_the_real_minicube(tmp_path, capsys):
    """The bins of a real cube carry pixel_ra/pixel_dec; the pixel maps keep them."""
    pytest.importorskip("vorbin")
    from survey_proc.stores import MINICUBE_REDSHIFT, muse_minicube

    cube, bins = tmp_path / "mini.zarr", tmp_path / "bins.zarr"
    assert main(["ingest", str(muse_minicube()), str(cube), "--redshift", str(MINICUBE_REDSHIFT), "--quiet"]) == 0
    assert main(["bin", str(cube), str(bins), "--quiet"]) == 0
    assert main(["run", "--cube", str(bins), "--cluster", "none", "--quiet"]) == 0, capsys.readouterr().err
    pixels = xr.open_zarr(tmp_path / "bins.maps.zarr", group="pixels")
    np.testing.assert_array_equal(pixels.ra.values, xr.open_zarr(cube).ra.values)
