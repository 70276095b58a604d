"""The model on each GPU, two ways (``local-cuda``, and CPU processes sharing the GPU), and the GPU's
speed-up over pPXF. Written without a GPU to test on; the first GPU run checks it."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import dask.config

from survey_proc.bench._timing import bench_cluster, warm_estimator, warm_timed_run
from survey_proc.cluster import make_client

log = logging.getLogger(__name__)


def _cuda_ready() -> str:
    """'' where torch can use CUDA in this environment, else why not."""
    import torch

    if not torch.cuda.is_available():
        return (
            f"torch {torch.__version__} cannot use CUDA here (a CPU build, or no driver): install a CUDA "
            "build of torch to benchmark the GPU"
        )
    return ""


#: the spectra/s each method should reach on one GPU (the issues' acceptance)
GPU_TARGETS = {"model": 50_000, "fit": 10_000}


def gpu_runs(
    gpus: list[dict], cube: Path, work: Path, model_path: str, watts: float, cpu_workers: int, method: str = "model"
) -> tuple[list[dict], list[str]]:
    """The model (or the fit, ``method="fit"``) on each GPU, two ways, each on a warm cluster (and on
    all GPUs together where there are several); returns (result rows, notes).

    - ``local-cuda``: what ``survey-proc run --cluster local-cuda`` starts for that GPU (dask-cuda,
      one worker whose threads, the machine's cores, read and preprocess while one batch at a time
      runs on the GPU);
    - ``processes``: ``cpu_workers`` single-threaded worker processes sharing the GPU, as
      ``survey-proc run --cluster local --device cuda`` starts them (each its own CUDA context, one
      Zarr thread, and here a share of the device memory for its batches), for comparison.

    A GPU or way that cannot run (no CUDA build of torch, no dask-cuda, a failure) is noted and
    skipped: the CPU results already measured are kept.
    """
    why = _cuda_ready()
    if why:
        return [], [why]
    measure = _Measure(cube, work, model_path, watts, cpu_workers, method)
    # NVML's index is not CUDA's order: CUDA_VISIBLE_DEVICES gets the UUID, the same in both
    ids = {g["index"]: g.get("uuid") or str(g["index"]) for g in gpus}
    for g in gpus:
        device = ids[g["index"]]
        measure(
            f"GPU {g['name']}",
            "local-cuda",
            lambda device=device: _local_cuda_client(device, 1),
            [g["index"]],
            f"{method}-gpu{g['index']}-local-cuda.maps.zarr",
        )
        measure(
            f"GPU {g['name']}",
            "processes",
            lambda device=device: bench_cluster(cpu_workers, env={"CUDA_VISIBLE_DEVICES": device}),
            [g["index"]],
            f"{method}-gpu{g['index']}-processes.maps.zarr",
        )
    if len(gpus) > 1:  # scaling with the GPUs: every GPU, one local-cuda worker each
        measure(
            f"{len(gpus)} GPUs",
            "local-cuda",
            lambda: _local_cuda_client(",".join(ids.values()), len(gpus)),
            list(ids),
            f"{method}-gpus-local-cuda.maps.zarr",
        )
    return measure.rows, measure.notes


class _Measure:
    """One GPU row: the model on a warm cluster that ``start()`` gives, or a note of why not."""

    def __init__(
        self, cube: Path, work: Path, model_path: str, watts: float, cpu_workers: int, method: str = "model"
    ) -> None:
        self.cube, self.work, self.model_path, self.watts, self.cpu_workers = cube, work, model_path, watts, cpu_workers
        self.method = method
        self.rows: list[dict] = []
        self.notes: list[str] = []

    def __call__(self, label: str, way: str, start, indices: list[int], out_name: str) -> None:
        settings = {"survey-proc.gpu.memory-fraction": 0.5 / self.cpu_workers} if way == "processes" else {}
        args = (self.cube, self.work / out_name, self.model_path, "cuda:0", self.method, indices, self.watts)
        try:
            with dask.config.set(settings), start() as client:
                client.run(warm_estimator, self.model_path, "cuda:0")
                r = warm_timed_run(client, *args)
        except Exception as exc:
            self.notes.append(f"{label}, {way}: not measured: {type(exc).__name__}: {exc}")
            log.info(f"  {self.notes[-1]}")
            return
        r["device"] = ",".join(f"cuda:{i}" for i in indices)
        r["cluster"] = way
        r["kind"] = f"{self.method}, whole cube, {label} ({way})"
        target = GPU_TARGETS.get(self.method, 0)
        r[f"gpu_acceptance_{target // 1000}k"] = bool(r["spectra_per_s"] >= target)
        self.rows.append(r)
        log.info(
            f"  {self.method:6s} {r['device']} ({way}, {r['workers']} worker(s)): {r['spectra_per_s']:,.0f} spectra/s "
            "end to end"
        )


@contextmanager
def _local_cuda_client(devices: str, workers: int):
    """A client of the ``local-cuda`` cluster ``survey-proc run`` would start, on ``devices``."""
    with (
        dask.config.set({"survey-proc.cluster.local-cuda.devices": devices}),
        make_client("local-cuda", workers) as client,
    ):
        yield client


def gpu_speedups(results: list[dict], ppxf_row: dict, cores: int) -> dict | None:
    """The fastest single-GPU row against pPXF on this machine's CPU cores, from the same run: per core,
    against every core, and in energy per spectrum (None without GPU rows)."""
    rows = [r for r in results if r["device"] != "cpu" and "," not in r["device"] and r["method"] == "model"]
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
