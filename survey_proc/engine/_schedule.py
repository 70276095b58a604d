"""The pending regions of many cubes on one Dask client: worker setup, a bounded queue, retries.

Before the first region every worker loads each job's estimator (:func:`setup_workers`, timed
apart). Regions of a few cubes at a time are interleaved (:class:`Feeder`) and only a few per
worker thread are queued at once, so a batch of cubes keeps the workers busy without flooding the
scheduler; each region's task is retried ``retries`` times; a cube whose regions keep failing is
abandoned (its queued regions cancelled) while the others carry on.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter, deque

from survey_proc import config
from survey_proc.cluster import cluster_kind
from survey_proc.engine._config import RunConfig
from survey_proc.engine._jobs import CubeJob, OnClose, failure_reason, max_failed_regions, spectra_bar
from survey_proc.engine._region import process_region, setup_worker
from survey_proc.stores import Region


class Feeder:
    """Regions to submit next: round-robin over a few active cubes, the next cube joining when one is out."""

    def __init__(self, jobs: list[CubeJob], concurrent: int) -> None:
        self.waiting = deque(j for j in jobs if j.pending)
        self.active: deque[tuple[CubeJob, deque[Region]]] = deque()
        self.concurrent = max(1, concurrent)

    def next(self) -> tuple[CubeJob, Region] | None:
        while len(self.active) < self.concurrent and self.waiting:
            job = self.waiting.popleft()
            self.active.append((job, deque(job.pending)))
        while self.active:
            job, todo = self.active.popleft()
            if job.abandoned or not todo:
                continue
            region = todo.popleft()
            if todo:
                self.active.append((job, todo))
            return job, region
        return None


def worker_threads(client) -> int:
    """Threads of all the client's workers."""
    workers = client.scheduler_info().get("workers", {})
    return sum(int(w.get("nthreads", 1)) for w in workers.values())


def setup_workers(client, jobs: list[CubeJob], resources) -> float:
    """Load each job's estimator on every worker present before any region is timed; wall seconds.

    Workers that join later (batch-queue jobs) load it with their first region. A failure here is
    left for the regions to report (with the store and region named).
    """
    from distributed import wait

    t0 = time.perf_counter()
    opts = list({(j.opts.model, j.opts.device, j.opts.threads): j.opts for j in jobs}.values())
    futures = [
        client.submit(
            setup_worker,
            o,
            key=f"setup-{uuid.uuid4().hex}",
            workers=[addr],
            allow_other_workers=False,
            pure=False,
            resources=resources,
        )
        for addr in client.scheduler_info().get("workers", {})
        for o in opts
    ]
    # a worker that dies during setup comes back at another address: do not wait for it
    with contextlib.suppress(Exception):
        wait(futures, timeout=float(config.get("run.setup-timeout", 300)))
    client.cancel([f for f in futures if not f.done()])
    return time.perf_counter() - t0


class ClientRun:
    """The pending regions of ``jobs`` on a Dask ``client``; ``on_close(job)`` as soon as a job's
    tasks are all back. A KeyboardInterrupt cancels what is in flight and is raised again."""

    def __init__(self, client, jobs: list[CubeJob], rc: RunConfig, on_close: OnClose) -> None:
        from distributed import as_completed

        self.client, self.jobs, self.on_close = client, jobs, on_close
        self.retries = int(rc.retries)
        self.resources = cluster_kind(rc.cluster).resources
        self.feeder = Feeder(jobs, int(config.get("survey.concurrent-cubes", 4)))
        self.queue_per_thread = int(config.get("survey.tasks-per-thread", 2))
        self.max_failed = max_failed_regions()
        self.inflight: dict = {}  #: future key -> (job, region, future)
        self.completed = as_completed(loop=client.loop)  # this client's loop, not the default client's

    def run(self) -> None:
        try:
            setup = setup_workers(self.client, self.jobs, self.resources)
            for job in self.jobs:
                job.setup_seconds = setup
            # the bar's clock (spectra/s, time left) starts with the first region, as the summary's
            with spectra_bar(self.jobs) as advance:
                self._top_up()
                for future in self.completed:
                    self._collect(future, advance)
                    self._top_up()
        except KeyboardInterrupt:
            futures = [f for *_, f in self.inflight.values()]
            if futures:
                self.client.cancel(futures)
            raise

    def _top_up(self) -> None:
        """Submit regions until a few per worker thread are queued (or none is left)."""
        queued = max(8, self.queue_per_thread * worker_threads(self.client) + 2)
        while len(self.inflight) < queued:
            nxt = self.feeder.next()
            if nxt is None:
                return
            job, region = nxt
            if job.started is None:
                job.started = time.perf_counter()
                job.workers_at_start = len(self.client.scheduler_info().get("workers", {}))
            future = self.client.submit(
                process_region,
                region,
                job.opts,
                key=f"{region.key}-{job.opts.out}",
                retries=self.retries,
                pure=False,
                resources=self.resources,
            )
            job.submitted += 1
            self.inflight[future.key] = (job, region, future)
            self.completed.add(future)

    def _collect(self, future, advance) -> None:
        """Take a task back: its result, or its failure (abandoning the cube after too many)."""
        job, region, _ = self.inflight.pop(future.key)
        job.returned += 1
        if future.cancelled():
            pass
        elif future.status == "error":
            message = f"{region.key} failed after {self.retries} retries: {failure_reason(future.exception())}"
            if job.fail_region(message, self.max_failed):  # give up on this cube: cancel its queued regions
                for other_job, _, other in list(self.inflight.values()):
                    if other_job is job:
                        other.cancel()
        else:
            result = future.result()
            job.results.append(result)
            advance(result.spectra)
        if job.settled and job.finished is None:
            self._close(job)

    def _close(self, job: CubeJob) -> None:
        job.finished = time.perf_counter()
        dup = [k for k, c in Counter(r.key for r in job.results).items() if c > 1]
        if dup:
            job.error = f"regions reported twice: {', '.join(dup)}"
        self.on_close(job)
