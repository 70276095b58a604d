"""``--cluster pbs``: workers in PBS batch jobs (dask-jobqueue ``PBSCluster``).

Settings: ``survey_proc/cluster/pbs.yaml`` (``survey-proc.cluster.pbs``). GPU jobs replace the
``-l`` resource line by ``gpu-resource-spec`` (default PBS Pro ``select=1:ncpus=C:ngpus=N:mem=M``).
"""

from __future__ import annotations

from typing import Any

from dask.utils import parse_bytes

from survey_proc.cluster._jobqueue import JobqueueBackend


def _request_gpus(kwargs: dict[str, Any], settings: dict[str, Any], gpus: int) -> dict[str, Any]:
    from dask_jobqueue.pbs import pbs_format_bytes_ceil

    template = str(settings.get("gpu-resource-spec") or "select=1:ncpus={cores}:ngpus={gpus}:mem={memory}")
    memory = pbs_format_bytes_ceil(parse_bytes(str(kwargs["memory"])))
    spec = template.format(cores=kwargs["cores"], gpus=gpus, memory=memory)
    return {**kwargs, "resource_spec": spec}


PBS = JobqueueBackend(
    name="pbs", module="dask_jobqueue.pbs", cluster_class="PBSCluster", job_class="PBSJob", gpu_request=_request_gpus
)
