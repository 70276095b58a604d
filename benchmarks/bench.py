"""``survey-proc bench``: the neural model and pPXF through the same engine, in one run.

    survey-proc bench --quick                      # about a minute on a 2-core laptop
    survey-proc bench --cube C.zarr --json benchmarks/results/bench.json

On one cube (a mock with truth unless ``--cube`` is given), on warm LocalClusters of 1..cores
workers (one thread each), it measures for the model (on the CPU, and on each GPU present) and for
pPXF (on a sample of spaxels spread evenly over the same cube, ``--ppxf-spectra``):

- spectra/s end to end (the whole ``survey_proc.engine.run`` call: Zarr cube in, verified maps
  store out; cluster start-up excluded) and of the estimator alone, seconds per cube;
- scaling with the number of workers and with cube size (mocks of ``--sizes`` spaxels a side);
- peak memory (RSS) per worker; energy per spectrum (:mod:`benchmarks.energy`);
- accuracy of both against the mock's truth, and ``survey-proc compare`` figures of both;
- the speed-up per core of the model over pPXF, from the same run.

Everything is written as JSON (the schema of issue 4 plus details), a Markdown report and a PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class BenchConfig:
    """Options of ``survey-proc bench`` (None: the preset of ``--quick`` or of the full run)."""

    cube: str | None = None
    json: str | None = None
    quick: bool = False
    model: str = "default"
    workers: list[int] | None = None
    sizes: list[int] | None = None
    ppxf_spectra: int | None = None
    main_size: int | None = None
    watts_per_core: float | None = None
    workdir: str | None = None
    gpu: bool = True
    progress: bool = True

    def resolved(self) -> BenchConfig:
        from survey_proc import config

        preset = config.get("bench.quick" if self.quick else "bench.full")
        cores = os.cpu_count() or 1
        default_workers = sorted({1, *[2**k for k in range(1, 8) if 2**k < cores], cores})
        name = "bench-quick" if self.quick else "bench"
        return BenchConfig(
            cube=self.cube,
            json=self.json or str(RESULTS / f"{name}.json"),
            quick=self.quick,
            model=self.model,
            workers=sorted(set(self.workers or default_workers)),
            sizes=sorted(set(self.sizes or preset["sizes"])),
            ppxf_spectra=int(self.ppxf_spectra or preset["ppxf-spectra"]),
            main_size=int(self.main_size or preset["cube"]),
            watts_per_core=float(self.watts_per_core or config.get("bench.watts-per-core")),
            workdir=self.workdir,
            gpu=self.gpu,
            progress=self.progress,
        )


def say(cfg: BenchConfig, text: str) -> None:
    if cfg.progress:
        print(text, flush=True)


# --- cubes ---------------------------------------------------------------------------------------


def mock_cube(path: Path, side: int, chunk: int = 32, seed: int = 1) -> Path:
    """A mock cube of ``side`` x ``side`` spaxels (S/N 30), reused when it already exists."""
    from dataclasses import asdict

    from survey_proc.stores import open_spectral_store
    from survey_proc.synth import MockConfig, write_mock

    cfg = MockConfig(nx=side, ny=side, seed=seed, snr=30.0, chunk=min(chunk, side))
    if path.exists():
        try:
            ds = open_spectral_store(path, check_data=False)
            if ds.attrs.get("mock_config") == str(asdict(cfg)):
                return path
        except Exception:
            pass
        shutil.rmtree(path)
    write_mock(path, cfg)
    return path


def sample_cube(cube: Path, out: Path, n: int, regions: int = 4) -> Path:
    """~``n`` spectra spread evenly over ``cube`` (a strided grid of spaxels, with its truth) as a
    cube store of at least ``regions`` regions (one per worker, so that every worker fits its share):
    a coarse image of the whole galaxy, so the sample has the cube's mix of surface brightness and S/N
    (catalogues: every k-th object)."""
    import xarray as xr

    from survey_proc.stores import consolidate, cube_compressors

    ds = xr.open_zarr(cube, consolidated=False)
    has_truth = (cube / "truth").exists()
    if "object" in ds["flux"].dims:
        stride = max(1, ds.sizes["object"] // n)
        sel = {"object": slice(stride // 2, None, stride)}
        count = len(range(stride // 2, ds.sizes["object"], stride))
        chunks = (max(1, -(-count // regions)), ds.sizes["wave"])
    else:
        side = max(1, min(math.ceil(math.sqrt(n)), ds.sizes["y"], ds.sizes["x"]))
        sy, sx = max(1, ds.sizes["y"] // side), max(1, ds.sizes["x"] // side)
        sel = {"y": slice(sy // 2, sy // 2 + sy * side, sy), "x": slice(sx // 2, sx // 2 + sx * side, sx)}
        per_axis = math.ceil(math.sqrt(regions))
        block = max(1, -(-side // per_axis))
        chunks = (block, block, ds.sizes["wave"])
    sub = ds.isel(sel).compute()
    enc = {v: {"chunks": chunks, "compressors": cube_compressors()} for v in ("flux", "var", "mask")}
    shutil.rmtree(out, ignore_errors=True)
    sub.to_zarr(out, mode="w", zarr_format=3, consolidated=False, encoding=enc)
    if has_truth:
        truth = (
            xr.open_zarr(cube, group="truth", consolidated=False)
            .isel({k: v for k, v in sel.items() if k in ("y", "x")})
            .compute()
        )
        truth.to_zarr(out, group="truth", mode="a", zarr_format=3, consolidated=False)
    consolidate(out)
    return out


# --- clusters and timed runs -------------------------------------------------------------------------


@contextmanager
def bench_cluster(workers: int, env: dict | None = None):
    """A warm LocalCluster made exactly as the engine makes it (one thread per worker); yields its client."""
    from distributed import Client

    from survey_proc.cluster import local_cluster

    cluster = local_cluster(workers, 1, **({"env": env} if env else {}))
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def _warm_estimator(model: str, device: str) -> str:
    """Load the estimator in a worker (as the engine will) and warm it up as the engine's worker setup
    does (``warm_up``: TorchScript's first calls; pPXF has none and warms up in its first region)."""
    from survey_proc.estimators import load_estimator

    est = load_estimator(model, device=device, threads=1)
    est.warm_up()
    return est.manifest.model_id


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (MB): VmHWM on Linux, else ru_maxrss.

    (ru_maxrss of a spawned worker also counts the parent's memory before the exec; VmHWM does not.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _reset_peak_rss() -> bool:
    """Start a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_per_worker(client) -> list[float]:
    return sorted(client.run(_peak_rss_mb).values())


def warm_timed_run(client, *args) -> dict:
    """:func:`timed_run` after ``bench.warm-up-runs`` untimed runs of the same estimator on the same
    cube and cluster (a first run on a new cluster still pays one-off costs: heaps growing, thread
    pools, caches; measured 9.1 s against 7.7 s for the same 65,536 spectra). Applied alike to the
    model and pPXF; the row records how many there were."""
    from survey_proc import config

    warm = int(config.get("bench.warm-up-runs", 1))
    for _ in range(warm):
        timed_run(client, *args)
    row = timed_run(client, *args)
    row["warm_up_runs"] = warm
    return row


def timed_run(
    client, cube: Path, out: Path, model: str, device: str, method: str, meter_gpus: list[int] | None, watts: float
) -> dict:
    """One engine run on the warm cluster of ``client``, timed and metered; a result row of the JSON.

    The engine connects to the cluster by its address, as ``survey-proc run --cluster ADDRESS`` does.
    """
    from benchmarks.energy import EnergyMeter
    from survey_proc.engine import RunConfig, run

    shutil.rmtree(out, ignore_errors=True)
    address = client.scheduler.address
    client.run(_reset_peak_rss)
    with EnergyMeter(gpus=meter_gpus, watts_per_core=watts) as meter:
        t0 = time.perf_counter()
        s = run(
            RunConfig(
                cube=str(cube),
                out=str(out),
                model=model,
                cluster=address,
                progress=False,
                overwrite=True,
                device=device,
            )
        )
        wall = time.perf_counter() - t0
    w = max(s.workers, 1)
    est_rate = s.fitted / s.estimator_seconds if s.estimator_seconds > 0 else float("nan")
    return {
        "method": method,
        "device": device,
        "workers": s.workers,
        "spectra": s.spectra,
        "seconds": wall,
        "spectra_per_s": s.spectra / wall,
        "joules_per_spectrum": meter.joules / s.spectra,
        "energy_method": meter.method,
        # the host's share (RAPL or estimate; the same as the above on CPU runs) and the sum
        "host_joules_per_spectrum": meter.host_joules / s.spectra,
        "host_energy_method": meter.host_method,
        "total_joules_per_spectrum": meter.total_joules / s.spectra,
        # details beyond the schema
        "model_id": s.model_id,
        "cube": str(cube),
        "maps": str(out),
        "fitted": s.fitted,
        "spectra_per_s_per_worker": s.spectra / wall / w,
        "compute_seconds": s.seconds,
        "estimator_seconds": s.estimator_seconds,
        "estimator_spectra_per_s_per_worker": est_rate,
        "estimator_spectra_per_s": est_rate * w,
        "cpu_seconds": meter.cpu_seconds,
        "spectra_per_cpu_second": s.spectra / meter.cpu_seconds if meter.cpu_seconds > 0 else float("nan"),
        "energy_note": meter.note,
        "flag_counts": s.flag_counts,
        # where the time goes, per spectrum, summed over the worker tasks (wall and CPU microseconds)
        "per_spectrum_us": {k: v / s.spectra * 1e6 for k, v in sorted(s.timings.items())},
        "peak_rss_mb_per_worker": peak_rss_per_worker(client),
    }


# --- GPUs ---------------------------------------------------------------------------------------------


def _cuda_ready() -> str:
    """'' where torch can use CUDA in this environment, else why not."""
    import torch

    if not torch.cuda.is_available():
        return (
            f"torch {torch.__version__} cannot use CUDA here (a CPU build, or no driver): install a CUDA "
            "build of torch to benchmark the GPU"
        )
    return ""


def gpu_runs(
    cfg: BenchConfig, gpus: list[dict], cube: Path, work: Path, model_path: str, watts: float, cpu_workers: int
) -> tuple[list[dict], list[str]]:
    """The model on each GPU, two ways, each on a warm cluster (and on all GPUs together where there
    are several); returns (result rows, notes).

    - ``local-cuda``: what ``survey-proc run --cluster local-cuda`` starts for that GPU (dask-cuda,
      one worker whose threads, the machine's cores, read and preprocess while one batch at a time
      runs on the GPU);
    - ``processes``: ``cpu_workers`` single-threaded worker processes sharing the GPU, as
      ``survey-proc run --cluster local --device cuda`` starts them (each its own CUDA context, one
      Zarr thread, and here a share of the device memory for its batches), for comparison.

    A GPU or way that cannot run (no CUDA build of torch, no dask-cuda, a failure) is noted and
    skipped: the CPU results already measured are kept. Written without a GPU to test on (this
    project's sessions never had one): the first GPU run checks it.
    """
    import dask.config

    why = _cuda_ready()
    if why:
        return [], [why]
    rows: list[dict] = []
    notes: list[str] = []

    def measure(label: str, way: str, start, indices: list[int], out_name: str) -> None:
        settings = {"survey-proc.gpu.memory-fraction": 0.5 / cpu_workers} if way == "processes" else {}
        try:
            with dask.config.set(settings), start() as client:
                client.run(_warm_estimator, model_path, "cuda:0")
                r = warm_timed_run(client, cube, work / out_name, model_path, "cuda:0", "model", indices, watts)
        except Exception as exc:
            notes.append(f"{label}, {way}: not measured: {type(exc).__name__}: {exc}")
            say(cfg, f"  {notes[-1]}")
            return
        r["device"] = ",".join(f"cuda:{i}" for i in indices)
        r["cluster"] = way
        r["kind"] = f"model, whole cube, {label} ({way})"
        r["gpu_acceptance_50k"] = bool(r["spectra_per_s"] >= 50_000)
        rows.append(r)
        say(
            cfg,
            f"  model  {r['device']} ({way}, {r['workers']} worker(s)): {r['spectra_per_s']:,.0f} spectra/s end to end",
        )

    # NVML's index is not CUDA's order: CUDA_VISIBLE_DEVICES gets the UUID, the same in both
    ids = {g["index"]: g.get("uuid") or str(g["index"]) for g in gpus}
    for g in gpus:
        device = ids[g["index"]]
        measure(
            f"GPU {g['name']}",
            "local-cuda",
            lambda device=device: _local_cuda_client(device, 1),
            [g["index"]],
            f"model-gpu{g['index']}-local-cuda.maps.zarr",
        )
        measure(
            f"GPU {g['name']}",
            "processes",
            lambda device=device: bench_cluster(cpu_workers, env={"CUDA_VISIBLE_DEVICES": device}),
            [g["index"]],
            f"model-gpu{g['index']}-processes.maps.zarr",
        )
    if len(gpus) > 1:  # scaling with the GPUs: every GPU, one local-cuda worker each
        measure(
            f"{len(gpus)} GPUs",
            "local-cuda",
            lambda: _local_cuda_client(",".join(ids.values()), len(gpus)),
            list(ids),
            "model-gpus-local-cuda.maps.zarr",
        )
    return rows, notes


@contextmanager
def _local_cuda_client(devices: str, workers: int):
    """A client of the ``local-cuda`` cluster ``survey-proc run`` would start, on ``devices``."""
    import dask.config

    from survey_proc.cluster import make_client

    with (
        dask.config.set({"survey-proc.cluster.local-cuda.devices": devices}),
        make_client("local-cuda", workers) as client,
    ):
        yield client


# --- the benchmark ------------------------------------------------------------------------------------


def gpu_speedups(results: list[dict], ppxf_row: dict, cores: int) -> dict | None:
    """The fastest single-GPU row against pPXF on this machine's CPU cores, from the same run: per core,
    against every core, and in energy per spectrum (None without GPU rows)."""
    rows = [r for r in results if r["device"] != "cpu" and "," not in r["device"]]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["spectra_per_s"])
    ppxf_rate = ppxf_row["spectra_per_s"]
    return {
        "row": best["kind"],
        "spectra_per_s": best["spectra_per_s"],
        "vs_ppxf_per_core": best["spectra_per_s"] / (ppxf_rate / cores),
        "vs_ppxf_all_cores": best["spectra_per_s"] / ppxf_rate,
        "energy_ratio": ppxf_row["total_joules_per_spectrum"] / best["total_joules_per_spectrum"],
        "definition": f"(model spectra/s on one GPU, end to end) / (pPXF spectra/s per core, and on all {cores} "
        "cores), both through the engine in this run; energy_ratio: pPXF's joules per spectrum "
        "(host) over the GPU row's (GPU board by NVML + host)",
    }


def accuracy(maps: str, cube: Path) -> dict | None:
    """Bias and robust scatter of a run's maps against the cube's truth (None without truth)."""
    import xarray as xr

    from survey_proc.analysis import accuracy_vs_truth

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


def run_bench(cfg: BenchConfig) -> dict:
    """Run every measurement; returns the report dict (also written as JSON, Markdown and PNG)."""
    from benchmarks.machine import machine_info
    from benchmarks.null_model import null_bundle
    from benchmarks.report import write_report
    from survey_proc.estimators import load_manifest

    cfg = cfg.resolved()
    t_start = time.perf_counter()
    json_path = Path(cfg.json)
    stem = json_path.stem
    work = Path(cfg.workdir) if cfg.workdir else json_path.parent / f"{stem}.scratch"
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    model_path = str(load_manifest(cfg.model).path)
    null_path = str(null_bundle(model_path, work / "null-model") / "manifest.json")
    ppxf_path = str(load_manifest("ppxf").path)
    watts = cfg.watts_per_core
    say(
        cfg,
        f"survey-proc bench ({'quick' if cfg.quick else 'full'}) on {machine['cpu']}, {machine['cores']} cores"
        f"{', GPU ' + machine['gpu'] if machine['gpu'] else ', no GPU'}; load average {machine['load_average_1min']}",
    )

    if cfg.cube:
        cube = Path(cfg.cube)
        from survey_proc.stores import open_spectral_store

        open_spectral_store(cube)  # a clear error before any cluster starts
    else:
        say(cfg, f"  building / reusing a {cfg.main_size}x{cfg.main_size} mock cube in {work}")
        cube = mock_cube(work / f"mock{cfg.main_size}.zarr", cfg.main_size)
    sample = sample_cube(cube, work / "ppxf-sample.zarr", cfg.ppxf_spectra, regions=max(4, max(cfg.workers)))
    sizes = [mock_cube(work / f"mock{s}.zarr", s) if s != cfg.main_size or cfg.cube else cube for s in cfg.sizes]

    results: list[dict] = []
    size_rows: list[dict] = []
    memory: dict[str, list[float]] = {}
    top = max(cfg.workers)
    for w in cfg.workers:
        with bench_cluster(w) as client:
            client.run(_warm_estimator, model_path, "cpu")
            r = warm_timed_run(client, cube, work / f"model-w{w}.maps.zarr", model_path, "cpu", "model", None, watts)
            r["kind"] = "model, whole cube"
            results.append(r)
            say(
                cfg,
                f"  model  cpu  {w} worker(s): {r['spectra']} spectra in {r['seconds']:.2f} s = "
                f"{r['spectra_per_s']:,.0f} spectra/s end to end "
                f"({r['estimator_spectra_per_s']:,.0f}/s estimator alone)",
            )
            if w == top:
                for side_cube in sizes:
                    rs = timed_run(
                        client,
                        side_cube,
                        work / f"model-{side_cube.stem}.maps.zarr",
                        model_path,
                        "cpu",
                        "model",
                        None,
                        watts,
                    )
                    rs["kind"] = "model, cube size"
                    size_rows.append(rs)
                    say(cfg, f"  model  cpu  {w} worker(s), {rs['spectra']:>6} spectra: {rs['seconds']:.2f} s")
                rm = timed_run(client, sample, work / "model-sample.maps.zarr", model_path, "cpu", "model", None, watts)
                rm["kind"] = "model, pPXF sample"
                client.run(_warm_estimator, null_path, "cpu")
                engine = timed_run(client, cube, work / "null-model.maps.zarr", null_path, "cpu", "model", None, watts)
                engine["kind"] = "engine alone: the model's manifest with a zero-cost TorchScript"
                say(
                    cfg,
                    f"  engine alone (null model), {w} worker(s): {engine['spectra_per_s']:,.0f} spectra/s end to end",
                )
            memory[f"model-w{w}"] = r["peak_rss_mb_per_worker"]

    ppxf_workers = cfg.workers if not cfg.quick else [top]
    for w in ppxf_workers:
        with bench_cluster(w) as client:
            client.run(_warm_estimator, ppxf_path, "cpu")
            r = warm_timed_run(client, sample, work / f"ppxf-w{w}.maps.zarr", ppxf_path, "cpu", "ppxf", None, watts)
            r["kind"] = "pPXF, sample spread over the cube"
            results.append(r)
            memory[f"ppxf-w{w}"] = r["peak_rss_mb_per_worker"]
            say(
                cfg,
                f"  pPXF   cpu  {w} worker(s): {r['spectra']} spectra in {r['seconds']:.2f} s = "
                f"{r['spectra_per_s']:.2f} spectra/s end to end ({r['estimator_spectra_per_s_per_worker']:.2f}/s "
                "per worker, estimator alone)",
            )

    gpu_notes: list[str] = []
    if cfg.gpu and machine["gpus"]:
        rows, gpu_notes = gpu_runs(cfg, machine["gpus"], cube, work, model_path, watts, top)
        results += rows

    model_top = next(r for r in results if r["method"] == "model" and r["device"] == "cpu" and r["workers"] == top)
    ppxf_top = next(r for r in results if r["method"] == "ppxf" and r["workers"] == top)
    speedup = (model_top["spectra_per_s"] / top) / (ppxf_top["spectra_per_s"] / top)
    speedup_cpu = model_top["spectra_per_cpu_second"] / ppxf_top["spectra_per_cpu_second"]

    acc = {
        "model": accuracy(model_top["maps"], cube),
        "model_on_ppxf_sample": accuracy(rm["maps"], sample),
        "ppxf": accuracy(ppxf_top["maps"], sample),
    }
    figures: list[str] = []
    if (sample / "truth").exists():
        from survey_proc.analysis import compare_stores

        comp = compare_stores(
            rm["maps"],
            ppxf_top["maps"],
            json_path.parent / f"{stem}_compare",
            truth_cube=sample,
            labels=("model", "pPXF"),
        )
        figures = [str(Path(f).relative_to(json_path.parent)) for f in comp.figures]

    report = {
        "machine": machine,
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
        "cube_size_scaling": {"rows": size_rows, "fit": linear_cost(size_rows)},
        "model_on_ppxf_sample": rm,
        "engine_alone": engine,
        "peak_rss_mb_per_worker": memory,
        "accuracy": acc,
        "compare_figures": figures,
        "config": asdict(cfg) | {"cube": str(cube), "ppxf_sample": str(sample), "model_path": model_path},
        "energy_methods_note": "nvml: GPU board counter (GPU rows; their host share, RAPL or estimate, is in "
        "host_joules_per_spectrum and the sum in total_joules_per_spectrum); rapl: CPU "
        f"package counter; estimate: CPU-seconds x {watts:g} W per busy core (no counter "
        "readable)",
        "gpu_notes": gpu_notes,
        "command": " ".join(["survey-proc", "bench", *sys.argv[2:]])
        if sys.argv[1:2] == ["bench"]
        else " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bench_seconds": time.perf_counter() - t_start,
    }
    report["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=_json_default))
    paths = write_report(report, json_path)
    report["bench_seconds"] = time.perf_counter() - t_start
    json_path.write_text(json.dumps(report, indent=2, default=_json_default))
    say(cfg, f"speed-up per core, model over pPXF, end to end: {speedup:,.0f}x (CPU-time based: {speedup_cpu:,.0f}x)")
    say(
        cfg,
        f"results: {json_path}\nreport: {paths['markdown']}\nplot: {paths['png']}\n"
        f"took {report['bench_seconds']:.0f} s",
    )
    return report


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    p.add_argument("--cube", help="cube store to benchmark on (default: a mock with truth, built once)")
    p.add_argument(
        "--json",
        help="results JSON (default: benchmarks/results/bench[-quick].json); the Markdown "
        "report and PNG are written beside it",
    )
    p.add_argument("--quick", action="store_true", help="small cubes and a 16-spectrum pPXF sample (~1 minute)")
    p.add_argument("--model", default="default", help="model bundle to benchmark against pPXF (default: default)")
    p.add_argument("--workers", type=int, nargs="+", help="worker counts (default: 1, 2, 4, ... up to the cores)")
    p.add_argument("--sizes", type=int, nargs="+", help="mock cube sides for the cube-size scaling")
    p.add_argument("--main-size", type=int, help="side of the mock cube measured (without --cube)")
    p.add_argument("--ppxf-spectra", type=int, help="spectra in pPXF's sample (spread over the cube)")
    p.add_argument("--watts-per-core", type=float, help="power per busy core for the energy estimate (W)")
    p.add_argument("--workdir", help="folder for mock cubes and maps (default: beside the JSON, *.scratch)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU runs even where GPUs exist")
    p.add_argument("--quiet", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        cube=args.cube,
        json=args.json,
        quick=args.quick,
        model=args.model,
        workers=args.workers,
        sizes=args.sizes,
        main_size=args.main_size,
        ppxf_spectra=args.ppxf_spectra,
        watts_per_core=args.watts_per_core,
        workdir=args.workdir,
        gpu=not args.no_gpu,
        progress=not args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_bench(config_from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
