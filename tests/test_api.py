"""The Python API (``survey_proc.run``, docs/api.md) and scripts without a ``__main__`` guard."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import survey_proc
from survey_proc.engine import RunSummary

ROOT = Path(__file__).resolve().parents[1]


def _script(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    """Run ``text`` as a plain script (``python script.py``) in ``tmp_path``."""
    path = tmp_path / "script.py"
    path.write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env
    )


def test_the_worked_example_of_docs_api_runs_as_a_plain_script(tmp_path):
    """docs/api.md's example, as it stands: a script with no __main__ guard."""
    example = re.search(r"## A worked example.*?```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    proc = _script(tmp_path, example.group(1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nanny failed to start" not in proc.stderr
    assert 'has no `if __name__ == "__main__":` guard' in proc.stderr and "worker thread(s)" in proc.stderr
    for name in ("galaxy.maps.zarr", "galaxy.maps.png", "galaxy.maps.log", "half.cube.zarr", "half.maps.zarr"):
        assert (tmp_path / name).exists(), name
    assert "median log age of the good pixels: 9." in proc.stdout
    assert not (tmp_path / "again.maps.png").exists()  # plot=False


def test_an_engine_run_from_a_script_without_a_main_guard(tmp_path, mock16):
    """The lower-level API too: this stopped with 'Nanny failed to start'."""
    text = (
        "from survey_proc.engine import RunConfig, run\n"
        f"summary = run(RunConfig(cube={str(mock16)!r}, out='m.zarr', workers=1, progress=False, plot=False))\n"
        "print('spectra', summary.spectra)\n"
    )
    proc = _script(tmp_path, text)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "spectra 256" in proc.stdout and "Nanny failed to start" not in proc.stderr


def test_run_takes_a_dataset_and_an_existing_client(tmp_path, mock16):
    from distributed import Client, LocalCluster

    cube = xr.open_zarr(mock16).isel(y=slice(0, 8))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster, Client(cluster) as client:
        summary = survey_proc.run(cube, out=tmp_path / "half.maps.zarr", client=client, progress=False)
        assert client.status == "running"  # the caller's client is left open
    assert isinstance(summary, RunSummary) and summary.spectra == 128 and summary.verified
    written = xr.open_zarr(tmp_path / "half.cube.zarr")
    np.testing.assert_array_equal(written.flux.values, cube.flux.values)
    maps = xr.open_zarr(tmp_path / "half.maps.zarr")
    assert maps.attrs["cube"] == str((tmp_path / "half.cube.zarr").resolve())
    assert Path(summary.figure).name == "half.maps.png" and Path(summary.log).name == "half.maps.log"


def test_run_names_what_it_does_not_take(tmp_path, mock16):
    with pytest.raises(TypeError, match=r"unknown option\(s\) min_sn; known: .*min_snr"):
        survey_proc.run(mock16, min_sn=3)
    from survey_proc.errors import OptionError

    with pytest.raises(OptionError, match="give out="):
        survey_proc.run(xr.open_zarr(mock16))


def test_run_fits_with_method_fit(tmp_path, mock16):
    cube = xr.open_zarr(mock16).isel(y=slice(0, 2), x=slice(0, 4))
    out = tmp_path / "c.fit.zarr"
    survey_proc.run(cube, out=out, method="fit", cluster="none", progress=False, plot=False)
    maps = xr.open_zarr(out)
    assert maps.attrs["model_estimator"] == "fit" and np.isfinite(maps.chi2.values).all()
