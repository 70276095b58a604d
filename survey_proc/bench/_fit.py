"""The fit (``--method fit``) as the bench's third method: its speed against pPXF's, and its accuracy on
pPXF's own spectra.

On the cluster of the most workers it runs on a sample of ``fit_spectra`` spectra spread over the cube
(its cost, like pPXF's, is per spectrum: the whole cube would take minutes on a laptop) and on pPXF's
sample (the same spectra as pPXF, for accuracy against the truth and against pPXF).
"""

from __future__ import annotations

from survey_proc.bench._timing import bench_cluster, sample_run, timed_run


def fit_runs(setup, measured) -> None:
    """The fit on its sample (timed, warm) and on pPXF's sample, with the most workers."""
    cfg = setup.cfg
    w = max(cfg.workers)
    with bench_cluster(w) as client:
        out = setup.work / f"fit-w{w}.maps.zarr"
        kind = "fit, sample spread over the cube"
        r = sample_run(client, setup.fit_sample, out, setup.fit_path, "fit", cfg.watts_per_core, kind)
        measured.results.append(r)
        measured.memory[f"fit-w{w}"] = r["peak_rss_mb_per_worker"]
        on = timed_run(
            client, setup.sample, setup.work / "fit-sample.maps.zarr", setup.fit_path, "cpu", "fit", None,
            cfg.watts_per_core,
        )  # fmt: skip
        on["kind"] = "fit, pPXF sample"
        measured.fit_on_sample = on


def fit_speedup(results: list[dict], ppxf_top: dict, workers: int) -> dict | None:
    """The fit against pPXF per core, end to end and from CPU time, in the same run (None: not run)."""
    row = next((r for r in results if r["method"] == "fit" and r["device"] == "cpu" and r["workers"] == workers), None)
    if row is None:
        return None
    end_to_end = (row["spectra_per_s"] / workers) / (ppxf_top["spectra_per_s"] / workers)
    return {
        "end_to_end": end_to_end,
        "cpu_time": row["spectra_per_cpu_second"] / ppxf_top["spectra_per_cpu_second"],
        "definition": f"(fit spectra/s per worker) / (pPXF spectra/s per worker), end to end through the engine "
        f"with {workers} worker(s) in this run",
        "acceptance_100x": bool(end_to_end >= 100.0),
    }
