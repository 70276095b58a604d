"""Are ``--method fit``'s errors right? Its curvature errors against the scatter of its fits to many noise
realisations of the same spectra (issue 18: "from the curvature, checked against Monte Carlo on mocks").

    python -m benchmarks.fit_errors --json benchmarks/results/fit_errors.json

``--bases`` spectra (mixtures of three E-MILES SSPs with dust, velocity and sigma drawn as in the tests
against pPXF) are observed like MUSE and each gets ``--realisations`` noise draws at S/N ``--snr`` per
pixel; every draw is fitted through the engine's ``estimate_region`` (the packaged ``fit`` bundle, one
thread). Per base spectrum and property, the ratio of the estimates' standard deviation to their median
reported error; the report gives the median over the base spectra (1 is right; its sampling error is
about 1 / sqrt(2 x realisations x bases)). Two data grids: MUSE's 1.25 A pixels, which the engine
resamples onto the fit's 64 km/s grid (neighbouring pixels then share noise, which the fit's errors
take in: ``survey_proc.preprocess.resampling_covariance``), and spectra already on the fit's grid (no
resampling). Also reported: the errors the curvature alone gives on the MUSE grid (the pixels treated
as independent), i.e. before that correction. Writes JSON, Markdown and a PNG.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._records import record, write_record
from survey_proc.engine import estimate_region
from survey_proc.estimators import load_estimator
from survey_proc.figures import save_figure
from survey_proc.preprocess import batch_error_inflation
from survey_proc.ssp import load_ssp_library, muse_lsf_fwhm
from survey_proc.synth import Synthesiser

PROPERTIES = ("velocity", "sigma", "av", "log_age", "metallicity", "log_age_mass", "metallicity_mass")
REDSHIFT = 0.01


def base_spectra(lib, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Light weights (n, metal, age) of three SSPs each (none younger than the 5th age), A_V, v, sigma."""
    weights = np.zeros((n, lib.metal.size, lib.log_age.size))
    for i in range(n):
        for _ in range(3):
            weights[i, rng.integers(0, lib.metal.size), rng.integers(5, lib.log_age.size)] += rng.random()
    return {
        "weights": weights,
        "av": rng.uniform(0.1, 1.0, n),
        "velocity": rng.uniform(-150, 150, n),
        "sigma": rng.uniform(60, 250, n),
    }


def grids(model: str) -> dict[str, np.ndarray]:
    """The data grids (observed Angstrom): MUSE's linear 1.25 A pixels and the fit's own ln grid."""
    return {
        "muse": 4750.0 + 1.25 * np.arange(3681),
        "model grid": load_estimator(model).manifest.input.wave * (1.0 + REDSHIFT),
    }


