"""The model alone on each GPU, on a larger mock than ``survey-proc bench`` measures (CPU and pPXF skipped).

    python -m benchmarks.gpu.big --side 512 --json results/bench-gpu-big.json

Builds (or reuses) a ``side`` x ``side`` mock and runs the GPU rows of :func:`survey_proc.bench.gpu_runs`
on it: ``local-cuda`` and CPU processes sharing the GPU, each warm, timed end to end (Zarr cube in,
verified maps out) with NVML board energy. Writes one JSON; ``run_on_gpu.sh`` calls it after the bench.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from survey_proc import config
from survey_proc.bench import gpu_runs, machine_info, mock_cube
from survey_proc.estimators import load_manifest

log = logging.getLogger("survey_proc.benchmarks.gpu")


def run_big(side: int, workdir: Path, model: str = "default", chunk: int = 32) -> dict:
    """Result rows of the model on every GPU on a ``side`` x ``side`` mock of ``chunk`` x ``chunk`` regions,
    with the machine and notes."""
    machine = machine_info()
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    name = f"mock{side}.zarr" if chunk == 32 else f"mock{side}-c{chunk}.zarr"
    cube = mock_cube(workdir / name, side, chunk=chunk)
    built = time.perf_counter() - t0
    log.info("mock %dx%d ready in %.1f s", side, side, built)
    rows, notes = (
        ([], ["no GPU on this machine"])
        if not machine["gpus"]
        else gpu_runs(
            machine["gpus"],
            cube,
            workdir,
            str(load_manifest(model).path),
            float(config.get("bench.watts-per-core")),
            os.cpu_count() or 1,
        )
    )
    return {
        "machine": machine,
        "side": side,
        "chunk": chunk,
        "spectra_per_region": chunk * chunk,
        "cube": str(cube),
        "mock_seconds": built,
        "results": rows,
        "gpu_notes": notes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.big", description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=512, help="mock cube side in spaxels (default 512: 262,144 spectra)")
    p.add_argument("--workdir", required=True, help="folder for the mock and the maps")
    p.add_argument("--json", required=True, help="results JSON")
    p.add_argument("--chunk", type=int, default=32, help="region side in spaxels (default 32: 1,024 spectra a task)")
    p.add_argument("--model", default="default")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run_big(args.side, Path(args.workdir), args.model, args.chunk)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    for r in report["results"]:
        log.info("%s: %s spectra in %.2f s = %.0f spectra/s", r["kind"], r["spectra"], r["seconds"], r["spectra_per_s"])
    for note in report["gpu_notes"]:
        log.info("not measured: %s", note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
