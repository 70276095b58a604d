"""``--cluster pbs``: workers in PBS batch jobs (dask-jobqueue ``PBSCluster``).

Settings: ``survey_proc/cluster/pbs.yaml`` (``survey-proc.cluster.pbs``). GPU jobs replace the
``-l`` resource line by ``gpu-resource-spec`` (default PBS Pro ``select=1:ncpus=C:ngpus=N:mem=M``).
"""

from __future__ import annotations

import subprocess
from typing import Any

from dask.utils import parse_bytes

from survey_proc.cluster._jobqueue import JobqueueBackend
from survey_proc.cluster._jobwatch import JobState


def _request_gpus(kwargs: dict[str, Any], settings: dict[str, Any], gpus: int) -> dict[str, Any]:
    from dask_jobqueue.pbs import pbs_format_bytes_ceil

    template = str(settings.get("gpu-resource-spec") or "select=1:ncpus={cores}:ngpus={gpus}:mem={memory}")
    memory = pbs_format_bytes_ceil(parse_bytes(str(kwargs["memory"])))
    spec = template.format(cores=kwargs["cores"], gpus=gpus, memory=memory)
    return {**kwargs, "resource_spec": spec}


def parse_qstat(text: str) -> dict[str, str]:
    """``key = value`` lines of ``qstat -f`` (continuation lines, indented by a tab, joined)."""
    out: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if " = " in line and not line.startswith("\t"):
            key, _, value = line.strip().partition(" = ")
            out[key] = value
        elif key and line.startswith("\t"):
            out[key] += line.strip()
    return out


def job_states(ids: list[str]) -> dict[str, JobState]:
    """The state (Q, R, E, F, ...), comment and log of PBS jobs (``qstat -f -x``, finished ones too)."""
    states = {}
    for job_id in ids:
        try:
            out = subprocess.run(["qstat", "-f", "-x", job_id], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        f = parse_qstat(out)
        log = f.get("Error_Path", f.get("Output_Path", "")).partition(":")[2]
        states[job_id] = JobState(job_id, f.get("job_state", "GONE"), f.get("comment", ""), log)
    return states


PBS = JobqueueBackend(
    name="pbs",
    module="dask_jobqueue.pbs",
    cluster_class="PBSCluster",
    job_class="PBSJob",
    gpu_request=_request_gpus,
    job_states=job_states,
)
