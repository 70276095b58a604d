"""Orchestration of a run over one cube or many: setup -> per-region tasks -> verification -> summary.

1. open and validate each cube; read (and verify) the model's manifest; smoke-load the estimator
   so a corrupt model fails before any cluster starts (:func:`prepare_cube`);
2. write the maps store's metadata (or, if it exists from the same run, resume it);
3. submit one task per region not marked done, on one Dask client shared by all cubes: regions of
   several cubes are in flight together (round-robin over ``run.concurrent-cubes`` cubes, at most
   a few tasks per worker thread queued), with retries; a worker that dies has its region
   recomputed elsewhere, and a task finding its region already marked done does not rewrite it;
4. each task reads its outputs back and checks their CRC-32 before it marks its region done; as soon
   as a cube's regions are all back, verify every region (marker, spectra count, recorded CRC-32;
   regions not written by this run, i.e. resumed ones, are re-read), write pixel maps for a binned
   input, and summarise (:func:`finish_cube`).

A cube that cannot be opened, or whose regions keep failing, is reported as failed with its
reason while the other cubes carry on (:func:`run_many`); :func:`run` is the one-cube case and
raises instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from survey_proc import config
from survey_proc.binning import PIXEL_MAP, write_pixel_maps
from survey_proc.engine._region import (
    RegionOptions,
    RegionResult,
    flag_counts,
    process_region,
    read_arrays,
    region_checksum,
    setup_worker,
)
from survey_proc.engine._template import (
    Region,
    make_regions,
    maps_template,
    output_variables,
    spatial_chunks,
)
from survey_proc.errors import CubeError, SurveyProcError
from survey_proc.estimators import Manifest, load_estimator, load_manifest
from survey_proc.stores import consolidate, open_input_store, spatial_dims


class RunInterrupted(SurveyProcError):
    """The run stopped before every region was done; rerunning the same command resumes it."""


@dataclass
class RunConfig:
    """Options of ``survey-proc run`` (None: the dask.config default ``survey-proc.run.*``)."""

    cube: str
    out: str | None = None
    model: str | None = None
    cluster: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    redshift: float | None = None
    min_snr: float | None = None
    overwrite: bool = False
    progress: bool = True
    device: str | None = None  #: cpu | cuda; None: what the cluster provides (cuda on local-cuda)
    retries: int | None = None

    def resolved(self) -> RunConfig:
        from survey_proc.cluster import cluster_kind

        get = config.get
        cluster = self.cluster or get("run.cluster")
        return RunConfig(
            cube=str(Path(self.cube)),
            out=str(self.out or default_output(self.cube)),
            model=self.model or get("run.model"),
            cluster=cluster,
            workers=self.workers if self.workers is not None else get("run.workers"),
            threads_per_worker=self.threads_per_worker or get("run.threads-per-worker"),
            redshift=self.redshift,
            min_snr=self.min_snr,
            overwrite=self.overwrite,
            progress=self.progress,
            device=self.device or cluster_kind(cluster).device,
            retries=self.retries if self.retries is not None else get("run.retries"),
        )


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

    @property
    def flagged_fraction(self) -> float:
        return self.flagged / self.spectra if self.spectra else float("nan")

    timings: dict[str, float] = field(default_factory=dict)  #: summed over the regions run (seconds)

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
        if self.regions_run:
            head = (
                f"spectra processed: {self.spectra_run} of {self.spectra} in {self.seconds:.1f} s "
                f"({self.spectra_per_s:,.0f} spectra/s with {self.workers} worker(s); "
                + (
                    f"cluster start-up and loading the model on the workers ({self.setup_seconds:.1f} s) excluded; "
                    if self.setup_seconds > 0
                    else ""
                )
                + f"{self.regions_run} regions run, {self.regions_skipped} already done)"
            )
        else:
            head = f"nothing to do: all {self.regions} regions ({self.spectra} spectra) were already done"
        lines = [
            head,
            f"fitted: {self.fitted} of {self.spectra}; flagged: {flagged}",
            f"model: {self.model_id}",
            f"checks: {'every region verified (marker, count, CRC-32)' if self.verified else 'NOT VERIFIED'}",
            f"maps written to {self.out}",
        ]
        if self.pixel_maps:
            lines.append(f"maps on the pixel grid in its group '{self.pixel_maps}'")
        return "\n".join(lines)


def default_output(cube: str | Path, kind: str = "maps") -> Path:
    """``<cube>.<kind>.zarr`` beside the cube (``c.zarr`` -> ``c.maps.zarr``)."""
    cube = Path(cube)
    stem = cube.name[:-5] if cube.name.endswith(".zarr") else cube.name
    return cube.with_name(f"{stem}.{kind}.zarr")


def _run_signature(cube: xr.Dataset, manifest: Manifest, redshift: float, min_snr: float) -> str:
    """Identity of a run's numbers: the cube's shape/grid/provenance, the model file, the options."""
    axis = cube[manifest.input.feature_dim].values  # wavelengths or band names
    ends = [axis[0], axis[-1]]
    ident = {
        "sizes": dict(cube.sizes),
        "wave": [float(e) for e in ends] if np.issubdtype(axis.dtype, np.number) else [str(e) for e in ends],
        "source": str(cube.attrs.get("source", "")),
        "mock_config": str(cube.attrs.get("mock_config", "")),
        "model_sha256": manifest.digest,
        "model": manifest.name,
        "estimator": manifest.estimator,
        "redshift": redshift,
        "min_snr": min_snr,
    }
    if cube.attrs.get("binning"):  # a catalogue of bins: how it was binned is part of its identity
        ident["binning"] = str(cube.attrs["binning"])
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _setup_store(out: str, template: xr.Dataset, signature: str, overwrite: bool) -> bool:
    """Write the template's metadata unless ``out`` holds this very run; returns True if resuming."""
    path = Path(out)
    if path.exists() and not overwrite:
        try:
            attrs = dict(zarr.open_group(out, mode="r").attrs)
        except Exception as exc:
            raise CubeError(f"{out} exists and is not a Zarr store; remove it or pass --overwrite") from exc
        if attrs.get("run_signature") == signature:
            return True
        if "run_signature" not in attrs:
            raise CubeError(f"{out} exists and is not a survey-proc maps store; remove it or pass --overwrite")
        raise CubeError(
            f"{out} holds maps of another run (different cube, model or options: signature "
            f"{attrs.get('run_signature')} vs {signature}); pass --overwrite to replace it "
            "or --out to write elsewhere"
        )
    template.attrs["run_signature"] = signature
    template.to_zarr(out, mode="w", compute=False, zarr_format=3, consolidated=False)  # chunks: its encoding
    return False


