"""Orchestration of a run over one cube or many: setup -> per-region tasks -> verification -> summary.

1. open and validate each cube, check the model and write (or resume) its maps store
   (:func:`~survey_proc.engine._setup.prepare_cube`);
2. run the regions not marked done: in this process (``--cluster none``,
   :func:`~survey_proc.engine._serial.run_serial`) or on one Dask client shared by all cubes
   (:class:`~survey_proc.engine._schedule.ClientRun`: worker setup, a bounded queue, retries);
3. as soon as a cube's regions are all back, verify every region, write pixel maps for a binned
   input, and summarise (:func:`~survey_proc.engine._summary.finish_cube`).

A cube that cannot be opened, or whose regions keep failing, is reported as failed with its
reason while the other cubes carry on (:func:`run_many`); :func:`run` is the one-cube case and
raises instead. Progress bars show where :mod:`survey_proc.progress` shows them (``RunConfig.progress``);
messages (a resumed store, each cube's outcome) are logged, and the command line prints them above the bars.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from survey_proc import progress
from survey_proc.cluster import make_client
from survey_proc.engine._config import RunConfig, default_output
from survey_proc.engine._jobs import CubeJob, failure_reason
from survey_proc.engine._log import append, log_path, run_logs
from survey_proc.engine._schedule import ClientRun
from survey_proc.engine._serial import run_serial
from survey_proc.engine._setup import prepare_cube
from survey_proc.engine._summary import CubeOutcome, RunSummary, finish_cube
from survey_proc.errors import SurveyProcError
from survey_proc.stores import release_store

log = logging.getLogger(__name__)


class RunInterrupted(SurveyProcError):
    """The run stopped before every region was done; rerunning the same command resumes it."""


def run(rc: RunConfig, client=None) -> RunSummary:
    """Run an estimator over every spectrum of a cube (or catalogue) and write the maps store.

    ``client``: a running ``distributed.Client`` to compute on (left open); None starts the cluster
    ``rc.cluster`` names and closes it afterwards.
    """
    with progress.shown(rc.progress):
        job = prepare_cube(rc)
        try:
            with run_logs([job]) as logs:
                outcome = run_jobs([job], job.rc, client=client, logs=logs)[0]
        finally:
            release_store(job.rc.out)  # the lock prepare_cube took
    if outcome.failed:
        raise SurveyProcError(f"{job.rc.cube}: {outcome.reason}")
    assert outcome.summary is not None
    return outcome.summary


def run_many(rcs: list[RunConfig], client=None) -> list[CubeOutcome]:
    """Run several cubes on one shared client; a cube that fails is reported and the rest carry on.

    Execution options (cluster, workers, threads, retries, progress) are those of the first config;
    ``client``: as for :func:`run`.
    """
    if not rcs:
        return []
    _check_distinct_outputs(rcs)
    with progress.shown(rcs[0].progress):
        outcomes: list[CubeOutcome | None] = []
        jobs: list[CubeJob] = []
        for rc in rcs:
            try:
                jobs.append(prepare_cube(rc))
                outcomes.append(None)
            except Exception as exc:  # missing, corrupt or invalid cube: report it, carry on
                outcomes.append(_failed_setup(rc, exc))
        try:
            with run_logs(jobs) as logs:
                ran = iter(run_jobs(jobs, rcs[0].resolved(), client=client, logs=logs) if jobs else [])
        finally:
            for job in jobs:
                release_store(job.rc.out)  # the locks prepare_cube took
    return [o if o is not None else next(ran) for o in outcomes]


def _check_distinct_outputs(rcs: list[RunConfig]) -> None:
    outs: dict[str, str] = {}
    for rc in rcs:
        key = str(Path(rc.out or default_output(rc.cube)).resolve())
        if key in outs:
            raise SurveyProcError(
                f"cubes {outs[key]} and {rc.cube} would both write {rc.out or key}; list a "
                "cube once, or give each its own output"
            )
        outs[key] = str(rc.cube)


def _failed_setup(rc: RunConfig, exc: Exception) -> CubeOutcome:
    reason = failure_reason(exc)
    line = f"{rc.cube}: failed ({reason.splitlines()[0]})"
    log.info(line)
    return CubeOutcome(str(rc.cube), str(rc.out or default_output(rc.cube)), "failed", reason=reason)


class _Closer:
    """Closes jobs as their tasks come back: verification, summary, quick-look figure and the end of
    the log, an outcome per job."""

    def __init__(self, jobs: list[CubeJob], logs: dict | None = None) -> None:
        self.index = {id(j): i for i, j in enumerate(jobs)}
        self.several = len(jobs) > 1
        self.outcomes: dict[int, CubeOutcome] = {}
        self.client = None
        self.workers = 0
        self.logs = logs or {}

    def __call__(self, job: CubeJob) -> None:
        if self.client is not None:  # workers of batch jobs arrive during the run: count them now
            self.workers = max(self.workers, len(self.client.scheduler_info().get("workers", {})))
        outcome = _close(job, self.workers, self.client)
        if outcome.summary is not None:
            outcome.summary.log = str(log_path(job.rc.out)) if job.rc.out in self.logs else ""
            if job.rc.plot:
                outcome.summary.figure = _quicklook(job.rc.out)
        self.outcomes[self.index[id(job)]] = outcome
        append(self.logs, job.rc.out, outcome.summary.format() if outcome.summary else f"failed: {outcome.reason}")
        if self.several:
            line = f"{outcome.cube}: {outcome.status}" + (
                f" ({outcome.reason.splitlines()[0]})" if outcome.failed else ""
            )
            log.info(line)


def _quicklook(out: str) -> str:
    """The quick-look PNG of finished maps (its path), or "" with a warning where it cannot be drawn:
    a figure never fails a run."""
    from survey_proc.analysis import plot_maps  # matplotlib: only where a figure is drawn

    try:
        return str(plot_maps(out))
    except Exception as exc:  # the maps are complete; the figure is a convenience
        log.warning(f"{out}: no quick-look figure ({type(exc).__name__}: {exc}); draw it with survey-proc plot")
        return ""


def _close(job: CubeJob, workers: int, client=None) -> CubeOutcome:
    """The outcome of a job whose tasks are all back (or that failed)."""
    rc = job.rc
    job.error = job.error or job.failure_summary()
    if job.error is None:
        try:
            summary = finish_cube(job, workers, client)
        except Exception as exc:  # a cube that cannot be verified fails alone
            job.error = failure_reason(exc)
        else:
            return CubeOutcome(rc.cube, rc.out, "done" if job.pending else "already done", summary=summary)
    return CubeOutcome(rc.cube, rc.out, "failed", reason=job.error)


def run_jobs(jobs: list[CubeJob], rc: RunConfig, client=None, logs: dict | None = None) -> list[CubeOutcome]:
    """Run prepared jobs on one client (``client``, else the cluster of ``rc``, started only if a
    region is left); outcomes in job order. ``logs``: the jobs' log files (:func:`run_logs`)."""
    closer = _Closer(jobs, logs)
    todo = [j for j in jobs if j.pending]
    if todo:
        requested = time.perf_counter()
        for job in todo:
            job.requested = requested
        with _client(rc, client) as running:
            if running is None:  # in this process: nothing started, nothing to wait for
                for job in todo:
                    job.requested = None
            closer.client, closer.workers = running, (0 if running is not None else 1)
            _execute(running, todo, rc, closer)
        closer.client = None
    for job in jobs:
        if not job.pending:
            closer(job)
    return [closer.outcomes[i] for i in range(len(jobs))]


@contextlib.contextmanager
def _client(rc: RunConfig, client=None) -> Iterator:
    """The caller's client (left open), or the cluster ``rc`` names (closed afterwards)."""
    if client is not None:
        yield client
        return
    with make_client(rc.cluster, rc.workers, rc.threads_per_worker) as started:
        yield started


def _execute(client, jobs: list[CubeJob], rc: RunConfig, on_close: _Closer) -> None:
    """Run the pending regions of every job, here or on the client. Ctrl-C cancels what is in
    flight and raises :class:`RunInterrupted`."""
    try:
        if client is None:
            run_serial(jobs, on_close)
        else:
            ClientRun(client, jobs, rc, on_close).run()
    except KeyboardInterrupt:
        done = sum(len(j.results) for j in jobs)
        raise RunInterrupted(
            f"interrupted: {done} of {sum(len(j.pending) for j in jobs)} pending regions finished and are kept "
            f"in {', '.join(j.rc.out for j in jobs[:3])}{' ...' if len(jobs) > 3 else ''}; run the same "
            "command again to resume"
        ) from None
