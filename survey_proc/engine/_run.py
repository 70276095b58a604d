"""Orchestration of a run: template -> setup -> per-region tasks -> verification -> summary.

1. open and validate the cube; read (and verify) the model's manifest; smoke-load the estimator
   so a corrupt model fails before any cluster starts;
2. write the maps store's metadata (or, if it exists from the same run, resume it);
3. submit one task per region that is not marked done, on the Dask client, with retries, showing
   progress; a worker that dies has its region recomputed elsewhere;
4. verify every region (marker, spectra count, CRC-32 of the stored outputs) and print a summary.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from survey_proc import config
from survey_proc.errors import CubeError, SurveyProcError
from survey_proc.estimators import load_estimator, load_manifest
from survey_proc.estimators._base import Manifest
from survey_proc.engine._region import RegionOptions, RegionResult, process_region, read_region_outputs, region_checksum
from survey_proc.engine._template import (
    Region,
    make_regions,
    maps_template,
    output_variables,
    spatial_chunks,
    template_encoding,
)
from survey_proc.stores._cube import consolidate, spatial_dims
from survey_proc.stores._inputs import open_input_store
from survey_proc.stores._maps import NOT_FITTED, Flag


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
    device: str = "cpu"
    retries: int | None = None

    def resolved(self) -> RunConfig:
        get = config.get
        return RunConfig(
            cube=str(Path(self.cube)), out=str(self.out or default_output(self.cube)),
            model=self.model or get("run.model"), cluster=self.cluster or get("run.cluster"),
            workers=self.workers if self.workers is not None else get("run.workers"),
            threads_per_worker=self.threads_per_worker or get("run.threads-per-worker"),
            redshift=self.redshift, min_snr=self.min_snr, overwrite=self.overwrite, progress=self.progress,
            device=self.device, retries=self.retries if self.retries is not None else get("run.retries"))


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

    @property
    def spectra_per_s(self) -> float:
        computed = self.spectra_run
        return computed / self.seconds if self.seconds > 0 else float("nan")

    @property
    def spectra_run(self) -> int:
        return self.spectra if self.regions_run == self.regions else int(
            round(self.spectra * self.regions_run / max(self.regions, 1)))

    def format(self) -> str:
        flagged = ", ".join(f"{k} {v}" for k, v in self.flag_counts.items() if v) or "none"
        if self.regions_run:
            head = (f"spectra processed: {self.spectra_run} of {self.spectra} in {self.seconds:.1f} s "
                    f"({self.spectra_per_s:,.0f} spectra/s with {self.workers} worker(s), cluster start-up "
                    f"excluded; {self.regions_run} regions run, {self.regions_skipped} already done)")
        else:
            head = f"nothing to do: all {self.regions} regions ({self.spectra} spectra) were already done"
        lines = [
            head,
            f"fitted: {self.fitted} of {self.spectra}; flagged: {flagged}",
            f"model: {self.model_id}",
            f"checks: {'every region verified (marker, count, CRC-32)' if self.verified else 'NOT VERIFIED'}",
            f"maps written to {self.out}",
        ]
        return "\n".join(lines)


def default_output(cube: str | Path) -> Path:
    """``<cube>.maps.zarr`` beside the cube (``c.zarr`` -> ``c.maps.zarr``)."""
    cube = Path(cube)
    stem = cube.name[:-5] if cube.name.endswith(".zarr") else cube.name
    return cube.with_name(f"{stem}.maps.zarr")


def _run_signature(cube: xr.Dataset, manifest: Manifest, redshift: float, min_snr: float) -> str:
    """Identity of a run's numbers: the cube's shape/grid/provenance, the model file, the options."""
    axis = cube[manifest.input.feature_dim].values  # wavelengths or band names
    ends = [axis[0], axis[-1]]
    ident = {
        "sizes": dict(cube.sizes),
        "wave": [float(e) for e in ends] if np.issubdtype(axis.dtype, np.number) else [str(e) for e in ends],
        "source": str(cube.attrs.get("source", "")), "mock_config": str(cube.attrs.get("mock_config", "")),
        "model_sha256": manifest.sha256, "model": manifest.name, "estimator": manifest.estimator,
        "redshift": redshift, "min_snr": min_snr,
    }
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
        raise CubeError(f"{out} holds maps of another run (different cube, model or options: signature "
                        f"{attrs.get('run_signature')} vs {signature}); pass --overwrite to replace it "
                        "or --out to write elsewhere")
    template.attrs["run_signature"] = signature
    template.to_zarr(out, mode="w", compute=False, zarr_format=3, consolidated=False,
                     encoding=template_encoding(template))
    return False


def _pending(out: str, regions: list[Region]) -> list[Region]:
    done = np.asarray(zarr.open_group(out, mode="r")["region_done"][...])
    return [r for r in regions if not done[r.index]]


def verify(out: str, regions: list[Region], names: list[str]) -> list[str]:
    """Problems found re-reading the store: regions unmarked, miscounted or with a wrong CRC-32."""
    grp = zarr.open_group(out, mode="r")
    done = np.asarray(grp["region_done"][...])
    counts = np.asarray(grp["region_spectra"][...])
    sums = np.asarray(grp["region_checksum"][...])
    problems = []
    for region in regions:
        if not done[region.index]:
            problems.append(f"{region.key}: not marked done")
        elif counts[region.index] != region.size:
            problems.append(f"{region.key}: {counts[region.index]} spectra recorded, {region.size} expected")
        elif region_checksum(read_region_outputs(out, region, names)) != int(sums[region.index]):
            problems.append(f"{region.key}: CRC-32 of the stored outputs differs from the one written")
    return problems


def _provenance(manifest: Manifest, rc: RunConfig, cube: xr.Dataset, redshift: float, min_snr: float) -> dict:
    from survey_proc import __version__

    training = manifest.raw.get("training", {})
    return {
        "title": "survey-proc maps",
        "model_id": manifest.model_id, "model_name": manifest.name, "model_sha256": manifest.sha256 or "",
        "model_estimator": manifest.estimator, "model_manifest": str(manifest.path),
        "model_trainset_hash": training.get("trainset_hash", ""),
        "software": f"survey-proc {__version__}",
        "cube": str(Path(rc.cube).resolve()), "cube_source": str(cube.attrs.get("source", "")),
        "redshift": redshift, "min_snr": min_snr,
        "run_options": json.dumps({k: v for k, v in asdict(rc).items() if k != "progress"}, default=str),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": "running",
    }


def run(rc: RunConfig) -> RunSummary:
    """Run an estimator over every spectrum of a cube (or catalogue) and write the maps store."""
    from survey_proc.cluster import make_client

    rc = rc.resolved()
    t0 = time.perf_counter()
    manifest = load_manifest(rc.model)
    spec = manifest.input  # the declared input kind says which store to expect
    cube = open_input_store(rc.cube, spec.feature_dim, require_redshift=rc.redshift is None)
    redshift = float(rc.redshift if rc.redshift is not None else cube.attrs.get("redshift", 0.0))
    load_estimator(rc.model, device=rc.device)  # fail fast on a file that will not load
    min_snr = float(rc.min_snr if rc.min_snr is not None else (manifest.min_snr or config.get("run.min-snr")))
    spec.check_store(cube, redshift, rc.cube, manifest.name)

    template = maps_template(cube, manifest, _provenance(manifest, rc, cube, redshift, min_snr))
    signature = _run_signature(cube, manifest, redshift, min_snr)
    resumed = _setup_store(rc.out, template, signature, rc.overwrite)
    dims = spatial_dims(cube)
    regions = make_regions({d: cube.sizes[d] for d in dims}, spatial_chunks(cube))
    pending = _pending(rc.out, regions) if resumed else regions
    opts = RegionOptions(cube=str(Path(rc.cube).resolve()), out=str(Path(rc.out).resolve()),
                         model=str(manifest.path), redshift=redshift, min_snr=min_snr, device=rc.device,
                         threads=int(rc.threads_per_worker))
    if rc.progress and resumed:
        print(f"resuming {rc.out}: {len(regions) - len(pending)} of {len(regions)} regions already done")

    results: list[RegionResult] = []
    n_workers = 0
    t_compute = time.perf_counter()
    if pending:
        with make_client(rc.cluster, rc.workers, rc.threads_per_worker) as client:
            n_workers = len(client.scheduler_info()["workers"]) if client is not None else 1
            results = _execute(client, pending, opts, rc)
    elapsed = time.perf_counter() - t_compute

    names = [name for name, *_ in output_variables(manifest)] + ["flag", "snr"]
    problems = verify(rc.out, regions, names)
    if problems:
        raise SurveyProcError(f"{rc.out}: verification failed after the run:\n  - " + "\n  - ".join(problems[:20]))
    flag = np.asarray(zarr.open_group(rc.out, mode="r")["flag"][...])
    counts = {f.name.lower(): int(((flag & np.uint8(f)) != 0).sum()) for f in Flag}
    fitted = int(((flag & np.uint8(NOT_FITTED)) == 0).sum())
    summary = RunSummary(cube=rc.cube, out=rc.out, model_id=manifest.model_id, spectra=int(flag.size),
                         fitted=fitted, regions=len(regions), regions_run=len(results),
                         regions_skipped=len(regions) - len(pending), seconds=elapsed,
                         estimator_seconds=sum(r.estimator_seconds for r in results), flag_counts=counts,
                         verified=True, workers=n_workers)
    grp = zarr.open_group(rc.out, mode="r+")
    grp.attrs.update({"status": "complete", "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "spectra": summary.spectra, "fitted": fitted,
                      "flag_counts": json.dumps(counts), "wall_seconds_last_run": time.perf_counter() - t0})
    consolidate(rc.out)
    return summary


def _execute(client, pending: list[Region], opts: RegionOptions, rc: RunConfig) -> list[RegionResult]:
    """Run the pending regions, with a progress bar; Ctrl-C cancels and reports how to resume."""
    from tqdm import tqdm

    total = sum(r.size for r in pending)
    bar = tqdm(total=total, unit="spec", desc="regions", disable=not rc.progress, smoothing=0.1)
    results: list[RegionResult] = []
    futures: list = []
    try:
        if client is None:  # --cluster none: in this process, one region after another
            for region in pending:
                results.append(process_region(region, opts))
                bar.update(region.size)
            return results
        from distributed import as_completed

        futures = [client.submit(process_region, r, opts, key=f"{r.key}-{opts.out}", retries=int(rc.retries),
                                 pure=False) for r in pending]
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as exc:
                for f in futures:
                    f.cancel()
                raise SurveyProcError(f"a region failed after {rc.retries} retries: "
                                      f"{type(exc).__name__}: {exc}. Finished regions are kept; rerun to resume.") from exc
            results.append(result)
            bar.update(result.spectra)
        seen = Counter(r.key for r in results)
        dup = [k for k, c in seen.items() if c > 1]
        if dup:
            raise SurveyProcError(f"regions reported twice: {', '.join(dup)}")
        return results
    except KeyboardInterrupt:
        if futures:
            client.cancel(futures)
        raise RunInterrupted(
            f"interrupted: {len(results)} of {len(pending)} pending regions finished and are kept in "
            f"{rc.out}; run the same command again to resume") from None
    finally:
        bar.close()
