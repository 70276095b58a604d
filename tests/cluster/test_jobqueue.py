"""The dask-jobqueue backends (slurm, pbs): job scripts against golden files, GPU requests, user settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask
import pytest
import yaml

from survey_proc.cluster import cluster_kind, job_script

ROOT = Path(__file__).parents[2]
PACKAGED = ROOT / "survey_proc" / "cluster"
DOCUMENTED = ROOT / "cluster"
GOLDEN = Path(__file__).with_name("golden")


def _packaged(backend: str) -> dict:
    """The packaged settings of a backend, so a user's ~/.config/dask cannot change the golden scripts."""
    settings = yaml.safe_load((PACKAGED / f"{backend}.yaml").read_text())["survey-proc"]["cluster"][backend]
    return {f"survey-proc.cluster.{backend}": settings}


@pytest.fixture()
def jobqueue():
    return pytest.importorskip("dask_jobqueue")  # the [hpc] extra (installed by .ci/run)


@pytest.mark.parametrize("backend", ["slurm", "pbs"])
@pytest.mark.parametrize("gpus", [0, 2])
def test_job_scripts_match_golden_files(backend, gpus, jobqueue):
    name = f"{backend}{'-gpu' if gpus else ''}-job.sh"
    with dask.config.set(_packaged(backend)), dask.config.set({f"survey-proc.cluster.{backend}.gpus-per-job": gpus}):
        script = job_script(backend).replace(sys.executable, "PYTHON")
    assert script == (GOLDEN / name).read_text()


def test_gpu_jobs_request_gpus_and_tag_workers(jobqueue):
    with (
        dask.config.set(_packaged("slurm")),
        dask.config.set({"survey-proc.cluster.slurm.gpus-per-job": 4, "survey-proc.cluster.slurm.job.cores": 16}),
    ):
        script = job_script("slurm")
        kind = cluster_kind("slurm")
    assert "#SBATCH --gres=gpu:4" in script
    assert "-m dask cuda worker" in script and "--resources GPU=1" in script
    assert "--nthreads 4" in script  # 16 cores shared by one worker per GPU
    assert kind.device == "cuda" and 0 < kind.resources["GPU"] < 1  # a share of the worker's GPU=1
    with (
        dask.config.set(_packaged("pbs")),
        dask.config.set({"survey-proc.cluster.pbs.gpus-per-job": 1, "survey-proc.cluster.pbs.job.memory": "100GB"}),
    ):
        assert "#PBS -l select=1:ncpus=8:ngpus=1:mem=94GB" in job_script("pbs")


def test_user_config_overrides_packaged_defaults(jobqueue):
    with dask.config.set(
        {
            "survey-proc.cluster.slurm.job.queue": "gpu-long",
            "survey-proc.cluster.slurm.job.account": "astro42",
            "survey-proc.cluster.slurm.job.job-script-prologue": ["source ~/venv/bin/activate"],
        }
    ):
        script = job_script("slurm")
    assert "#SBATCH -p gpu-long" in script and "#SBATCH -A astro42" in script
    assert "source ~/venv/bin/activate\n" in script


def test_documented_copies_equal_the_packaged_yaml():
    for path in PACKAGED.glob("*.yaml"):
        assert (DOCUMENTED / path.name).read_text() == path.read_text(), f"cluster/{path.name} differs from {path}"


def test_cli_prints_the_job_script(jobqueue):
    proc = subprocess.run(
        [sys.executable, "-m", "survey_proc", "cluster", "job-script", "--cluster", "pbs"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!/usr/bin/env bash\n") and "#PBS -l walltime=" in proc.stdout
    assert "filled in when" in proc.stderr


def test_batch_job_states_are_read_from_the_batch_systems_words():
    """SLURM's one-line `scontrol show job -o` and PBS's `qstat -f` become JobStates; log patterns are
    filled in (scontrol shows %J as submitted)."""
    from survey_proc.cluster._pbs import parse_qstat
    from survey_proc.cluster._slurm import _fields, _log_path

    line = (
        "JobId=46 JobName=survey-proc UserId=u(1) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) "
        "StdErr=/logs/survey-proc-%J.err StdIn=/dev/null StdOut=/logs/survey-proc-%J.out"
    )
    fields = _fields(line)
    assert fields["JobState"] == "FAILED" and fields["Reason"] == "NonZeroExitCode"
    assert _log_path(fields, "46") == "/logs/survey-proc-46.err"
    qstat = (
        "Job Id: 123.pbs\n    Job_Name = survey-proc\n    job_state = Q\n"
        "    comment = Not Running: Insufficient amount of resource: ncpus (R: 8 A: 4 T: 4)\n"
        "    Error_Path = login1:/home/u/survey-proc.e123\n\tcontinued\n"
    )
    f = parse_qstat(qstat)
    assert f["job_state"] == "Q" and f["comment"].startswith("Not Running: Insufficient")
    assert f["Error_Path"] == "login1:/home/u/survey-proc.e123continued"


def test_a_pending_job_is_described_with_its_reason_and_ended_jobs_are_told_apart():
    from survey_proc.cluster._jobwatch import JobState

    assert JobState("7", "PENDING", "Resources").describe() == "job 7 PENDING (Resources)"
    assert not JobState("7", "PENDING", "Resources").ended
    assert JobState("8", "FAILED").ended and JobState("9", "F").ended and JobState("10", "GONE").ended
    assert JobState("11", "RUNNING", "None").describe() == "job 11 RUNNING"
