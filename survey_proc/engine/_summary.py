"""The end of a cube's run: verify every region, write pixel maps of a binned input, summarise.

:func:`finish_cube` runs as soon as a cube's tasks are all back; its :class:`RunSummary` is what
``survey-proc run`` prints and what the store's attributes record, and :class:`CubeOutcome` what
became of each cube of a batch.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import zarr

from survey_proc.binning import write_pixel_maps
from survey_proc.engine._estimate import flag_counts
from survey_proc.engine._jobs import CubeJob
from survey_proc.engine._region import RegionResult
from survey_proc.errors import SurveyProcError
from survey_proc.estimators import Manifest, packaged_models, read_manifest, resolve_model
from survey_proc.stores import consolidate, remove_partial_writes, verify_regions

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run did."""

    cube: str
    out: str
    model_id: str
    spectra: int
    fitted: int
    regions: int
    regions_run: int
    regions_skipped: int
    seconds: float
    estimator_seconds: float
    flag_counts: dict[str, int] = field(default_factory=dict)
    verified: bool = False
    workers: int = 0
    flagged: int = 0  #: spectra with any flag bit set
    pixel_maps: str = ""  #: group holding maps on the pixel grid (binned inputs)
    started: float = 0.0  #: time.perf_counter() of the first region submitted (0: none ran)
    finished: float = 0.0  #: time.perf_counter() of the last region back
    setup_seconds: float = 0.0  #: loading the estimator on the workers (not in ``seconds``)
    timings: dict[str, float] = field(default_factory=dict)  #: summed over the regions run (seconds)
    #: from asking for the cluster to the first region submitted: starting it, waiting for workers (batch
    #: jobs in a queue), loading the model on them (not in ``seconds``)
    startup_seconds: float = 0.0
    workers_at_start: int = 0  #: workers when the first region was submitted (``workers``: at the end)
    figure: str = ""  #: the quick-look PNG beside the maps ("" when not drawn)
    log: str = ""  #: the run's log file ("" when none was written)
    fit_quality: str = ""  #: the rebuilt spectra's chi2 in a line, or where to get them (:func:`fit_quality`)

    @property
    def flagged_fraction(self) -> float:
        return self.flagged / self.spectra if self.spectra else float("nan")

    @property
    def spectra_per_s(self) -> float:
        computed = self.spectra_run
        return computed / self.seconds if self.seconds > 0 else float("nan")

    @property
    def spectra_run(self) -> int:
        return (
            self.spectra
            if self.regions_run == self.regions
            else int(round(self.spectra * self.regions_run / max(self.regions, 1)))
        )

    def format(self) -> str:
        flagged = ", ".join(f"{k} {v}" for k, v in self.flag_counts.items() if v) or "none"
        lines = [
            self._head(),
            f"fitted: {self.fitted} of {self.spectra}; flagged: {flagged}",
            f"model: {self.model_id}",
            *([self.fit_quality] if self.fit_quality else []),
            f"checks: {'every region verified (marker, count, CRC-32)' if self.verified else 'NOT VERIFIED'}",
            f"maps written to {self.out}",
        ]
        if self.pixel_maps:
            lines.append(f"maps on the pixel grid in its group '{self.pixel_maps}'")
        if self.figure:
            lines.append(f"quick-look figure: {self.figure}")
        if self.log:
            lines.append(f"log: {self.log}")
        return "\n".join(lines)

    def _head(self) -> str:
        if not self.regions_run:
            return f"nothing to do: all {self.regions} regions ({self.spectra} spectra) were already done"
        return (
            f"spectra processed: {self.spectra_run} of {self.spectra} in {self.seconds:.1f} s "
            f"({self.spectra_per_s:,.0f} spectra/s with {self.workers} worker(s); "
            + self._before()
            + self._joined()
            + f"{self.regions_run} regions run, {self.regions_skipped} already done)"
        )

    def _before(self) -> str:
        """What happened before the timed regions and is not in their time."""
        if self.startup_seconds > 0:
            return (
                f"before that {self.startup_seconds:.1f} s starting the cluster, waiting for workers and loading "
                f"the model on them ({self.setup_seconds:.1f} s of it); "
            )
        if self.setup_seconds > 0:
            return f"cluster start-up and loading the model on the workers ({self.setup_seconds:.1f} s) excluded; "
        return ""

    def _joined(self) -> str:
        """Workers that joined after the first region (batch jobs starting late): their start-up, and their
        loading of the model, are inside the timed seconds."""
        late = self.workers - self.workers_at_start
        if self.workers_at_start <= 0 or late <= 0:
            return ""
        return f"{late} of them joined during the run, their start-up inside that time; "


