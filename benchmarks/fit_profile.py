"""Where ``--method fit`` spends its time, per spectrum on one thread, stage by stage.

    python -m benchmarks.fit_profile --json benchmarks/results/fit_profile.json

The bench (``survey-proc bench``) measures the fit end to end against pPXF; this says where the
estimator's own time goes, for work on its speed. It fits ``--spectra`` spectra spread over a mock
cube (``--cube``, default a 64x64 S/N 30 mock made once in ``--workdir``) through the engine's
``estimate_region`` on one thread, after one warm-up call, with the fit's stages timed (wall clock,
nested: the Levenberg-Marquardt steps include their NNLS solves), the steps per spectrum counted and
the estimates scored against the mock's truth. Writes JSON, Markdown and a PNG (time per stage).
Timings on a machine shared with other jobs move by 10 % and more; compare runs made together.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from benchmarks._records import record, write_record
from survey_proc.bench._cubes import mock_cube, sample_cube
from survey_proc.engine import estimate_region
from survey_proc.estimators import _fit, _fitcore, _fitstream, load_estimator
from survey_proc.figures import save_figure
from survey_proc.stores import robust_sigma

#: (label, owner, attribute): the stages timed, outermost first
STAGES = (
    ("predict (the estimator)", _fit.FitEstimator, "predict"),
    ("seed network and starts", _fit.FitEstimator, "_starts"),
    ("starting velocity", _fit, "velocity_seed"),
    ("fit (all steps)", _fit, "fit_stream"),
    ("Levenberg-Marquardt steps", _fitstream, "lm_iteration"),
    ("first solves (at the seeds)", _fitstream, "_start"),
    ("solves (columns, Gram, NNLS)", _fitstream, "solve_weights"),  # the first ones,
    ("solves (columns, Gram, NNLS)", _fitcore, "solve_weights"),  # the steps' trials
    ("columns (FFTs)", _fitcore.Templates, "columns"),
    ("NNLS", _fitcore, "nnls"),
    ("projected Jacobian", _fitcore, "projected_normal"),
    ("working-set gradient", _fitcore, "refresh_working_set"),
    ("errors and outputs", _fit.FitEstimator, "_write"),
    ("covariance", _fit, "covariance"),
)
PROPERTIES = ("log_age", "metallicity", "av", "sigma", "velocity")


@contextlib.contextmanager
def timed_stages(seconds: Counter, steps: Counter):
    """Wrap every stage so that its wall time adds to ``seconds[label]``; count LM rows in ``steps``."""
    saved = [(owner, name, getattr(owner, name)) for _, owner, name in STAGES]

    def wrap(label, func, count_rows=False):
        if inspect.isgeneratorfunction(func):  # its time is spent as it is iterated

            def timed_generator(*args, **kwargs):
                it = func(*args, **kwargs)
                while True:
                    t0 = time.perf_counter()
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                    finally:
                        seconds[label] += time.perf_counter() - t0
                    yield item

            return timed_generator

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - t0
                if count_rows:
                    steps["rows"] += int(args[1].chi2.shape[0])

        return timed

    try:
        for (label, owner, name), (_, _, func) in zip(STAGES, saved, strict=True):
            setattr(owner, name, wrap(label, func, count_rows=name == "lm_iteration"))
        yield
    finally:
        for owner, name, func in saved:
            setattr(owner, name, func)


def load_spectra(cube: Path, n: int) -> dict:
    """The first ``n`` spectra of ``cube`` (n, nwave) with what the engine needs, and their truth."""
    ds = xr.open_zarr(cube, consolidated=False)
    wave = ds.wave.values
    flat = {k: ds[k].values.reshape(-1, wave.size)[:n] for k in ("flux", "var", "mask")}
    truth = xr.open_zarr(cube, group="truth", consolidated=False)
    return {
        **flat,
        "wave": wave,
        "lsf": ds.lsf_fwhm.values if "lsf_fwhm" in ds else None,
        "redshift": float(ds.attrs.get("redshift", 0.0)),
        "truth": {p: truth[p].values.reshape(-1)[:n] for p in PROPERTIES if p in truth},
    }


def profile(model: str, data: dict) -> dict:
    est = load_estimator(model, threads=1)
    args = (data["wave"], data["redshift"], est, 5.0, data["lsf"])
    estimate_region(data["flux"][:32], data["var"][:32], data["mask"][:32], *args)  # warm-up
    seconds, steps = Counter(), Counter()
    n = data["flux"].shape[0]
    with timed_stages(seconds, steps):
        t0, c0 = time.perf_counter(), time.process_time()
        found = estimate_region(data["flux"], data["var"], data["mask"], *args)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    good = found.flags == 0
    scores = {}
    for p, t in data["truth"].items():
        d = (found.outputs[p] - t)[good]
        d = d[np.isfinite(d)]
        scores[p] = {"bias": float(np.median(d)), "robust_sigma": float(robust_sigma(d)), "n": int(d.size)}
    return {
        "model": model,
        "spectra": n,
        "fitted": int(good.sum()),
        "ms_per_spectrum": 1e3 * wall / n,
        "cpu_ms_per_spectrum": 1e3 * cpu / n,
        "steps_per_spectrum": steps["rows"] / n,
        "stages_ms_per_spectrum": {label: 1e3 * seconds[label] / n for label, _, _ in STAGES},
        "median_chi2": float(np.nanmedian(found.outputs["chi2"])),
        "accuracy": scores,
    }


def markdown(report: dict) -> str:
    r = report["result"]
    lines = [
        "# Where the fit's time goes",
        "",
        f"`{report['command']}` ({report['date']}; one thread; {r['spectra']} spectra of {report['cube']}, "
        f"{r['fitted']} fitted unflagged). Wall clock per spectrum, stages nested (a stage's time includes "
        "the stages listed under it).",
        "",
        f"**{r['ms_per_spectrum']:.2f} ms per spectrum** ({r['cpu_ms_per_spectrum']:.2f} ms CPU), "
        f"{r['steps_per_spectrum']:.2f} Levenberg-Marquardt steps per spectrum, median reduced χ² "
        f"{r['median_chi2']:.3f}.",
        "",
        "| stage | ms per spectrum |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["stages_ms_per_spectrum"].items()]
    lines += ["", "| property | bias | robust σ | n |", "|---|---:|---:|---:|"]
    lines += [f"| {p} | {s['bias']:+.3f} | {s['robust_sigma']:.3f} | {s['n']} |" for p, s in r["accuracy"].items()]
    return "\n".join(lines) + "\n\n![stages](fit_profile.png)\n"


def figure(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["result"]["stages_ms_per_spectrum"]
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(stages)[::-1]
    ax.barh(labels, [stages[k] for k in labels], color="tab:blue")
    ax.set_xlabel("ms per spectrum (one thread; stages nested)")
    ax.set_title(f"--method fit: {report['result']['ms_per_spectrum']:.2f} ms per spectrum")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="fit")
    ap.add_argument("--cube", type=Path, help="cube store with truth (default: a 64x64 mock in --workdir)")
    ap.add_argument("--spectra", type=int, default=512)
    ap.add_argument("--workdir", type=Path, default=Path("fit-profile.scratch"))
    ap.add_argument("--json", type=Path, default=Path("fit_profile.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cube = args.cube
    if cube is None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        full = args.workdir / "mock64.zarr"
        if not full.exists():
            mock_cube(full, 64)
        cube = sample_cube(full, args.workdir / "sample.zarr", args.spectra, regions=1)
    report = record(
        "fit_profile",
        argv,
        cube=str(cube if args.cube else "a 64x64 S/N 30 mock (survey-proc's bench mock), sampled"),
        result=profile(args.model, load_spectra(cube, args.spectra)),
    )
    write_record(report, args.json, markdown, figure, indent=2)


if __name__ == "__main__":
    main()