def _pending(out: str, regions: list[Region]) -> list[Region]:
    done = np.asarray(zarr.open_group(out, mode="r")["region_done"][...])
    return [r for r in regions if not done[r.index]]


def _strips(regions: list[Region], max_spectra: int = 1 << 16) -> Iterator[list[Region]]:
    """Regions in groups read as one block: those sharing every spatial slice but the last (a strip
    of a cube's rows; a run of a catalogue's objects), at most ``max_spectra`` spectra a group."""
    groups: dict[tuple, list[Region]] = {}
    for region in regions:
        groups.setdefault(region.slices[:-1], []).append(region)
    for members in groups.values():
        members.sort(key=lambda r: r.slices[-1][1])
        batch: list[Region] = []
        for region in members:
            if batch and sum(r.size for r in batch) + region.size > max_spectra:
                yield batch
                batch = []
            batch.append(region)
        yield batch


def verify(
    out: str, regions: list[Region], names: list[str], client=None, written: Mapping[str, int] | None = None
) -> list[str]:
    """Problems found re-reading the store: regions unmarked, miscounted or with a wrong CRC-32.

    ``written``: region key -> CRC-32 of the regions this run wrote, whose tasks read their outputs
    back and checked them before marking them done; their recorded CRC-32 must match it and they
    are not read again. The other regions' outputs are read a strip of regions at a time (one read
    per array and strip, not per region), on the cluster's workers when a ``client`` is given,
    else here.
    """
    written = written or {}
    grp = zarr.open_group(out, mode="r")
    done = np.asarray(grp["region_done"][...])
    counts = np.asarray(grp["region_spectra"][...])
    sums = np.asarray(grp["region_checksum"][...])
    problems, reread = [], []
    for region in regions:
        if not done[region.index]:
            problems.append(f"{region.key}: not marked done")
        elif counts[region.index] != region.size:
            problems.append(f"{region.key}: {counts[region.index]} spectra recorded, {region.size} expected")
        elif region.key in written:
            if int(sums[region.index]) != int(written[region.key]):
                problems.append(f"{region.key}: recorded CRC-32 differs from the one its task wrote and read back")
        else:
            reread.append(region)
    strips = [(strip, [int(sums[r.index]) for r in strip]) for strip in _strips(reread)]
    if client is not None and len(strips) > 1 and client.scheduler_info().get("workers"):
        # ahead of queued regions of other cubes; with no worker left, the driver reads them itself
        found = client.gather(
            client.map(
                verify_strip,
                [s for s, _ in strips],
                [c for _, c in strips],
                out=out,
                names=names,
                pure=False,
                priority=10,
            )
        )
    else:
        found = [verify_strip(strip, crcs, out, names) for strip, crcs in strips]
    order = {r.key: i for i, r in enumerate(regions)}
    return sorted(problems + [p for f in found for p in f], key=lambda p: order[p.split(":")[0]])


