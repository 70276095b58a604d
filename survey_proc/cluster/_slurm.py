"""``--cluster slurm``: workers in SLURM batch jobs (dask-jobqueue ``SLURMCluster``).

Settings: ``survey_proc/cluster/slurm.yaml`` (``survey-proc.cluster.slurm``). GPU jobs add the
site's GPU directive (default ``--gres=gpu:N``) to the job header.
"""

from __future__ import annotations

import subprocess
from typing import Any

from survey_proc.cluster._jobqueue import JobqueueBackend
from survey_proc.cluster._jobwatch import JobState


def _request_gpus(kwargs: dict[str, Any], settings: dict[str, Any], gpus: int) -> dict[str, Any]:
    directive = str(settings.get("gpu-directive") or "--gres=gpu:{gpus}").format(gpus=gpus)
    return {**kwargs, "job_extra_directives": [*kwargs["job_extra_directives"], directive]}


def _fields(line: str) -> dict[str, str]:
    """``Key=Value`` pairs of one ``scontrol show job -o`` line (values without spaces, as scontrol prints
    them on one line, except the last fields, which are not read here)."""
    out = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            out.setdefault(key, value)
    return out


def _log_path(fields: dict[str, str], job_id: str) -> str:
    """The job's error log (else its output), with sbatch's %j/%J (job id) and %x (job name) filled in:
    scontrol shows the pattern as submitted."""
    path = fields.get("StdErr") or fields.get("StdOut", "")
    for pattern, value in (("%J", job_id), ("%j", job_id), ("%x", fields.get("JobName", ""))):
        path = path.replace(pattern, value)
    return path


def job_states(ids: list[str]) -> dict[str, JobState]:
    """The state, reason and log of SLURM jobs (``scontrol show job -o``: also jobs ended in the last
    MinJobAge seconds); a job SLURM no longer knows is GONE."""
    states = {}
    for job_id in ids:
        try:
            out = subprocess.run(
                ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        f = _fields(out.splitlines()[0]) if out.strip() else {}
        states[job_id] = JobState(job_id, f.get("JobState", "GONE"), f.get("Reason", ""), _log_path(f, job_id))
    return states


SLURM = JobqueueBackend(
    name="slurm",
    module="dask_jobqueue.slurm",
    cluster_class="SLURMCluster",
    job_class="SLURMJob",
    gpu_request=_request_gpus,
    job_states=job_states,
)
