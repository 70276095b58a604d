"""One place that turns ``--cluster`` into a Dask client (one module per backend).

``local`` (default): LocalCluster on this machine (:mod:`._local`); ``local-cuda``: one dask-cuda
worker per GPU (:mod:`._cuda`); ``slurm`` / ``pbs``: workers in batch jobs through dask-jobqueue
(:mod:`._slurm`, :mod:`._pbs`, configured by the packaged ``cluster/*.yaml``); ``none``: no
cluster, tasks run in the calling process one after another (debugging, profiling);
``tcp://HOST:PORT`` (or any scheduler address): connect to a running scheduler.

:func:`cluster_kind` says what a spec means for the tasks (device, resources they require)
without starting anything.
"""

from survey_proc.cluster._client import KNOWN, ClusterKind, cluster_kind, job_script, make_client
from survey_proc.cluster._cuda import gpu_worker_threads
from survey_proc.cluster._jobqueue import GPU_RESOURCE, GPU_TASK, PLACEHOLDER_ADDRESS
from survey_proc.cluster._local import local_cluster, tune_heap, unguarded_script

__all__ = [
    "GPU_RESOURCE",
    "GPU_TASK",
    "KNOWN",
    "PLACEHOLDER_ADDRESS",
    "ClusterKind",
    "cluster_kind",
    "gpu_worker_threads",
    "job_script",
    "local_cluster",
    "make_client",
    "tune_heap",
    "unguarded_script",
]
