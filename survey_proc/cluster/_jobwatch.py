"""Watching the batch jobs of a dask-jobqueue cluster: what they wait for, why they failed, replacing lost ones.

- :func:`wait_for_workers`: after the jobs are submitted and before any region is, wait until a worker
  joins, logging the jobs' states (and the batch system's reason for a pending job) every
  ``report-interval`` seconds; a job that ends without a worker, or no worker within ``worker-timeout``
  seconds, raises a :class:`~survey_proc.errors.SurveyProcError` naming the job, its state and reason
  and the end of its log, instead of a bar frozen at 0 %.
- :class:`JobKeeper`: keeps the number of jobs the run asked for (dask-jobqueue's adaptive scaling
  resubmits a job whose workers were lost: a cancelled, pre-empted or failed node) up to
  ``max-job-replacements`` replacements, after which the run goes on with the workers it has.

The batch system's view comes from each backend's ``job_states`` (``squeue``/``scontrol`` for SLURM,
``qstat`` for PBS).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from survey_proc.errors import SurveyProcError

log = logging.getLogger(__name__)

#: states after which a job runs no worker any more (SLURM's long names, PBS's letters)
ENDED = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
    "TIMEOUT", "GONE", "F", "E", "X",
}  # fmt: skip


@dataclass(frozen=True)
class JobState:
    """One batch job as the batch system sees it."""

    job_id: str
    state: str  #: e.g. PENDING, RUNNING, FAILED (SLURM), Q, R, F (PBS); GONE: the system no longer knows it
    reason: str = ""  #: why it pends or ended, in the batch system's words
    log: str = ""  #: the job's output file, where known

    @property
    def ended(self) -> bool:
        return self.state.upper() in ENDED

    def describe(self) -> str:
        text = f"job {self.job_id} {self.state}"
        if self.reason and self.reason not in ("None", "(null)"):
            text += f" ({self.reason})"
        return text


StatesOf = Callable[[list[str]], dict[str, JobState]]


def job_ids(cluster) -> list[str]:
    """The batch job ids of a dask-jobqueue cluster's submitted jobs."""
    ids = []
    for job in list(getattr(cluster, "workers", {}).values()):
        job_id = getattr(job, "job_id", None)
        if job_id:
            ids.append(str(job_id))
    return ids


def _workers(client) -> int:
    return len(client.scheduler_info().get("workers", {}))


def log_tail(path: str, lines: int = 5) -> str:
    """The last ``lines`` lines of a job's log, or '' where it cannot be read."""
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n    ".join(text[-lines:])


def _why(states: dict[str, JobState], what: str, settings_key: str) -> str:
    lines = [what]
    for state in states.values():
        lines.append(f"  {state.describe()}")
        tail = log_tail(state.log) if state.ended and state.log else ""
        if tail:
            lines.append(f"    log {state.log}:\n    {tail}")
    lines.append(
        f"check the jobs' requests (cores, memory, walltime, queue) in {settings_key} and the batch "
        "system's limits; `survey-proc cluster job-script` shows the script each job runs"
    )
    return "\n".join(lines)


def wait_for_workers(cluster, client, states_of: StatesOf, timeout: float, interval: float, settings_key: str) -> float:
    """Wait until a worker of ``cluster`` has joined ``client``'s scheduler; returns the seconds waited.

    Raises SurveyProcError when every job has ended without a worker, or after ``timeout`` seconds."""
    t0 = time.perf_counter()
    next_report = t0 + interval
    while _workers(client) == 0:
        now = time.perf_counter()
        ids = job_ids(cluster)
        if (ids and now >= next_report) or now - t0 >= timeout:
            states = states_of(ids) if ids else {}
            if states and all(s.ended for s in states.values()):
                raise SurveyProcError(_why(states, "every worker job ended before a worker started:", settings_key))
            if now - t0 >= timeout:
                raise SurveyProcError(
                    _why(states, f"no worker started within {timeout:.0f} s (worker-timeout):", settings_key)
                )
            log.info("waiting for workers (%.0f s): %s", now - t0, "; ".join(s.describe() for s in states.values()))
            next_report = now + interval
        time.sleep(min(1.0, interval))
    waited = time.perf_counter() - t0
    log.info("first worker joined after %.1f s", waited)
    return waited


class JobKeeper:
    """Counts the jobs a cluster has submitted; once more than ``limit`` were replacements, stops the
    adaptive scaling that replaces them (the run continues with the workers it has)."""

    def __init__(self, cluster, adaptive, wanted: int, limit: int, poll: float = 5.0) -> None:
        self.cluster, self.adaptive, self.wanted, self.limit, self.poll = cluster, adaptive, wanted, limit, poll
        self.seen: set[str] = set()
        self.stopped = False
        self._logged = 0
        self._thread = threading.Thread(target=self._loop, name="survey-proc-jobkeeper", daemon=True)
        self._thread.start()

    @property
    def replaced(self) -> int:
        return max(0, len(self.seen) - self.wanted)

    def check(self) -> None:
        """Record the jobs now submitted; stop replacing once the limit is passed."""
        self.seen.update(job_ids(self.cluster))
        if self.replaced > self._logged and not self.stopped:
            self._logged = self.replaced
            log.warning("%d worker job(s) lost and replaced so far", self.replaced)
        if self.replaced >= self.limit and not self.stopped:
            self.stopped = True
            self.adaptive.stop()
            log.warning(
                "%d worker jobs were replaced, the most allowed (max-job-replacements): lost jobs are no longer "
                "replaced; the run goes on with the workers it has",
                self.replaced,
            )

    def _loop(self) -> None:
        while not self.stopped and str(getattr(self.cluster, "status", "")).split(".")[-1] not in ("closed",):
            try:
                self.check()
            except Exception:
                log.debug("job check failed", exc_info=True)
            time.sleep(self.poll)