def verify_strip(strip: list[Region], crcs: list[int], out: str, names: list[str]) -> list[str]:
    """Problems of a strip of regions (see :func:`_strips`): each region's CRC-32 recomputed over its
    part of one read of the strip (the same bytes as reading the region) against ``crcs``."""
    lead = tuple(slice(a, b) for _, a, b in strip[0].slices[:-1])
    lo, hi = strip[0].slices[-1][1], max(r.slices[-1][2] for r in strip)
    arrays = read_arrays(out, names, (*lead, slice(lo, hi)))
    missing = [name for name, values in arrays.items() if values is None]
    if missing:
        raise KeyError(f"{out} lacks {', '.join(missing)}")
    problems = []
    for region, crc in zip(strip, crcs):
        part = (slice(None),) * len(lead) + (slice(region.slices[-1][1] - lo, region.slices[-1][2] - lo),)
        if region_checksum({k: v[part] for k, v in arrays.items()}) != crc:
            problems.append(f"{region.key}: CRC-32 of the stored outputs differs from the one written")
    return problems


def _provenance(
    manifest: Manifest,
    rc: RunConfig,
    cube: xr.Dataset,
    redshift: float,
    min_snr: float,
    estimator_info: dict | None = None,
    precision: str = "",
) -> dict:
    """The maps store's provenance attributes. ``precision``: the network's arithmetic on the workers
    (``float32``/``bfloat16``; empty for estimators without a network)."""
    from survey_proc import __version__

    training = manifest.raw.get("training", {})
    return {
        "title": "survey-proc maps",
        "model_id": manifest.model_id,
        "model_name": manifest.name,
        "model_sha256": manifest.digest,
        "model_software": json.dumps(estimator_info or {}, default=str),
        "model_estimator": manifest.estimator,
        "model_manifest": str(manifest.path),
        "model_trainset_hash": training.get("trainset_hash", ""),
        "software": f"survey-proc {__version__}",
        "cube": str(Path(rc.cube).resolve()),
        "cube_source": str(cube.attrs.get("source", "")),
        "redshift": redshift,
        "min_snr": min_snr,
        "network_precision": precision,
        "run_options": json.dumps({k: v for k, v in asdict(rc).items() if k != "progress"}, default=str),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": "running",
    }


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


def _fallback_model(cube: xr.Dataset, redshift: float, path: str, exc: CubeError) -> str | None:
    """``survey-proc.run.fallback-model`` when the default model does not cover a cube (e.g. the
    default reads rest 4750-8800 A, which MUSE covers only to z = 0.062) and the fallback does;
    None (the default's error stands) otherwise. Said on stderr, recorded in the maps' model_id."""
    fallback = config.get("run.fallback-model", None)
    if not fallback:
        return None
    try:
        manifest = load_manifest(fallback)
        manifest.input.check_store(cube, redshift, path, manifest.name)
    except SurveyProcError:  # a fallback that is missing, broken or does not cover the cube either
        return None
    reason = str(exc).split(": ", 1)[-1].split(" (")[0]
    print(
        f"note: the default model does not cover {path} ({reason}); using {fallback} "
        f"({manifest.raw.get('description', manifest.name)})",
        file=sys.stderr,
    )
    return str(fallback)


