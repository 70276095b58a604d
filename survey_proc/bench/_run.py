"""``run_bench``: every measurement of ``survey-proc bench`` in one run, written as JSON, Markdown and PNG.

1. the cubes (:func:`prepare`): the measured cube (a mock with truth unless ``cube`` is given), pPXF's
   sample spread over it, mocks for the cube-size scaling, the null model;
2. the model on the CPU at every worker count, and at the largest the cube sizes, the pPXF sample and
   the engine alone (:func:`model_runs`); pPXF at every count (``--quick``: the largest);
3. the GPUs (:func:`~survey_proc.bench.gpu_runs`); accuracy and compare figures; the report.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc.analysis import accuracy_vs_truth, compare_stores
from survey_proc.bench._config import BenchConfig
from survey_proc.bench._cubes import mock_cube, sample_cube
from survey_proc.bench._fit import fit_runs, fit_speedup
from survey_proc.bench._gpu import gpu_runs, gpu_speedups
from survey_proc.bench._machine import machine_info
from survey_proc.bench._null_model import null_bundle
from survey_proc.bench._report import write_report
from survey_proc.bench._timing import bench_cluster, sample_run, timed_run, warm_estimator, warm_timed_run
from survey_proc.estimators import load_manifest
from survey_proc.stores import open_spectral_store

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """What every measurement of a benchmark shares: its config (resolved), machine, paths and bundles."""

    cfg: BenchConfig
    machine: dict
    json_path: Path
    work: Path
    cube: Path
    sample: Path
    sizes: list[Path]
    model_path: str
    null_path: str
    ppxf_path: str
    fit_path: str = ""
    fit_sample: Path | None = None


@dataclass
class Measured:
    """The result rows as they are measured (the JSON's ``results`` and the rows beside them)."""

    results: list[dict] = field(default_factory=list)
    size_rows: list[dict] = field(default_factory=list)
    memory: dict[str, list[float]] = field(default_factory=dict)
    on_sample: dict = field(default_factory=dict)  #: the model on pPXF's sample
    fit_on_sample: dict = field(default_factory=dict)  #: the fit on pPXF's sample
    engine: dict = field(default_factory=dict)  #: the engine alone (the null model)
    gpu_notes: list[str] = field(default_factory=list)


def run_bench(cfg: BenchConfig) -> dict:
    """Run every measurement; returns the report dict (also written as JSON, Markdown and PNG)."""
    cfg = cfg.resolved()
    t_start = time.perf_counter()
    setup = prepare(cfg)
    measured = model_runs(setup)
    ppxf_runs(setup, measured)
    if cfg.fit:
        fit_runs(setup, measured)
    if cfg.gpu and setup.machine["gpus"]:
        rows, measured.gpu_notes = gpu_runs(
            setup.machine["gpus"], setup.cube, setup.work, setup.model_path, cfg.watts_per_core, max(cfg.workers)
        )
        measured.results += rows
        if cfg.fit:
            rows, notes = gpu_runs(
                setup.machine["gpus"], setup.cube, setup.work, setup.fit_path, cfg.watts_per_core, max(cfg.workers),
                method="fit",
            )  # fmt: skip
            measured.results += rows
            measured.gpu_notes += notes
    report = _report(setup, measured, t_start)
    _write(report, setup.json_path, t_start)
    return report


def prepare(cfg: BenchConfig) -> Setup:
    """The machine, the bundles and the cubes of a benchmark (mocks built once, then reused)."""
    json_path = Path(cfg.json)
    work = Path(cfg.workdir) if cfg.workdir else json_path.parent / f"{json_path.stem}.scratch"
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    model_path = str(load_manifest(cfg.model).path)
    null_path = str(null_bundle(model_path, work / "null-model") / "manifest.json")
    ppxf_path = str(load_manifest("ppxf").path)
    log.info(
        f"survey-proc bench ({'quick' if cfg.quick else 'full'}) on {machine['cpu']}, {machine['cores']} cores"
        f"{', GPU ' + machine['gpu'] if machine['gpu'] else ', no GPU'}; load average {machine['load_average_1min']}"
    )
    if cfg.cube:
        cube = Path(cfg.cube)
        open_spectral_store(cube)  # a clear error before any cluster starts
    else:
        log.info(f"  building / reusing a {cfg.main_size}x{cfg.main_size} mock cube in {work}")
        cube = mock_cube(work / f"mock{cfg.main_size}.zarr", cfg.main_size)
    sample = sample_cube(cube, work / "ppxf-sample.zarr", cfg.ppxf_spectra, regions=max(4, max(cfg.workers)))
    sizes = [mock_cube(work / f"mock{s}.zarr", s) if s != cfg.main_size or cfg.cube else cube for s in cfg.sizes]
    setup = Setup(cfg, machine, json_path, work, cube, sample, sizes, model_path, null_path, ppxf_path)
    if cfg.fit:
        setup.fit_path = str(load_manifest("fit").path)
        # regions of ~512 spectra, as a cube's: a few big ones leave a worker idle while another ends its last
        regions = max(4, max(cfg.workers), cfg.fit_spectra // 512)
        setup.fit_sample = sample_cube(cube, work / "fit-sample.zarr", cfg.fit_spectra, regions=regions)
    return setup


def model_runs(setup: Setup) -> Measured:
    """The model on the CPU at every worker count; at the largest, also every cube size, pPXF's sample
    and the engine alone."""
    cfg, work, watts, measured = setup.cfg, setup.work, setup.cfg.watts_per_core, Measured()
    top = max(cfg.workers)
    for w in cfg.workers:
        with bench_cluster(w) as client:
            client.run(warm_estimator, setup.model_path, "cpu")
            out = work / f"model-w{w}.maps.zarr"
            r = warm_timed_run(client, setup.cube, out, setup.model_path, "cpu", "model", None, watts)
            r["kind"] = "model, whole cube"
            measured.results.append(r)
            log.info(
                f"  model  cpu  {w} worker(s): {r['spectra']} spectra in {r['seconds']:.2f} s = "
                f"{r['spectra_per_s']:,.0f} spectra/s end to end "
                f"({r['estimator_spectra_per_s']:,.0f}/s estimator alone)"
            )
            if w == top:
                _largest_cluster_runs(client, setup, measured)
            measured.memory[f"model-w{w}"] = r["peak_rss_mb_per_worker"]
    return measured


def _largest_cluster_runs(client, setup: Setup, measured: Measured) -> None:
    """On the cluster of the most workers: the cube sizes, the model on pPXF's sample, the engine alone."""
    work, model, watts, w = setup.work, setup.model_path, setup.cfg.watts_per_core, max(setup.cfg.workers)
    for side_cube in setup.sizes:
        rs = timed_run(
            client, side_cube, work / f"model-{side_cube.stem}.maps.zarr", model, "cpu", "model", None, watts
        )
        rs["kind"] = "model, cube size"
        measured.size_rows.append(rs)
        log.info(f"  model  cpu  {w} worker(s), {rs['spectra']:>6} spectra: {rs['seconds']:.2f} s")
    rm = timed_run(client, setup.sample, work / "model-sample.maps.zarr", model, "cpu", "model", None, watts)
    rm["kind"] = "model, pPXF sample"
    measured.on_sample = rm
    client.run(warm_estimator, setup.null_path, "cpu")
    engine = timed_run(client, setup.cube, work / "null-model.maps.zarr", setup.null_path, "cpu", "model", None, watts)
    engine["kind"] = "engine alone: the model's manifest with a zero-cost TorchScript"
    measured.engine = engine
    log.info(f"  engine alone (null model), {w} worker(s): {engine['spectra_per_s']:,.0f} spectra/s end to end")


def ppxf_runs(setup: Setup, measured: Measured) -> None:
    """pPXF on its sample at every worker count (``--quick``: the largest only)."""
    cfg = setup.cfg
    for w in cfg.workers if not cfg.quick else [max(cfg.workers)]:
        with bench_cluster(w) as client:
            out = setup.work / f"ppxf-w{w}.maps.zarr"
            kind = "pPXF, sample spread over the cube"
            r = sample_run(client, setup.sample, out, setup.ppxf_path, "ppxf", cfg.watts_per_core, kind)
            measured.results.append(r)
            measured.memory[f"ppxf-w{w}"] = r["peak_rss_mb_per_worker"]


def accuracy(maps: str, cube: Path) -> dict | None:
    """Bias and robust scatter of a run's maps against the cube's truth (None without truth)."""
    if not (cube / "truth").exists():
        return None
    names = ("log_age", "metallicity", "av", "sigma", "velocity")
    return accuracy_vs_truth(xr.open_zarr(maps), xr.open_zarr(cube, group="truth"), names).to_json()


def linear_cost(rows: list[dict]) -> dict:
    """Least-squares seconds = fixed + per_spectrum x spectra over the cube-size runs."""
    if len(rows) < 2:
        return {}
    n = np.array([r["spectra"] for r in rows], float)
    t = np.array([r["seconds"] for r in rows], float)
    slope, intercept = np.polyfit(n, t, 1)
    return {
        "seconds_per_spectrum": float(slope),
        "fixed_seconds": float(intercept),
        "spectra_per_s_marginal": float(1.0 / slope) if slope > 0 else float("nan"),
        "seconds_for_65536_spectra_extrapolated": float(intercept + slope * 65536),
    }


def _compare_figures(setup: Setup, on_sample: dict, ppxf_top: dict) -> list[str]:
    """``survey-proc compare`` of the model and pPXF on the same spectra, beside the JSON (with truth only)."""
    if not (setup.sample / "truth").exists():
        return []
    parent, stem = setup.json_path.parent, setup.json_path.stem
    comp = compare_stores(
        on_sample["maps"],
        ppxf_top["maps"],
        parent / f"{stem}_compare",
        truth_cube=setup.sample,
        labels=("model", "pPXF"),
    )
    return [str(Path(f).relative_to(parent)) for f in comp.figures]


def _report(setup: Setup, measured: Measured, t_start: float) -> dict:
    """The report dict (the JSON's schema) of the measurements."""
    cfg, results, watts = setup.cfg, measured.results, setup.cfg.watts_per_core
    top = max(cfg.workers)
    model_top = next(r for r in results if r["method"] == "model" and r["device"] == "cpu" and r["workers"] == top)
    ppxf_top = next(r for r in results if r["method"] == "ppxf" and r["workers"] == top)
    speedup = (model_top["spectra_per_s"] / top) / (ppxf_top["spectra_per_s"] / top)
    speedup_cpu = model_top["spectra_per_cpu_second"] / ppxf_top["spectra_per_cpu_second"]
    acc = {
        "model": accuracy(model_top["maps"], setup.cube),
        "model_on_ppxf_sample": accuracy(measured.on_sample["maps"], setup.sample),
        "ppxf": accuracy(ppxf_top["maps"], setup.sample),
    }
    if measured.fit_on_sample:
        acc["fit_on_ppxf_sample"] = accuracy(measured.fit_on_sample["maps"], setup.sample)
    figures = _compare_figures(setup, measured.on_sample, ppxf_top)
    return {
        "machine": setup.machine,
        "results": results,
        "speedup_per_core": speedup,
        "speedup_per_core_detail": {
            "definition": f"(model spectra/s per worker) / (pPXF spectra/s per worker), both end to end through the "
            f"engine with {top} worker(s) in this run",
            "end_to_end": speedup,
            "cpu_time": speedup_cpu,
            "cpu_time_definition": "(model spectra per CPU-second) / (pPXF spectra per CPU-second) of all the "
            "run's processes: robust to other load on the machine",
            "acceptance_1000x": bool(speedup >= 1000.0),
        },
        "speedup_per_gpu": gpu_speedups(results, ppxf_top, top),
        "fit_speedup_per_core": fit_speedup(results, ppxf_top, top),
        "fit_on_ppxf_sample": measured.fit_on_sample or None,
        "cube_size_scaling": {"rows": measured.size_rows, "fit": linear_cost(measured.size_rows)},
        "model_on_ppxf_sample": measured.on_sample,
        "engine_alone": measured.engine,
        "peak_rss_mb_per_worker": measured.memory,
        "accuracy": acc,
        "compare_figures": figures,
        "config": asdict(cfg)
        | {"cube": str(setup.cube), "ppxf_sample": str(setup.sample), "model_path": setup.model_path},
        "energy_methods_note": "nvml: GPU board counter (GPU rows; their host share, RAPL or estimate, is in "
        "host_joules_per_spectrum and the sum in total_joules_per_spectrum); rapl: CPU "
        f"package counter; estimate: CPU-seconds x {watts:g} W per busy core (no counter "
        "readable)",
        "gpu_notes": measured.gpu_notes,
        "command": _command_line(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bench_seconds": time.perf_counter() - t_start,
    }


def _command_line() -> str:
    """The command that ran the benchmark, as the user typed it."""
    if sys.argv[1:2] == ["bench"]:
        return " ".join(["survey-proc", "bench", *sys.argv[2:]])
    return " ".join(sys.argv)


def _write(report: dict, json_path: Path, t_start: float) -> None:
    """The JSON, then the Markdown and PNG beside it, then the JSON again with the whole run's time."""
    report["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=_json_default))
    paths = write_report(report, json_path)
    report["bench_seconds"] = time.perf_counter() - t_start
    json_path.write_text(json.dumps(report, indent=2, default=_json_default))
    speedup, speedup_cpu = report["speedup_per_core"], report["speedup_per_core_detail"]["cpu_time"]
    log.info(f"speed-up per core, model over pPXF, end to end: {speedup:,.0f}x (CPU-time based: {speedup_cpu:,.0f}x)")
    log.info(
        f"results: {json_path}\nreport: {paths['markdown']}\nplot: {paths['png']}\ntook {report['bench_seconds']:.0f} s"
    )


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
