"""``survey-proc run``: what it refuses, with one line and exit 2, before any cluster starts. (Runs
themselves: test_cli.py, test_survey.py, test_ppxf.py.)"""

from __future__ import annotations

import pytest

from survey_proc.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give the cube(s) to run: --cube CUBE (repeat it for several) or --survey FILE"),
        (
            ["--cube", "a.zarr", "--cube", "b.zarr", "--out", "m.zarr"],
            "--out names the maps of one cube; with several cubes use --out-dir (or 'out' per cube in the survey file)",
        ),
        (
            ["--cube", "a.zarr", "--method", "ppxf", "--model", "default"],
            "--method ppxf with --model default: that bundle's estimator is 'torchscript', not a pPXF configuration",
        ),
    ],
    ids=["no cube", "out with several cubes", "ppxf method with a network"],
)
def test_refusals_are_one_line_exit_2(argv, message, capsys):
    assert main(["run", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"survey-proc run: error: {message}\n"


def test_a_missing_cube_is_named(tmp_path, capsys):
    assert main(["run", "--cube", str(tmp_path / "nope.zarr"), "--cluster", "none", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(f"survey-proc run: error: {tmp_path / 'nope.zarr'}: no such")
