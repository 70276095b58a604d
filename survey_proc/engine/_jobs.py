"""A cube on its way through a run (:class:`CubeJob`), and the failure policy of its regions."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from survey_proc import config, progress
from survey_proc.engine._config import RunConfig
from survey_proc.engine._region import RegionOptions, RegionResult
from survey_proc.errors import SurveyProcError
from survey_proc.estimators import Manifest
from survey_proc.stores import Region


@dataclass
class CubeJob:
    """One cube on its way through a run: options, model, its regions, what is left, what came back."""

    rc: RunConfig
    manifest: Manifest
    regions: list[Region]
    pending: list[Region]
    opts: RegionOptions
    names: list[str]
    binned: bool = False  #: the input is a binned catalogue carrying a pixel->bin map
    results: list[RegionResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  #: regions that failed after their retries, and why
    abandoned: bool = False  #: too many regions failed: the rest of the cube is not attempted
    submitted: int = 0
    returned: int = 0  #: submitted tasks back: results, failures and cancellations
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    setup_seconds: float = 0.0  #: loading the estimator on the workers, before the timed regions
    requested: float | None = None  #: time.perf_counter() when the run asked for its cluster
    workers_at_start: int = 0  #: workers when the first region was submitted
    #: what the run uses and where each value came from (the run's log file records it)
    settings: dict = field(default_factory=dict)

    @property
    def settled(self) -> bool:
        """Nothing of this cube is left to submit or in flight."""
        return self.submitted == self.returned and (self.abandoned or self.submitted == len(self.pending))

    def fail_region(self, message: str, limit: int) -> bool:
        """Record a failed region; True when this makes the cube abandoned (``limit`` failures)."""
        self.failures.append(message)
        if len(self.failures) >= limit and not self.abandoned:
            self.abandoned = True
            return True
        return False

    def failure_summary(self) -> str | None:
        if not self.failures:
            return None
        more = len(self.failures) - 1
        tail = f" ({more} more region(s) failed{', the rest not attempted' if self.abandoned else ''})" if more else ""
        return f"{self.failures[0]}{tail}. Finished regions are kept; rerun to resume."


#: what the scheduler calls as soon as a job's tasks are all back
OnClose = Callable[[CubeJob], None]


def max_failed_regions() -> int:
    """Regions of a cube that may fail (after their retries) before the rest of it is abandoned."""
    return int(config.get("survey.max-failed-regions", 3))


def failure_reason(exc: BaseException) -> str:
    """One line (or the user-facing message) saying why a cube or region failed."""
    return str(exc) if isinstance(exc, SurveyProcError) else f"{type(exc).__name__}: {exc}"


def spectra_bar(jobs: list[CubeJob]) -> AbstractContextManager[Callable[[int], None]]:
    """The run's progress bar over the spectra of the jobs' pending regions (shown where bars are)."""
    total = sum(r.size for j in jobs for r in j.pending)
    return progress.bar(total, "spectra", unit="spec", smoothing=0.1)