@dataclass
class CubeOutcome:
    """What became of one cube of a batch: ``done``, ``already done`` or ``failed`` (with the reason)."""

    cube: str
    out: str
    status: str
    reason: str = ""
    summary: RunSummary | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def finish_cube(job: CubeJob, workers: int, client=None) -> RunSummary:
    """Verify every region of a cube whose tasks are all back (re-reading those this run did not
    write, on the ``client``'s workers when given), record the summary in the store."""
    out = job.rc.out
    written = {r.key: r.checksum for r in job.results if not r.reused}
    problems = verify_regions(out, job.regions, job.names, client, written)
    if problems:
        raise SurveyProcError(f"{out}: verification failed after the run:\n  - " + "\n  - ".join(problems[:20]))
    remove_partial_writes(out)
    summary = _summary(job, workers, np.asarray(zarr.open_group(out, mode="r")["flag"][...]))
    try:  # a line of the summary never fails a run
        summary.fit_quality = fit_quality(out, job.manifest, summary.flag_counts.get("poor_fit", 0))
    except Exception as exc:
        log.warning(f"{out}: no fit-quality line in the summary ({type(exc).__name__}: {exc})")
    if job.binned:
        summary.pixel_maps = write_pixel_maps(job.rc.cube, out, job.names)
    _record(out, summary, bool(job.results))
    return summary


def _summary(job: CubeJob, workers: int, flag: np.ndarray) -> RunSummary:
    counts, fitted = flag_counts(flag)
    elapsed = (job.finished - job.started) if job.started is not None and job.finished is not None else 0.0
    return RunSummary(
        cube=job.rc.cube,
        out=job.rc.out,
        model_id=job.manifest.model_id,
        spectra=int(flag.size),
        fitted=fitted,
        regions=len(job.regions),
        regions_run=len(job.results),
        regions_skipped=len(job.regions) - len(job.pending),
        seconds=elapsed,
        estimator_seconds=sum(r.estimator_seconds for r in job.results),
        flag_counts=counts,
        verified=True,
        workers=workers,
        flagged=int((flag != 0).sum()),
        started=job.started or 0.0,
        finished=job.finished or 0.0,
        setup_seconds=job.setup_seconds,
        timings=summed_timings(job.results),
        startup_seconds=(job.started - job.requested) if job.started is not None and job.requested else 0.0,
        workers_at_start=job.workers_at_start,
    )


def fit_quality(out: str, manifest: Manifest, poor_fit: int) -> str:
    """A line on how well a spectral model's estimates rebuild the spectra: the median reduced chi2 (and
    with the 2 % model error, ``chi2_floor``) and, where the manifest judges it, the ``poor_fit`` count;
    for a model that rebuilds nothing, which packaged ones do. "" for other inputs."""
    if manifest.input_kind != "spectrum":
        return ""
    grp = zarr.open_group(out, mode="r")
    if "chi2" not in grp:
        return f"rebuilt spectra: none from this model (no chi2, no poor_fit); they come with {rebuilding_models()}"
    parts = [f"median chi2 {_median(grp['chi2'][...])}"]
    if "chi2_floor" in grp:
        parts.append(f"with the 2 % model error {_median(grp['chi2_floor'][...])}")
    return f"rebuilt spectra: {', '.join(parts)}" + (f"; poor_fit {poor_fit}" if _judges_fit(manifest) else "")


@functools.cache
def rebuilding_models() -> str:
    """The packaged spectral bundles whose rebuilt spectra a ``POOR_FIT`` rule judges, by the rest-frame
    range they need: ``--model muse-mix-recon, muse-recon (rest 4750-7100 A); ...``. Manifests are read
    without their checksums: a modified bundle elsewhere must not fail this run."""
    groups: dict[str, list[str]] = {}
    for name in packaged_models():
        try:
            manifest = read_manifest(resolve_model(name))
            wave = manifest.raw["input"]["wave"]
            span = f"{manifest.raw['input'].get('frame', 'rest')} {wave['start']:.0f}-{wave['stop']:.0f} A"
        except (SurveyProcError, KeyError, TypeError, ValueError):
            continue
        if manifest.input_kind == "spectrum" and _judges_fit(manifest):
            groups.setdefault(span, []).append(name)
    return "; ".join(f"--model {', '.join(names)} ({span})" for span, names in groups.items()) or "none packaged"


def _judges_fit(manifest: Manifest) -> bool:
    """Whether the manifest has a ``POOR_FIT`` rule (on its rebuilt spectra's chi2)."""
    return any(flag == "POOR_FIT" for flag, _ in manifest.flag_rules)


def _median(values: np.ndarray) -> str:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return f"{np.median(finite):.2f}" if finite.size else "n/a"


def _record(out: str, summary: RunSummary, ran: bool) -> None:
    """The summary in the store's attributes (and the store's metadata consolidated)."""
    grp = zarr.open_group(out, mode="r+")
    grp.attrs.update(
        {
            "status": "complete",
            "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "spectra": summary.spectra,
            "fitted": summary.fitted,
            "flag_counts": {k: int(v) for k, v in summary.flag_counts.items()},
        }
    )
    if ran:
        grp.attrs["wall_seconds_last_run"] = summary.seconds
    consolidate(out)


def summed_timings(results: list[RegionResult]) -> dict[str, float]:
    """Per-stage seconds (read, prepare, estimator, write, their CPU seconds) summed over regions."""
    total: dict[str, float] = {}
    for r in results:
        for key, value in r.timings.items():
            total[key] = total.get(key, 0.0) + float(value)
    return total
