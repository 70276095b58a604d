"""Turning a ``--cluster`` spec into a Dask client: what the spec means, and starting it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from survey_proc.cluster._cuda import local_cuda_cluster
from survey_proc.cluster._jobqueue import GPU_TASK, JobqueueBackend
from survey_proc.cluster._local import local_cluster
from survey_proc.cluster._pbs import PBS
from survey_proc.cluster._slurm import SLURM
from survey_proc.errors import SurveyProcError

KNOWN = ("local", "local-cuda", "slurm", "pbs", "none")
JOBQUEUE: dict[str, JobqueueBackend] = {"slurm": SLURM, "pbs": PBS}


@dataclass(frozen=True)
class ClusterKind:
    """What a ``--cluster`` spec means for the tasks.

    device : where workers run the model (``cpu`` or ``cuda``: the worker's own GPU).
    resources : worker resources every region task requires (on GPU clusters a share of the worker's
        ``GPU=1``, :data:`GPU_TASK`, so that all its threads run regions at once).
    """

    spec: str
    device: str = "cpu"
    resources: dict[str, float] | None = None


def _is_address(spec: str) -> bool:
    return "://" in spec or ":" in spec


def cluster_kind(spec: str) -> ClusterKind:
    """The :class:`ClusterKind` of a ``--cluster`` spec (nothing is started)."""
    if spec == "local-cuda":
        return ClusterKind(spec, "cuda", dict(GPU_TASK))
    if spec in JOBQUEUE:
        gpu = JOBQUEUE[spec].gpus_per_job() > 0
        return ClusterKind(spec, "cuda" if gpu else "cpu", dict(GPU_TASK) if gpu else None)
    if spec in ("local", "none") or _is_address(spec):
        return ClusterKind(spec)
    raise SurveyProcError(
        f"unknown --cluster {spec!r}: use one of {', '.join(KNOWN)} or a scheduler address (tcp://host:8786)"
    )


def job_script(spec: str) -> str:
    """The batch script a ``slurm`` or ``pbs`` cluster would submit per job (nothing is submitted)."""
    if spec not in JOBQUEUE:
        raise SurveyProcError(
            f"--cluster {spec!r} submits no job scripts; job scripts exist for {' and '.join(JOBQUEUE)}"
        )
    return JOBQUEUE[spec].job_script()


def _start(spec: str, workers: int | None, threads_per_worker: int):
    """The cluster object a spec starts (None for a scheduler address)."""
    if spec == "local":
        return local_cluster(workers, threads_per_worker)
    if spec == "local-cuda":
        return local_cuda_cluster(workers)
    if spec in JOBQUEUE:
        return JOBQUEUE[spec].start(workers)
    return None


@contextlib.contextmanager
def make_client(spec: str = "local", workers: int | None = None, threads_per_worker: int = 1) -> Iterator:
    """Context manager yielding a ``distributed.Client`` (or None for ``none``); closes what it started."""
    cluster_kind(spec)  # refuse an unknown spec before anything starts
    if spec == "none":
        yield None
        return
    from distributed import Client

    cluster = _start(spec, workers, threads_per_worker)
    try:
        if cluster is not None:
            client = Client(cluster)
            if spec in JOBQUEUE:  # batch jobs: wait for the first worker here, saying what the jobs wait for
                try:
                    JOBQUEUE[spec].wait_for_workers(cluster, client)
                except BaseException:
                    client.close()
                    raise
        else:
            try:
                client = Client(spec, timeout="30s")
            except OSError as exc:
                raise SurveyProcError(f"could not connect to the Dask scheduler at {spec}: {exc}") from exc
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
