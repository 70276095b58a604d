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
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from survey_proc import config
from survey_proc.cluster._jobwatch import JobKeeper, StatesOf, wait_for_workers
from survey_proc.cluster._local import dashboard_address
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
    #: batch job ids -> their states, as the batch system reports them
    job_states: StatesOf

    def settings(self) -> dict[str, Any]:
        """The effective ``survey-proc.cluster.<name>`` settings (packaged defaults + user config), keys
        spelled with dashes whichever spelling set them (YAML dashes, environment variables underscores)."""
        return {k.replace("_", "-"): v for k, v in (config.get(f"cluster.{self.name}") or {}).items()}

    def setting(self, key: str, default: Any = None) -> Any:
        """One setting, under either spelling (``worker-timeout`` in YAML, ``worker_timeout`` from an
        environment variable such as DASK_SURVEY_PROC__CLUSTER__SLURM__WORKER_TIMEOUT)."""
        value = config.get(f"cluster.{self.name}.{key}", default)
        return default if value is None else value

    def gpus_per_job(self) -> int:
        return int(self.setting("gpus-per-job", 0))

    def job_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the dask-jobqueue cluster/job; unset (null) keys are left out."""
        settings = self.settings()
        kwargs = {k.replace("-", "_"): v for k, v in (settings.get("job") or {}).items() if v is not None}
        for key in ("job_extra_directives", "job_script_prologue", "worker_extra_args"):
            kwargs[key] = list(kwargs.get(key) or [])
        gpus = self.gpus_per_job()
        if gpus:
            kwargs["processes"] = gpus  # one worker per GPU: cores and memory split between them
            kwargs["worker_command"] = GPU_WORKER_COMMAND
            kwargs["worker_extra_args"] += ["--resources", "GPU=1"]  # = GPU_RESOURCE, as the worker CLI spells it
            kwargs = self.gpu_request(kwargs, settings, gpus)
        return kwargs

    def _module(self):
        try:
            return import_keeping_sigint(self.module)
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
        """Start the cluster (a scheduler here) and its jobs: ``workers`` workers, else ``jobs`` jobs, kept at
        that number while jobs are lost (up to ``max-job-replacements`` replacements)."""
        cluster_cls = getattr(self._module(), self.cluster_class)
        kwargs = self.job_kwargs()
        scheduler_options = {"dashboard_address": dashboard_address(), **self.setting("scheduler-options", {})}
        try:
            cluster = cluster_cls(scheduler_options=scheduler_options, **kwargs)
        except (TypeError, ValueError) as exc:
            raise SurveyProcError(
                f"could not set up --cluster {self.name} from survey-proc.cluster.{self.name}: {exc}"
            ) from exc
        jobs = (
            -(-int(workers) // max(1, int(kwargs.get("processes") or 1))) if workers else int(self.setting("jobs", 1))
        )
        adaptive = cluster.adapt(minimum_jobs=jobs, maximum_jobs=jobs)
        cluster.survey_proc_keeper = JobKeeper(cluster, adaptive, jobs, int(self.setting("max-job-replacements", 4)))
        return cluster

    def wait_for_workers(self, cluster, client) -> float:
        """Until the first worker joins (jobs wait in the queue), reporting the jobs' states; see
        :func:`survey_proc.cluster._jobwatch.wait_for_workers`."""
        return wait_for_workers(
            cluster,
            client,
            self.job_states,
            timeout=float(self.setting("worker-timeout", 600)),
            interval=float(self.setting("report-interval", 30)),
            settings_key=f"survey-proc.cluster.{self.name}",
        )


def import_keeping_sigint(name: str):
    """Import a module, keeping the SIGINT handler as it was: dask-jobqueue 0.9.0 replaces it on import
    with one that exits with status 0 (dask/dask-jobqueue#696), so Ctrl-C would end a run silently."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        return importlib.import_module(name)
    finally:
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)