def realisations(
    lib, base: dict, wave: np.ndarray, snr: float, r: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(n x r, nwave) noisy flux and its variance: ``r`` draws of each base spectrum at S/N ``snr``."""
    synth = Synthesiser(lib, wave, REDSHIFT, muse_lsf_fwhm)
    flux = synth.observe(base["weights"], base["av"], base["velocity"], base["sigma"], 100.0)
    var = np.repeat((flux / snr) ** 2, r, axis=0).astype(np.float32)
    noisy = np.repeat(flux, r, axis=0) + rng.normal(size=var.shape).astype(np.float32) * np.sqrt(var)
    return noisy.astype(np.float32), var


def inflation(model: str, flux: np.ndarray, var: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """(n,) what the resampling's shared noise grows each spectrum's variances by (the fit's own factor)."""
    spec = load_estimator(model).manifest.input
    x = spec.prepare_batch(flux, var, np.zeros(flux.shape, bool), wave, REDSHIFT).x
    meta = spec.batch_meta(np.full(len(flux), REDSHIFT), wave, muse_lsf_fwhm(wave))
    return batch_error_inflation(meta, x)


def ratios(out: dict[str, np.ndarray], n: int, r: int, scale: np.ndarray | None = None) -> dict[str, list[float]]:
    """Per property, per base spectrum: std of the r estimates / their median error (errors divided by
    ``scale`` (n x r,) where given)."""
    result = {}
    for p in PROPERTIES:
        x = out[p].astype(np.float64).reshape(n, r)
        e = out[f"{p}_err"].astype(np.float64)
        e = (e if scale is None else e / scale).reshape(n, r)
        result[p] = [float(v) for v in np.nanstd(x, axis=1, ddof=1) / np.nanmedian(e, axis=1)]
    return result


def check(model: str = "fit", bases: int = 16, r: int = 100, snr: float = 30.0, seed: int = 1) -> dict:
    """The Monte Carlo check on both grids (the report's ``result``)."""
    torch.set_num_threads(1)
    lib = load_ssp_library("emiles")
    rng = np.random.default_rng(seed)
    base = base_spectra(lib, bases, rng)
    est = load_estimator(model, threads=1)
    result: dict = {}
    for name, wave in grids(model).items():
        flux, var = realisations(lib, base, wave, snr, r, rng)
        t0 = time.perf_counter()
        out = estimate_region(flux, var, np.zeros(flux.shape, bool), wave, REDSHIFT, est, 1.0, muse_lsf_fwhm(wave))
        seconds = time.perf_counter() - t0
        factor = inflation(model, flux, var, wave)
        rows = {"ratios": ratios(out.outputs, bases, r)}
        if name == "muse":
            rows["ratios_pixels_independent"] = ratios(out.outputs, bases, r, np.sqrt(factor))
        result[name] = {
            **rows,
            "median": {k: {p: float(np.median(v[p])) for p in PROPERTIES} for k, v in rows.items()},
            "error_inflation": float(np.median(factor)),
            "fitted": int((out.flags == 0).sum()),
            "seconds": seconds,
        }
    return result


def markdown(report: dict) -> str:
    res, o = report["result"], report["options"]
    lines = [
        "# The fit's errors against Monte Carlo",
        "",
        f"`{report['command']}` ({report['date']}; {o['bases']} base spectra x {o['realisations']} noise "
        f"realisations at S/N {o['snr']:g} per pixel; torch {report['torch']}). Per property: the standard "
        "deviation of the fits over the realisations / their median reported error, the median over the base "
        "spectra (1 is right; sampling error ~"
        f"{1 / np.sqrt(2 * o['realisations'] * o['bases']):.2f}).",
        "",
        "| data | " + " | ".join(PROPERTIES) + " |",
        "|---|" + "---:|" * len(PROPERTIES),
    ]
    labels = {
        ("muse", "ratios"): "MUSE 1.25 A pixels, resampled (the fit's errors)",
        ("muse", "ratios_pixels_independent"): "the same, curvature alone (pixels as independent)",
        ("model grid", "ratios"): "on the fit's own grid (no resampling)",
    }
    for (grid, key), label in labels.items():
        med = res[grid]["median"][key]
        lines.append(f"| {label} | " + " | ".join(f"{med[p]:.2f}" for p in PROPERTIES) + " |")
    lines += [
        "",
        f"Resampling MUSE's pixels onto 64 km/s shares noise between neighbours: the fit's variances grow by "
        f"{res['muse']['error_inflation']:.2f} for it (errors x {np.sqrt(res['muse']['error_inflation']):.2f}).",
        "",
        "![ratios](fit_errors.png)",
    ]
    return "\n".join(lines) + "\n"


def figure(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["result"]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(PROPERTIES))
    series = (
        ("muse", "ratios", "MUSE grid, the fit's errors", "tab:blue", -0.2),
        ("muse", "ratios_pixels_independent", "MUSE grid, pixels as independent", "tab:red", 0.0),
        ("model grid", "ratios", "on the fit's grid", "tab:green", 0.2),
    )
    for grid, key, label, colour, dx in series:
        values = res[grid][key]
        for i, p in enumerate(PROPERTIES):
            ax.scatter(np.full(len(values[p]), i + dx), values[p], s=8, color=colour, alpha=0.5)
        medians = [res[grid]["median"][key][p] for p in PROPERTIES]
        ax.scatter(x + dx, medians, marker="_", s=300, color=colour, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x, PROPERTIES, rotation=20)
    ax.set_ylabel("scatter over realisations / reported error")
    ax.set_title("--method fit: errors against Monte Carlo (one point per base spectrum)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="fit")
    ap.add_argument("--bases", type=int, default=16)
    ap.add_argument("--realisations", type=int, default=100)
    ap.add_argument("--snr", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, default=Path("fit_errors.json"))
    args = ap.parse_args(argv)
    report = record(
        "fit_errors",
        argv,
        options={"model": args.model, "bases": args.bases, "realisations": args.realisations, "snr": args.snr},
        result=check(args.model, args.bases, args.realisations, args.snr, args.seed),
    )
    write_record(report, args.json, markdown, figure)


if __name__ == "__main__":
    main()