def prepare_cube(rc: RunConfig) -> CubeJob:
    """Validate the cube and the model, write (or resume) the maps store; returns the regions left."""
    model_named = rc.model is not None or config.get("run.model") != "default"  # only the packaged default falls back
    rc = rc.resolved()
    manifest = load_manifest(rc.model)
    spec = manifest.input  # the declared input kind says which store to expect
    cube = open_input_store(rc.cube, spec.feature_dim, require_redshift=rc.redshift is None)
    redshift = float(rc.redshift if rc.redshift is not None else cube.attrs.get("redshift", 0.0))
    try:
        spec.check_store(cube, redshift, rc.cube, manifest.name)
    except CubeError as exc:
        fallback = None if model_named else _fallback_model(cube, redshift, rc.cube, exc)
        if fallback is None:
            raise
        rc, manifest = replace(rc, model=fallback), load_manifest(fallback)
        spec = manifest.input
    estimator = load_estimator(rc.model, device="cpu")  # fail fast on a bad file (workers use rc.device)
    min_snr = float(rc.min_snr if rc.min_snr is not None else (manifest.min_snr or config.get("run.min-snr")))

    precision = estimator.precision_on(str(rc.device))  # the workers' device, not this smoke test's CPU
    template = maps_template(
        cube, manifest, _provenance(manifest, rc, cube, redshift, min_snr, dict(estimator.provenance), precision)
    )
    signature = _run_signature(cube, manifest, redshift, min_snr)
    resumed = _setup_store(rc.out, template, signature, rc.overwrite)
    dims = spatial_dims(cube)
    regions = make_regions({d: cube.sizes[d] for d in dims}, spatial_chunks(cube))
    pending = _pending(rc.out, regions) if resumed else regions
    opts = RegionOptions(
        cube=str(Path(rc.cube).resolve()),
        out=str(Path(rc.out).resolve()),
        model=str(manifest.path),
        redshift=redshift,
        min_snr=min_snr,
        device=str(rc.device),
        threads=int(rc.threads_per_worker),
        redshift_per_spectrum="redshift" in cube and cube["redshift"].dims == dims,
    )
    names = [name for name, *_ in output_variables(manifest)] + ["flag", "snr"]
    if rc.progress and resumed and pending:
        print(f"resuming {rc.out}: {len(regions) - len(pending)} of {len(regions)} regions already done")
    return CubeJob(
        rc=rc, manifest=manifest, regions=regions, pending=pending, opts=opts, names=names, binned=PIXEL_MAP in cube
    )


def remove_partial_writes(out: str) -> int:
    """Delete the ``<key>.<uuid>.partial`` temporaries that a write cut short (a killed worker) left in
    a store; returns how many. Call it only once every region is verified: they are never read."""
    removed = 0
    for path in Path(out).rglob("*.partial"):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def finish_cube(job: CubeJob, workers: int, client=None) -> RunSummary:
    """Verify every region of a cube whose tasks are all back (re-reading those this run did not
    write, on the ``client``'s workers when given), record the summary in the store."""
    rc = job.rc
    written = {r.key: r.checksum for r in job.results if not r.reused}
    problems = verify(rc.out, job.regions, job.names, client, written)
    if problems:
        raise SurveyProcError(f"{rc.out}: verification failed after the run:\n  - " + "\n  - ".join(problems[:20]))
    remove_partial_writes(rc.out)
    flag = np.asarray(zarr.open_group(rc.out, mode="r")["flag"][...])
    counts, fitted = flag_counts(flag)
    elapsed = (job.finished - job.started) if job.started is not None and job.finished is not None else 0.0
    summary = RunSummary(
        cube=rc.cube,
        out=rc.out,
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
    )
    if job.binned:
        summary.pixel_maps = write_pixel_maps(rc.cube, rc.out, job.names)
    grp = zarr.open_group(rc.out, mode="r+")
    grp.attrs.update(
        {
            "status": "complete",
            "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "spectra": summary.spectra,
            "fitted": fitted,
            "flag_counts": json.dumps(counts),
        }
    )
    if job.results:
        grp.attrs["wall_seconds_last_run"] = elapsed
    consolidate(rc.out)
    return summary


