"""--cluster slurm on a real SLURM (marker ``slurm``; skipped where no SLURM answers).

Start one on this machine with ``sudo cluster/single-node-slurm.sh`` (Debian's slurm-wlm, the daemons run
directly); ``.ci/run`` does. Worker jobs ask for one core and a little memory each, so that two fit on
a 2-core node.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import dask.config
import numpy as np
import pytest
import xarray as xr

pytestmark = pytest.mark.slurm

OUTPUTS = ("log_age", "metallicity", "av", "sigma")


def _slurm_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """Small worker jobs on the local SLURM, their logs in a temporary folder."""
    if not _slurm_answers():
        pytest.skip("no SLURM answers here (start one: sudo cluster/single-node-slurm.sh)")
    pytest.importorskip("dask_jobqueue")
    logs = tmp_path_factory.mktemp("slurm-logs")
    settings = {
        "survey-proc.cluster.slurm.jobs": 2,
        "survey-proc.cluster.slurm.job.cores": 1,
        "survey-proc.cluster.slurm.job.processes": 1,
        "survey-proc.cluster.slurm.job.memory": "3GiB",
        "survey-proc.cluster.slurm.job.walltime": "00:20:00",
        "survey-proc.cluster.slurm.job.job-name": "survey-proc-test",
        "survey-proc.cluster.slurm.job.log-directory": str(logs),
    }
    with dask.config.set(settings):
        yield logs


def _jobs(name: str = "survey-proc-test") -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, timeout=10)
    return out.stdout.split()


def test_slurm_maps_equal_local(slurm, mock16, tmp_path):
    """The regions run in SLURM worker jobs give the maps a LocalCluster gives, to float32 rounding."""
    from survey_proc.engine import RunConfig, run

    ref = run(RunConfig(cube=str(mock16), out=str(tmp_path / "local.zarr"), cluster="local", workers=1))
    s = run(RunConfig(cube=str(mock16), out=str(tmp_path / "slurm.zarr"), cluster="slurm"))
    assert s.verified and s.spectra == ref.spectra and s.fitted == ref.fitted
    a, b = xr.open_zarr(tmp_path / "local.zarr"), xr.open_zarr(tmp_path / "slurm.zarr")
    for name in OUTPUTS:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    np.testing.assert_array_equal(a.flag.values, b.flag.values)
    assert not _jobs(), "worker jobs left behind"


def test_slurm_run_survives_a_cancelled_job(slurm, tmp_path):
    """A worker job cancelled mid-run (scancel) loses no region: the run finishes with every region
    verified, on the job that is left."""
    from conftest import write_small_mock

    from survey_proc.engine import RunConfig, run

    cube = write_small_mock(tmp_path / "c.zarr", seed=11, n=24, chunk=4)  # 36 regions
    cancelled: list[str] = []

    def cancel_one_when_running() -> None:
        for _ in range(600):
            jobs = _jobs()
            running = subprocess.run(
                ["squeue", "-h", "-n", "survey-proc-test", "-t", "R", "-o", "%i"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.split()
            if len(running) == 2 and jobs:
                time.sleep(8)  # both jobs have workers and regions in flight
                subprocess.run(["scancel", running[0]], check=False)
                cancelled.append(running[0])
                return
            time.sleep(0.5)

    killer = threading.Thread(target=cancel_one_when_running, daemon=True)
    killer.start()
    s = run(RunConfig(cube=str(cube), out=str(tmp_path / "m.zarr"), cluster="slurm"))
    killer.join(timeout=5)
    assert cancelled, "the run ended before a job could be cancelled"
    assert s.verified and s.regions_run + s.regions_skipped == s.regions == 36
