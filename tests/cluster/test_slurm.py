"""--cluster slurm on a real SLURM (marker ``slurm``; skipped where no SLURM answers).

Start one on this machine with ``sudo cluster/single-node-slurm.sh`` (Debian's slurm-wlm, the daemons run
directly); ``.ci/run`` does. Worker jobs ask for one core and a little memory each, so that two fit on
a 2-core node.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import dask.config
import numpy as np
import pytest
import xarray as xr

pytestmark = pytest.mark.slurm

#: job names of this test session (other sessions on the same SLURM must not see or cancel ours)
JOBS = f"sp-test-{os.getpid()}"
CLI_JOBS = f"sp-cli-{os.getpid()}"

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
        "survey-proc.cluster.slurm.job.job-name": JOBS,
        "survey-proc.cluster.slurm.job.log-directory": str(logs),
    }
    with dask.config.set(settings):
        yield logs


SLURM_ENV = {  # the same small jobs, for the CLI in a subprocess
    "DASK_SURVEY_PROC__CLUSTER__SLURM__JOBS": "2",
    "DASK_SURVEY_PROC__CLUSTER__SLURM__JOB__CORES": "1",
    "DASK_SURVEY_PROC__CLUSTER__SLURM__JOB__PROCESSES": "1",
    "DASK_SURVEY_PROC__CLUSTER__SLURM__JOB__MEMORY": "3GiB",
    "DASK_SURVEY_PROC__CLUSTER__SLURM__JOB__WALLTIME": "00:20:00",
    "DASK_SURVEY_PROC__CLUSTER__SLURM__JOB__JOB_NAME": CLI_JOBS,
}


def _cli(args: list[str], cwd, extra_env: dict | None = None, **kw) -> subprocess.Popen:
    env = dict(os.environ, **SLURM_ENV, **(extra_env or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "survey_proc", *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw,
    )  # fmt: skip


def _running(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-t", "R", "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()


def _gone(name: str, seconds: float = 30.0) -> bool:
    """Whether the jobs named ``name`` leave the queue within ``seconds`` (cancelling takes a moment)."""
    for _ in range(int(seconds * 2)):
        if not _jobs(name):
            return True
        time.sleep(0.5)
    return False


def _jobs(name: str = JOBS) -> list[str]:
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
    assert _gone(JOBS), "worker jobs left behind"


def test_slurm_run_survives_a_cancelled_job(slurm, tmp_path):
    """A worker job cancelled mid-run (scancel) loses no region and is replaced by a new job (issue 16: it
    was not, and the run went on at half strength): the run finishes with every region verified."""
    from conftest import write_small_mock

    from survey_proc.engine import RunConfig, run

    cube = write_small_mock(tmp_path / "c.zarr", seed=11, n=64, chunk=4)  # 256 regions: ~40 s on 2 cores
    cancelled: list[str] = []

    def cancel_one_when_running() -> None:
        for _ in range(600):
            jobs = _jobs()
            running = subprocess.run(
                ["squeue", "-h", "-n", JOBS, "-t", "R", "-o", "%i"],
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
    assert s.verified and s.regions_run + s.regions_skipped == s.regions == 256


def _wait(predicate, seconds: float) -> bool:
    for _ in range(int(seconds * 2)):
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_lost_jobs_are_replaced_up_to_the_limit(slurm, caplog):
    """A cancelled worker job is resubmitted (issue 16: the run went on at half strength), until
    max-job-replacements jobs were replaced; after that the cluster goes on with what it has."""
    from survey_proc.cluster import make_client

    with dask.config.set({"survey-proc.cluster.slurm.max-job-replacements": 1}), make_client("slurm") as client:
        assert _wait(lambda: len(client.scheduler_info()["workers"]) == 2, 120)
        first = _running(JOBS)
        subprocess.run(["scancel", first[0]], check=True)
        assert _wait(lambda: len(set(_running(JOBS)) - {first[0]}) == 2, 120), "not replaced"
        assert _wait(lambda: len(client.scheduler_info()["workers"]) == 2, 120)
        second = sorted(set(_running(JOBS)) - set(first))
        subprocess.run(["scancel", second[0]], check=True)
        time.sleep(25)  # longer than the replacement above took
        assert len(_jobs(JOBS)) == 1, "replaced beyond max-job-replacements"
        assert len(client.scheduler_info()["workers"]) == 1
    assert "lost jobs are no longer replaced" in caplog.text
    assert _gone(JOBS)


def test_ctrl_c_on_a_slurm_run_exits_130_and_says_how_to_resume(slurm, tmp_path):
    """dask-jobqueue replaces the SIGINT handler on import with one that exits 0 (issue 16: Ctrl-C ended
    the run silently with status 0). Now: status 130, the usual message, and no job left behind."""
    from conftest import write_small_mock

    cube = write_small_mock(tmp_path / "c.zarr", seed=12, n=64, chunk=4)  # 256 regions, ~4 s of work
    proc = _cli(["run", "--cube", str(cube), "--cluster", "slurm", "--quiet"], cwd=tmp_path)
    written = tmp_path / "c.maps.zarr" / "log_age" / "c"
    for _ in range(1200):  # until the first region's maps are written: workers up, regions in flight (a fixed
        if written.is_dir() and any(written.rglob("*")):  # wait once let a fast run finish before Ctrl-C)
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, out[-800:], err[-1500:])
    assert "interrupted" in err and "again to resume" in err
    assert _gone(CLI_JOBS), "worker jobs left behind after Ctrl-C"


def test_a_job_that_fails_at_start_is_reported_with_its_log(slurm, tmp_path, mock16):
    """Jobs that end before a worker starts (a broken prologue here) no longer leave a bar frozen at 0 %:
    the run stops with the job, its state and the end of its log."""
    env = {
        "DASK_SURVEY_PROC__CLUSTER__SLURM__JOB__JOB_SCRIPT_PROLOGUE": '["echo prologue-broke >&2", "exit 3"]',
        "DASK_SURVEY_PROC__CLUSTER__SLURM__JOB__LOG_DIRECTORY": str(tmp_path / "logs"),
        "DASK_SURVEY_PROC__CLUSTER__SLURM__REPORT_INTERVAL": "2",
    }
    (tmp_path / "logs").mkdir()
    proc = _cli(["run", "--cube", str(mock16), "--out", str(tmp_path / "m.zarr"), "--cluster", "slurm"], tmp_path, env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out[-500:], err[-1500:])
    assert "every worker job ended before a worker started" in err
    assert "FAILED" in err and "prologue-broke" in err
    assert _gone(CLI_JOBS)


def test_a_job_that_never_starts_is_reported_with_the_reason(slurm, tmp_path, mock16):
    """A job the batch system keeps pending (here: not to begin for an hour) is named with SLURM's reason
    once worker-timeout passes, and cancelled."""
    env = {
        "DASK_SURVEY_PROC__CLUSTER__SLURM__JOB__JOB_EXTRA_DIRECTIVES": '["--begin=now+3600"]',
        "DASK_SURVEY_PROC__CLUSTER__SLURM__WORKER_TIMEOUT": "12",
        "DASK_SURVEY_PROC__CLUSTER__SLURM__REPORT_INTERVAL": "3",
    }
    proc = _cli(["run", "--cube", str(mock16), "--out", str(tmp_path / "m.zarr"), "--cluster", "slurm"], tmp_path, env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out[-500:], err[-1500:])
    assert "no worker started within 12 s" in err and "PENDING (BeginTime)" in err
    assert _gone(CLI_JOBS), "pending jobs left behind"
