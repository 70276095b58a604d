"""Timed runs: the engine on a warm LocalCluster, metered for energy and peak memory per worker."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from distributed import Client

from survey_proc import config
from survey_proc.bench._energy import EnergyMeter
from survey_proc.cluster import local_cluster
from survey_proc.engine import RunConfig, RunSummary, run
from survey_proc.estimators import load_estimator

log = logging.getLogger(__name__)


@contextmanager
def bench_cluster(workers: int, env: dict | None = None):
    """A warm LocalCluster made exactly as the engine makes it (one thread per worker); yields its client."""
    cluster = local_cluster(workers, 1, **({"env": env} if env else {}))
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def warm_estimator(model: str, device: str) -> str:
    """Load the estimator in a worker (as the engine will) and warm it up as the engine's worker setup
    does (``warm_up``: TorchScript's first calls; pPXF has none and warms up in its first region)."""
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
    warm = int(config.get("bench.warm-up-runs", 1))
    for _ in range(warm):
        timed_run(client, *args)
    row = timed_run(client, *args)
    row["warm_up_runs"] = warm
    return row


def sample_run(client, sample: Path, out: Path, model: str, method: str, watts_per_core, kind: str) -> dict:
    """A per-spectrum method (pPXF, the fit) on its sample: warmed on the workers, timed after the
    warm-up runs (:func:`warm_timed_run`), the row labelled ``kind`` and logged."""
    client.run(warm_estimator, model, "cpu")
    r = warm_timed_run(client, sample, out, model, "cpu", method, None, watts_per_core)
    r["kind"] = kind
    digits = 2 if r["spectra_per_s"] < 100 else 1
    log.info(
        f"  {kind.split(',')[0]:6s} cpu  {r['workers']} worker(s): {r['spectra']} spectra in {r['seconds']:.2f} s = "
        f"{r['spectra_per_s']:.{digits}f} spectra/s end to end ({r['estimator_spectra_per_s_per_worker']:.{digits}f}/s "
        "per worker, estimator alone)"
    )
    return r


def timed_run(
    client, cube: Path, out: Path, model: str, device: str, method: str, meter_gpus: list[int] | None, watts: float
) -> dict:
    """One engine run on the warm cluster of ``client``, timed and metered; a result row of the JSON.

    The engine connects to the cluster by its address, as ``survey-proc run --cluster ADDRESS`` does.
    """
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
                plot=False,  # the quick-look figure is no part of the engine's time
            )
        )
        wall = time.perf_counter() - t0
    return {
        "method": method,
        "device": device,
        **_measured(s, wall, meter, cube, out),
        "peak_rss_mb_per_worker": peak_rss_per_worker(client),
    }


def _measured(s: RunSummary, wall: float, meter: EnergyMeter, cube: Path, out: Path) -> dict:
    """What a result row measured: the issue's schema first, then the details."""
    w = max(s.workers, 1)
    est_rate = s.fitted / s.estimator_seconds if s.estimator_seconds > 0 else float("nan")
    return {
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
    }
