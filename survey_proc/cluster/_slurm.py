"""``--cluster slurm``: workers in SLURM batch jobs (dask-jobqueue ``SLURMCluster``).

Settings: ``survey_proc/cluster/slurm.yaml`` (``survey-proc.cluster.slurm``). GPU jobs add the
site's GPU directive (default ``--gres=gpu:N``) to the job header.
"""

from __future__ import annotations

from typing import Any

from survey_proc.cluster._jobqueue import JobqueueBackend


def _request_gpus(kwargs: dict[str, Any], settings: dict[str, Any], gpus: int) -> dict[str, Any]:
    directive = str(settings.get("gpu-directive") or "--gres=gpu:{gpus}").format(gpus=gpus)
    return {**kwargs, "job_extra_directives": [*kwargs["job_extra_directives"], directive]}


SLURM = JobqueueBackend(
    name="slurm",
    module="dask_jobqueue.slurm",
    cluster_class="SLURMCluster",
    job_class="SLURMJob",
    gpu_request=_request_gpus,
)
