"""The command line as users meet it (``survey_proc.cli``): the verbs, exit codes, one-line errors, and
how the library's progress and log lines are shown. Per verb group: test_cli_*.py."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys

import pytest
import xarray as xr

from survey_proc import progress
from survey_proc.cli import build_parser, main, reporting

VERBS = [
    "mock",
    "photometry",
    "resample",
    "ingest",
    "ingest-spectra",
    "example",
    "run",
    "plot",
    "export",
    "bin",
    "cluster",
    "validate",
    "demo",
    "compare",
    "bench",
    "train",
    "trainset",
    "evaluate",
    "gradients",
    "evaluate-bins",
    "models",
]


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "survey_proc", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_verb_in_order_and_each_verb_has_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "{" + ",".join(VERBS) + "}" in capsys.readouterr().out
    for verb in VERBS:
        with pytest.raises(SystemExit) as exit_:
            main([verb, "--help"])
        assert exit_.value.code == 0, verb
        assert capsys.readouterr().out.startswith(f"usage: survey-proc {verb}")


def test_usage_errors_exit_2_with_argparse_message(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2 and "the following arguments are required: command" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["mock", "x.zarr", "--nx", "0"])
    assert exit_.value.code == 2
    assert "argument --nx: expected a positive integer, got 0" in capsys.readouterr().err


def test_user_errors_are_one_line_on_stderr_exit_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.zarr")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"survey-proc validate: error: {tmp_path / 'nope.zarr'}: no such file or directory\n"


def test_options_default_to_none_so_config_or_the_library_holds_the_defaults():
    """One place per default: every option is None (or off) unless given; dask.config (survey-proc.yaml)
    or the library function's own default decides the rest."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for verb, parser in subparsers.choices.items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.default in (None, False), (verb, action.dest, action.default)


def _library_work(level: int = logging.INFO) -> None:
    """What library code does: log a line, advance a bar; never print."""
    logging.getLogger("survey_proc.somewhere").log(level, "a library line")
    with progress.bar(total=2, desc="steps") as advance:
        advance(2)


def test_reporting_shows_log_lines_above_the_bars(capsys):
    with reporting(True):
        _library_work()
        print("summary")
    captured = capsys.readouterr()
    assert captured.out == "a library line\nsummary\n" and "steps" in captured.err and "2/2" in captured.err
    logger = logging.getLogger("survey_proc")
    assert logger.level == logging.NOTSET and len(logger.handlers) == 0  # restored


def test_reporting_quiet_shows_only_warnings_on_stderr(capsys):
    with reporting(False):
        _library_work()
        _library_work(logging.WARNING)
    assert capsys.readouterr() == ("", "a library line\n")
    with reporting(True):
        _library_work(logging.WARNING)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("a library line\n")


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
    steps = [line[:3] for line in p.stdout.splitlines() if line[:2] in ("1/", "2/", "3/")]
    assert steps == ["1/3", "2/3", "3/3"] and "2/3 running model 'default'" in p.stdout
