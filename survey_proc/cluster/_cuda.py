"""``--cluster local-cuda``: one dask-cuda worker per GPU of this machine (``LocalCUDACluster``).

Each worker has its own GPU first in ``CUDA_VISIBLE_DEVICES`` (set per worker), so the model is
loaded on ``cuda`` = that GPU. No RMM pool is configured: torch's caching allocator manages the
device memory, and an RMM pool would reserve most of it for nothing. Workers carry the resource
``GPU=1``; regions are submitted requiring it. Settings: ``survey_proc/cluster/local-cuda.yaml``.
dask-cuda is imported here only (``pip install 'survey-proc[gpu]'``).
"""

from __future__ import annotations

import dask.config
from dask.system import CPU_COUNT  # cores this process may use (affinity, cgroup quota)

from survey_proc import config
from survey_proc.cluster._jobqueue import GPU_RESOURCE
from survey_proc.cluster._local import dashboard_address, worker_config
from survey_proc.errors import SurveyProcError


def gpu_worker_threads(setting: int | str | None, cores: int, gpus: int) -> int:
    """Threads of each GPU worker: ``setting``, or for ``auto``/None the machine's ``cores`` shared
    among its ``gpus`` workers (at least 1). Each thread reads and preprocesses regions on the CPU
    (the compiled passes and NumPy's partitions release the GIL) while another thread's batch runs
    on the GPU, so one worker per GPU needs the cores to feed it."""
    if setting in (None, "auto"):
        return max(1, int(cores) // max(1, int(gpus)))
    threads = int(setting)
    if threads < 1:
        raise SurveyProcError(
            f"survey-proc.cluster.local-cuda.threads-per-worker must be auto or at least 1, not {setting!r}"
        )
    return threads


def _visible_gpus(devices: str | None, workers: int | None) -> int:
    """How many GPU workers the cluster will start: ``workers``, the ``devices`` listed, or every GPU."""
    if workers:
        return int(workers)
    if devices is not None and str(devices).strip():  # "0" (or 0 from an environment variable) is one GPU
        return len([d for d in str(devices).split(",") if d.strip()])
    from dask_cuda.utils import get_n_gpus

    return int(get_n_gpus())


def local_cuda_cluster(workers: int | None = None):
    """A LocalCUDACluster with one worker per visible GPU (or ``workers`` of them)."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise SurveyProcError(
            "--cluster local-cuda needs dask-cuda, which is not installed "
            "(pip install 'survey-proc[gpu]', on a machine with NVIDIA GPUs)"
        ) from exc
    settings = dict(config.get("cluster.local-cuda") or {})
    devices = _devices(settings.get("devices"))
    try:
        gpus = _visible_gpus(devices, workers)
    except Exception as exc:  # no driver: NVML cannot start
        raise SurveyProcError(
            f"--cluster local-cuda found no GPU: {type(exc).__name__}: {exc} {_ASK_NVIDIA_SMI}"
        ) from exc
    threads = gpu_worker_threads(settings.get("threads-per-worker"), CPU_COUNT, gpus)
    try:
        with dask.config.set(worker_config()):
            return LocalCUDACluster(
                CUDA_VISIBLE_DEVICES=None if devices is None else str(devices),
                n_workers=workers,
                threads_per_worker=threads,
                memory_limit=settings.get("memory-limit", "auto"),
                rmm_pool_size=None,
                rmm_managed_memory=False,
                rmm_async=False,
                resources=dict(GPU_RESOURCE),
                dashboard_address=dashboard_address(),
                silence_logs=40,
            )
    except Exception as exc:  # no driver, no GPU visible, CUDA_VISIBLE_DEVICES naming a missing GPU
        raise SurveyProcError(
            f"--cluster local-cuda could not start: {type(exc).__name__}: {exc} {_ASK_NVIDIA_SMI}"
        ) from exc


_ASK_NVIDIA_SMI = "(is there an NVIDIA GPU and driver on this machine? `nvidia-smi` tells)"


def _devices(devices):
    """The ``devices`` setting as CUDA_VISIBLE_DEVICES spells it (``"0,1"`` from an environment variable
    arrives as the tuple (0, 1))."""
    if isinstance(devices, (list, tuple)):
        return ",".join(str(d) for d in devices)
    return devices
