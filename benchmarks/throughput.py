"""End-to-end engine throughput (Zarr cube in -> maps out) of a model on a mock cube.

    python benchmarks/throughput.py --nx 64 --workers 1 2 --json benchmarks/results/throughput.json

Builds (or reuses) a mock cube, runs the model through the engine on a LocalCluster for each
worker count, and records spectra/s of the whole run (cluster start-up excluded) and of the
estimator alone, with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def machine() -> dict:
    """CPU model, cores, memory and library versions of this machine."""
    import psutil
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main(argv: list[str] | None = None) -> dict:
    from survey_proc.engine import RunConfig, run
    from survey_proc.synth import MockConfig, write_mock

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nx", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--model", default="default")
    ap.add_argument("--json", default="benchmarks/results/throughput.json")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="survey-proc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cube = work / f"mock{args.nx}.zarr"
    if not cube.exists():
        write_mock(cube, MockConfig(nx=args.nx, ny=args.nx, seed=1, chunk=32))
    results = []
    for n in args.workers:
        out = work / f"maps-{n}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        s = run(RunConfig(cube=str(cube), out=str(out), model=args.model, workers=n, progress=False))
        results.append({"method": "model", "model": s.model_id, "device": "cpu", "workers": n,
                        "spectra": s.spectra, "seconds": s.seconds, "spectra_per_s": s.spectra_per_s,
                        "spectra_per_s_per_worker": s.spectra_per_s / n,
                        "estimator_spectra_per_s_per_worker": s.spectra / s.estimator_seconds,
                        "wall_seconds_with_cluster_start": time.perf_counter() - t0})
        print(json.dumps(results[-1]))
    report = {"benchmark": "engine throughput", "cube": f"mock {args.nx}x{args.nx}x3681",
              "machine": machine(), "results": results,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
