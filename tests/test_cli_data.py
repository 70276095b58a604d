"""Verbs that make and check stores (``mock``, ``photometry``, ``ingest``, ``validate``): their summary
lines, and one-line errors with exit 2. (Binning: test_binning.py; SDSS: test_sdss.py.)"""

from __future__ import annotations

import re

import pytest
import xarray as xr

from survey_proc.cli import main


def test_mock_summary_and_options(tmp_path, capsys):
    cube = tmp_path / "m.zarr"
    argv = ["mock", str(cube), "--nx", "6", "--ny", "4", "--seed", "3", "--snr", "20"]
    assert main([*argv, "--wave-range", "4800", "7000", "--pixel-scale", "0.4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(
        rf"mock cube 4 x 6 spaxels x 1761 wavelengths \(S/N 20 per A at the centre, z = 0.008, seed 3\) "
        rf"written to {re.escape(str(cube))} in \d+\.\d s; truth maps in its group 'truth'\n",
        out,
    ), out
    ds = xr.open_zarr(cube)
    assert ds.flux.shape == (4, 6, 1761) and float(ds.wave[0]) == 4800.0

    assert main(["validate", str(cube)]) == 0
    assert capsys.readouterr().out == (
        f"{cube}: valid cube store; dims {{'y': 4, 'x': 6, 'wave': 1761}}, wave 4800.0-7000.0 A (observed, air), "
        "redshift 0.008\n"
    )


def test_mock_chunks_by_cube_size(tmp_path, capsys):
    """Without --chunk: a quarter of the longer side, between 8 and 32 spaxels (40 x 12: 10)."""
    assert main(["mock", str(tmp_path / "m.zarr"), "--nx", "40", "--ny", "12", "--quiet"]) == 0
    assert xr.open_zarr(tmp_path / "m.zarr").flux.encoding["chunks"] == (10, 10, 3681)
    assert "12 x 40 spaxels" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "verb", "message"),
    [
        (
            ["mock", "--photometry", "nope", "{tmp}/p.zarr"],
            "mock",
            "unknown filter set 'nope'; known: jpas, jpas36, sdss",
        ),
        (
            ["photometry", "{tmp}/c.zarr", "{tmp}/p.zarr", "--filters", "nope"],
            "photometry",
            "unknown filter set 'nope'; known: jpas, jpas36, sdss",
        ),
        (["ingest", "{tmp}/nope.fits", "{tmp}/c.zarr"], "ingest", "{tmp}/nope.fits: no such FITS file"),
    ],
    ids=["mock photometry", "photometry", "ingest"],
)
def test_errors_are_one_line_exit_2(tmp_path, capsys, argv, verb, message):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"survey-proc {verb}: error: {message.format(tmp=tmp_path)}\n"
