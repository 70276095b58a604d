"""``--cluster none``: the pending regions of every cube in this process, one after another."""

from __future__ import annotations

import time

from survey_proc.engine._jobs import CubeJob, OnClose, failure_reason, max_failed_regions, spectra_bar
from survey_proc.engine._region import process_region


def run_serial(jobs: list[CubeJob], on_close: OnClose) -> None:
    """Run each job's pending regions here, in order; ``on_close(job)`` once a job's regions are
    done. A region that fails is recorded; a cube with too many failures is abandoned."""
    max_failed = max_failed_regions()
    with spectra_bar(jobs) as advance:
        for job in jobs:
            job.started = time.perf_counter()
            for region in job.pending:
                if job.abandoned:
                    break
                job.submitted += 1
                try:
                    job.results.append(process_region(region, job.opts))
                    advance(region.size)
                except Exception as exc:
                    job.fail_region(f"{region.key} failed: {failure_reason(exc)}", max_failed)
                job.returned += 1
            job.finished = time.perf_counter()
            on_close(job)
