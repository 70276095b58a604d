"""Linear cost and bounded memory: time per spectrum and peak memory per worker against cube size.

    nice -n 10 python benchmarks/scaling.py --sizes 40 80 160 300 --model default

For each size N it builds an N x N mock cube (``survey-proc mock``, in a subprocess, under
``--workdir``, default /tmp), starts a LocalCluster of ``--workers`` worker processes, loads the
model on every worker, records each worker's resident memory (the baseline: interpreter, torch,
model), runs the engine over the cube on that cluster and records the run's seconds per spectrum
and each worker's peak resident memory (``getrusage`` maximum RSS of the worker process). The
cube and its maps are deleted before the next size unless ``--keep``. Every size uses the same
spatial chunk (``--chunk``), so a region is the same amount of work whatever the cube size.

Writes ``benchmarks/results/scaling.json`` and a plot beside it (``scaling.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from survey_proc.bench import machine_info as machine
from survey_proc.figures import save_figure


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _warm(model: str, threads: int) -> float:
    """Load the model in a worker (as a region task would) and return the worker's RSS (MiB)."""
    from survey_proc.estimators import load_estimator

    load_estimator(model, device="cpu", threads=threads)
    return _rss_mb()


def measure(size: int, args: argparse.Namespace, work: Path) -> dict:
    """Build an N x N cube, run it on a fresh LocalCluster, return the timings and memory per worker."""
    from distributed import Client, LocalCluster

    from survey_proc.engine import RunConfig, run
    from survey_proc.estimators import resolve_model

    cube, maps = work / f"mock{size}.zarr", work / f"mock{size}.maps.zarr"
    t0 = time.perf_counter()
    if not cube.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "survey_proc",
                "mock",
                str(cube),
                "--nx",
                str(size),
                "--ny",
                str(size),
                "--seed",
                "1",
                "--chunk",
                str(args.chunk),
                "--quiet",
            ],
            check=True,
        )
    mock_seconds = time.perf_counter() - t0
    cube_bytes = sum(p.stat().st_size for p in cube.rglob("*") if p.is_file())
    shutil.rmtree(maps, ignore_errors=True)
    model = str(resolve_model(args.model).parent)
    with (
        LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
        ) as cluster,
        Client(cluster) as client,
    ):
        baseline = client.run(_warm, model, 1)
        summary = run(
            RunConfig(cube=str(cube), out=str(maps), model=model, cluster=cluster.scheduler_address, progress=False)
        )
        peak = client.run(_peak_rss_mb)
    result = {
        "size": f"{size}x{size}",
        "spectra": summary.spectra,
        "regions": summary.regions,
        "chunk": args.chunk,
        "cube_gb_on_disk": round(cube_bytes / 1e9, 3),
        "mock_seconds": round(mock_seconds, 1),
        "run_seconds": round(summary.seconds, 2),
        "spectra_per_s": round(summary.spectra_per_s, 1),
        "ms_per_spectrum": round(1e3 * summary.seconds / summary.spectra, 4),
        "estimator_ms_per_spectrum": round(1e3 * summary.estimator_seconds / summary.spectra, 4),
        "worker_baseline_rss_mb": sorted(round(v, 1) for v in baseline.values()),
        "worker_peak_rss_mb": sorted(round(v, 1) for v in peak.values()),
        "client_peak_rss_mb": round(_peak_rss_mb(), 1),
        "verified": summary.verified,
        "model": summary.model_id,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    if not args.keep:
        shutil.rmtree(cube, ignore_errors=True)
        shutil.rmtree(maps, ignore_errors=True)
    return result


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    n = [r["spectra"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(n, [r["ms_per_spectrum"] for r in rows], "o-", label="whole run (read, preprocess, model, write)")
    a.plot(n, [r["estimator_ms_per_spectrum"] for r in rows], "s--", label="model only (summed over workers)")
    a.set(
        xscale="log",
        xlabel="spectra in the cube",
        ylabel="ms per spectrum",
        ylim=(0, None),
        title="time per spectrum against cube size",
    )
    a.legend(fontsize=8)
    for i in range(len(rows[0]["worker_peak_rss_mb"])):
        b.plot(n, [r["worker_peak_rss_mb"][i] for r in rows], "o-", label=f"worker {i + 1}: peak")
    b.plot(n, [max(r["worker_baseline_rss_mb"]) for r in rows], "k:", label="worker after model load")
    b.set(
        xscale="log",
        xlabel="spectra in the cube",
        ylabel="resident memory (MiB)",
        ylim=(0, None),
        title=f"peak memory per worker (chunk {rows[0]['chunk']}x{rows[0]['chunk']})",
    )
    b.legend(fontsize=8)
    m = report["machine"]
    fig.suptitle(
        f"{m['cpu']}, {m['cores']} cores; {rows[0]['model']}; LocalCluster of {report['workers']} workers", fontsize=9
    )
    save_figure(fig, path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[40, 80, 160, 300])
    ap.add_argument("--chunk", type=int, default=20, help="spatial chunk of every cube (divides the sizes)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="default")
    ap.add_argument("--workdir", default="/tmp/survey-proc-scaling")
    ap.add_argument("--keep", action="store_true", help="keep the cubes and maps")
    ap.add_argument("--json", default="benchmarks/results/scaling.json")
    args = ap.parse_args(argv)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "time per spectrum and peak memory per worker against cube size",
        "machine": machine(),
        "workers": args.workers,
        "threads_per_worker": 1,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "results": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for size in args.sizes:
            report["results"].append(measure(size, args, work))
            print(json.dumps(report["results"][-1]), flush=True)
            out.write_text(json.dumps(report, indent=2))  # partial results survive an interruption
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    png = plot(report, out.with_suffix(".png"))
    print(f"results: {out}\nfigure: {png}")
    return report


if __name__ == "__main__":
    main()