def summed_timings(results: list[RegionResult]) -> dict[str, float]:
    """Per-stage seconds (read, prepare, estimator, write, their CPU seconds) summed over regions."""
    total: dict[str, float] = {}
    for r in results:
        for key, value in r.timings.items():
            total[key] = total.get(key, 0.0) + float(value)
    return total


def _failure_reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SurveyProcError) else f"{type(exc).__name__}: {exc}"


def _close(job: CubeJob, workers: int, client=None) -> CubeOutcome:
    """The outcome of a job whose tasks are all back (or that failed)."""
    rc = job.rc
    job.error = job.error or job.failure_summary()
    if job.error is None:
        try:
            summary = finish_cube(job, workers, client)
        except Exception as exc:  # a cube that cannot be verified fails alone
            job.error = _failure_reason(exc)
        else:
            return CubeOutcome(rc.cube, rc.out, "done" if job.pending else "already done", summary=summary)
    return CubeOutcome(rc.cube, rc.out, "failed", reason=job.error)


class _Feeder:
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


def _worker_threads(client) -> int:
    workers = client.scheduler_info().get("workers", {})
    return sum(int(w.get("nthreads", 1)) for w in workers.values())


def _setup_workers(client, jobs: list[CubeJob], resources) -> float:
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


def _execute(client, jobs: list[CubeJob], rc: RunConfig, on_close) -> None:
    """Run the pending regions of every job; ``on_close(job)`` as soon as a job's tasks are all back.

    Ctrl-C cancels what is in flight and raises :class:`RunInterrupted`.
    """
    from tqdm import tqdm

    from survey_proc.cluster import cluster_kind

    total = sum(r.size for j in jobs for r in j.pending)
    bar = tqdm(total=total, unit="spec", desc="spectra", disable=not rc.progress, smoothing=0.1)
    inflight: dict = {}
    try:
        max_failed = int(config.get("survey.max-failed-regions", 3))
        if client is None:  # --cluster none: in this process, one region after another
            for job in jobs:
                job.started = time.perf_counter()
                for region in job.pending:
                    if job.abandoned:
                        break
                    job.submitted += 1
                    try:
                        job.results.append(process_region(region, job.opts))
                        bar.update(region.size)
                    except Exception as exc:
                        job.fail_region(f"{region.key} failed: {_failure_reason(exc)}", max_failed)
                    job.returned += 1
                job.finished = time.perf_counter()
                on_close(job)
            return
        from distributed import as_completed

        resources = cluster_kind(rc.cluster).resources
        feeder = _Feeder(jobs, int(config.get("survey.concurrent-cubes", 4)))
        queue_per_thread = int(config.get("survey.tasks-per-thread", 2))
        pending_futures = as_completed(loop=client.loop)  # this client's loop, not the default client's

        def top_up() -> None:
            queued = max(8, queue_per_thread * _worker_threads(client) + 2)
            while len(inflight) < queued:
                nxt = feeder.next()
                if nxt is None:
                    return
                job, region = nxt
                if job.started is None:
                    job.started = time.perf_counter()
                future = client.submit(
                    process_region,
                    region,
                    job.opts,
                    key=f"{region.key}-{job.opts.out}",
                    retries=int(rc.retries),
                    pure=False,
                    resources=resources,
                )
                job.submitted += 1
                inflight[future.key] = (job, region, future)
                pending_futures.add(future)

        setup = _setup_workers(client, jobs, resources)
        for job in jobs:
            job.setup_seconds = setup
        bar.reset()  # the bar's clock (spectra/s, time left) starts with the first region, as the summary's
        top_up()
        for future in pending_futures:
            job, region, _ = inflight.pop(future.key)
            job.returned += 1
            if future.cancelled():
                pass
            elif future.status == "error":
                exc = future.exception()
                message = f"{region.key} failed after {rc.retries} retries: {_failure_reason(exc)}"
                if job.fail_region(message, max_failed):  # give up on this cube: cancel its queued regions
                    for other_job, _, other in list(inflight.values()):
                        if other_job is job:
                            other.cancel()
            else:
                result = future.result()
                job.results.append(result)
                bar.update(result.spectra)
            if job.settled and job.finished is None:
                job.finished = time.perf_counter()
                dup = [k for k, c in Counter(r.key for r in job.results).items() if c > 1]
                if dup:
                    job.error = f"regions reported twice: {', '.join(dup)}"
                on_close(job)
            top_up()
    except KeyboardInterrupt:
        futures = [f for *_, f in inflight.values()]
        if futures:
            client.cancel(futures)
        done = sum(len(j.results) for j in jobs)
        raise RunInterrupted(
            f"interrupted: {done} of {sum(len(j.pending) for j in jobs)} pending regions finished and are kept "
            f"in {', '.join(j.rc.out for j in jobs[:3])}{' ...' if len(jobs) > 3 else ''}; run the same "
            "command again to resume"
        ) from None
    finally:
        bar.close()


