"""What the dask-jobqueue backends (``slurm``, ``pbs``) share: settings -> keyword arguments -> cluster.

Each backend module (:mod:`._slurm`, :mod:`._pbs`) declares a :class:`JobqueueBackend`: the
dask-jobqueue classes to use and how the site asks for GPUs. Settings come from the packaged
``survey_proc/cluster/<backend>.yaml`` (dask.config namespace ``survey-proc.cluster.<backend>``),
which users override in ``~/.config/dask/``.

A GPU job (``gpus-per-job > 0``) starts ``dask cuda worker`` (dask-cuda) instead of the plain
worker: one worker process per GPU, each with its own GPU first in CUDA_VISIBLE_DEVICES (so
``cuda`` = device 0 = its GPU), no RMM pool (torch keeps its
own caching allocator), and every worker tagged with the resource ``GPU=1`` so that regions are
only scheduled where a GPU is.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from survey_proc import config
from survey_proc.errors import SurveyProcError

#: the scheduler address in a job script printed before any scheduler exists (as dask-jobqueue does)
PLACEHOLDER_ADDRESS = "tcp://<insert-scheduler-address-here>:8786"
GPU_WORKER_COMMAND = "dask cuda worker"  # run as `python -m dask cuda worker` (dask-cuda's CLI)
GPU_RESOURCE = {"GPU": 1}  #: what a GPU worker offers (one GPU)
#: what a region task asks of a GPU worker: a share of its GPU, so that every thread of the worker
#: runs a region at once (reads and preprocessing on the CPU overlap inference; the estimator takes
#: turns on the device). Asking for the whole GPU would run one region at a time per worker.
#: A power of two, so the scheduler's sums of shares are exact.
GPU_TASK = {"GPU": 2.0**-10}


@dataclass(frozen=True)
class JobqueueBackend:
    """One dask-jobqueue backend: its classes and how a job asks the batch system for GPUs."""

    name: str
    module: str  #: the dask-jobqueue module defining both classes, e.g. ``dask_jobqueue.slurm``
    cluster_class: str
    job_class: str
    #: (job kwargs, backend settings, gpus per job) -> job kwargs with the GPU request added
    gpu_request: Callable[[dict[str, Any], dict[str, Any], int], dict[str, Any]]

    def settings(self) -> dict[str, Any]:
        """The effective ``survey-proc.cluster.<name>`` settings (packaged defaults + user config)."""
        return dict(config.get(f"cluster.{self.name}") or {})

    def gpus_per_job(self) -> int:
        return int(self.settings().get("gpus-per-job") or 0)

    def job_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the dask-jobqueue cluster/job; unset (null) keys are left out."""
        settings = self.settings()
        kwargs = {k.replace("-", "_"): v for k, v in (settings.get("job") or {}).items() if v is not None}
        for key in ("job_extra_directives", "job_script_prologue", "worker_extra_args"):
            kwargs[key] = list(kwargs.get(key) or [])
        gpus = int(settings.get("gpus-per-job") or 0)
        if gpus:
            kwargs["processes"] = gpus  # one worker per GPU: cores and memory split between them
            kwargs["worker_command"] = GPU_WORKER_COMMAND
            kwargs["worker_extra_args"] += ["--resources", "GPU=1"]  # = GPU_RESOURCE, as the worker CLI spells it
            kwargs = self.gpu_request(kwargs, settings, gpus)
        return kwargs

    def _module(self):
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:
            raise SurveyProcError(
                f"--cluster {self.name} needs dask-jobqueue, which is not installed (pip install 'survey-proc[hpc]')"
            ) from exc

    def job_script(self) -> str:
        """The batch script one job would run (scheduler address and worker name are placeholders)."""
        job_cls = getattr(self._module(), self.job_class)
        try:
            job = job_cls(PLACEHOLDER_ADDRESS, name="dummy-name", **self.job_kwargs())
        except (TypeError, ValueError) as exc:
            raise SurveyProcError(f"survey-proc.cluster.{self.name}.job: {exc}") from exc
        return job.job_script()

    def start(self, workers: int | None = None):
        """Start the cluster (a scheduler here) and submit its jobs: ``workers`` workers, else ``jobs`` jobs."""
        cluster_cls = getattr(self._module(), self.cluster_class)
        settings = self.settings()
        kwargs = self.job_kwargs()
        scheduler_options = dict(settings.get("scheduler-options") or {})
        try:
            cluster = cluster_cls(scheduler_options=scheduler_options or None, **kwargs)
        except (TypeError, ValueError) as exc:
            raise SurveyProcError(
                f"could not set up --cluster {self.name} from survey-proc.cluster.{self.name}: {exc}"
            ) from exc
        if workers:
            cluster.scale(workers)
        else:
            cluster.scale(jobs=int(settings.get("jobs") or 1))
        return cluster