def run_jobs(jobs: list[CubeJob], rc: RunConfig) -> list[CubeOutcome]:
    """Run prepared jobs on one client (started only if a region is left); outcomes in job order."""
    from survey_proc.cluster import make_client

    outcomes: dict[int, CubeOutcome] = {}
    index = {id(j): i for i, j in enumerate(jobs)}
    state: dict = {"client": None, "workers": 0}

    def on_close(job: CubeJob) -> None:
        client = state["client"]
        if client is not None:  # workers of batch jobs arrive during the run: count them now
            state["workers"] = max(state["workers"], len(client.scheduler_info().get("workers", {})))
        outcome = _close(job, state["workers"], client)
        outcomes[index[id(job)]] = outcome
        if rc.progress and len(jobs) > 1:
            from tqdm import tqdm

            tqdm.write(
                f"{outcome.cube}: {outcome.status}" + (f" ({outcome.reason.splitlines()[0]})" if outcome.failed else "")
            )

    todo = [j for j in jobs if j.pending]
    if todo:
        with make_client(rc.cluster, rc.workers, rc.threads_per_worker) as client:
            state.update(client=client, workers=0 if client is not None else 1)
            _execute(client, todo, rc, on_close)
        state["client"] = None
    for job in jobs:
        if not job.pending:
            on_close(job)
    return [outcomes[i] for i in range(len(jobs))]


def run(rc: RunConfig) -> RunSummary:
    """Run an estimator over every spectrum of a cube (or catalogue) and write the maps store."""
    job = prepare_cube(rc)
    outcome = run_jobs([job], job.rc)[0]
    if outcome.failed:
        raise SurveyProcError(f"{job.rc.cube}: {outcome.reason}")
    assert outcome.summary is not None
    return outcome.summary


def run_many(rcs: list[RunConfig]) -> list[CubeOutcome]:
    """Run several cubes on one shared client; a cube that fails is reported and the rest carry on.

    Execution options (cluster, workers, threads, retries, progress) are those of the first config.
    """
    if not rcs:
        return []
    outs: dict[str, str] = {}
    for rc in rcs:
        key = str(Path(rc.out or default_output(rc.cube)).resolve())
        if key in outs:
            raise SurveyProcError(
                f"cubes {outs[key]} and {rc.cube} would both write {rc.out or key}; list a "
                "cube once, or give each its own output"
            )
        outs[key] = str(rc.cube)
    outcomes: list[CubeOutcome | None] = []
    jobs: list[CubeJob] = []
    for rc in rcs:
        try:
            job = prepare_cube(rc)
        except Exception as exc:  # missing, corrupt or invalid cube: report it, carry on
            out = str(rc.out or default_output(rc.cube))
            outcomes.append(CubeOutcome(str(rc.cube), out, "failed", reason=_failure_reason(exc)))
            if rc.progress:
                print(f"{rc.cube}: failed ({_failure_reason(exc).splitlines()[0]})")
            continue
        jobs.append(job)
        outcomes.append(None)
    ran = iter(run_jobs(jobs, rcs[0].resolved()) if jobs else [])
    return [o if o is not None else next(ran) for o in outcomes]
