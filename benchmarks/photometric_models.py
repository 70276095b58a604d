"""Accuracy of the packaged photometric models on new mock galaxies, through the engine, and the
radial gradients they recover.

    python benchmarks/photometric_models.py --galaxies 12 --json benchmarks/results/photometric_models.json

For each of N new galaxies (parameters drawn like the training sets, seeds never used in training):
writes mock photometry (J-PAS-like 36 bands for ``narrowband``, ugriz images for ``ugriz-maps``),
runs the model with ``survey-proc run``'s engine, and records bias and robust scatter against the
truth by S/N bin (pixels with flag == 0), and each property's gradient within R_e for the model and
for the truth maps (same geometry, ``survey-proc gradients``' code). Writes JSON and two PNGs
(``*_accuracy.png``: scatter by S/N bin; ``*_gradients.png``: model vs truth gradients).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from survey_proc.figures import save_figure

MODELS = {
    "narrowband": {
        "filters": "jpas36",
        "size": 32,
        "pixel_scale": 0.2,
        "psf": 0.0,
        "snr": (1.0, 20.0),
        "properties": ("log_age", "metallicity"),
    },
    "ugriz-maps": {
        "filters": "sdss",
        "size": 48,
        "pixel_scale": 0.396,
        "psf": 2.5,
        "snr": (0.3, 6.0),
        "properties": ("log_mass_surface_density", "log_age", "metallicity"),
    },
}
SNR_BINS = (3.0, 5.0, 10.0, 20.0, 50.0, 1e9)


def evaluate(model: str, n: int, work: Path, seed: int, cluster: str) -> dict:
    import xarray as xr

    from survey_proc.analysis import gradient_report
    from survey_proc.engine import RunConfig, run
    from survey_proc.ssp import load_filters, load_ssp_library
    from survey_proc.stores import robust_sigma
    from survey_proc.synth import write_mock_photometry
    from survey_proc.training import GalaxySetConfig, draw_mock_config

    spec = MODELS[model]
    lib = load_ssp_library()
    filters = load_filters(spec["filters"])
    gcfg = GalaxySetConfig(
        size=spec["size"], pixel_scale_arcsec=spec["pixel_scale"], psf_fwhm_pixels=spec["psf"], snr_range=spec["snr"]
    )
    rng = np.random.default_rng([seed, 424242])  # not a seed of any training set
    diffs = {p: [] for p in spec["properties"]}
    snrs, galaxies = [], []
    t0 = time.perf_counter()
    for g in range(n):
        mc = draw_mock_config(rng, gcfg)
        mc.chunk = 16
        path = work / f"{model}-{g}.zarr"
        write_mock_photometry(path, mc, filters, lib)
        maps_path = work / f"{model}-{g}.maps.zarr"
        run(RunConfig(cube=str(path), out=str(maps_path), model=model, cluster=cluster, progress=False, overwrite=True))
        maps, truth = xr.open_zarr(maps_path), xr.open_zarr(path, group="truth")
        good = maps.flag.values == 0
        snrs.append(maps.snr.values[good])
        for p in spec["properties"]:
            diffs[p].append((maps[p].values - truth[p].values)[good])
        rep = gradient_report(maps_path, compare="truth", out_dir=work, properties=spec["properties"]).to_json()
        galaxies.append(
            {
                "seed": mc.seed,
                "snr_per_angstrom": mc.snr,
                "inclination": mc.inclination,
                "r_e": rep["geometry"]["r_e_pixels"],
                "good_fraction": float(good.mean()),
                "gradients": rep["gradients"],
                "truth_gradients": rep["compare"]["gradients"],
                "differences": rep["compare"]["differences"],
                "input_gradients": rep["compare"].get("input_gradients_per_r_e"),
            }
        )
    snr = np.concatenate(snrs)
    by_bin = {}
    for lo, hi in itertools.pairwise(SNR_BINS):
        sel = (snr >= lo) & (snr < hi)
        if sel.sum() < 20:
            continue
        label = f"{lo:g}-{hi:g}" if hi < 1e8 else f">{lo:g}"
        by_bin[label] = {
            "n": int(sel.sum()),
            **{
                p: {
                    "bias": float(np.median(np.concatenate(d)[sel])),
                    "robust_sigma": robust_sigma(np.concatenate(d)[sel]),
                }
                for p, d in diffs.items()
            },
        }
    sel = snr >= SNR_BINS[0]
    by_bin["all"] = {
        "n": int(sel.sum()),
        **{
            p: {"bias": float(np.median(np.concatenate(d)[sel])), "robust_sigma": robust_sigma(np.concatenate(d)[sel])}
            for p, d in diffs.items()
        },
    }
    grads = {}
    for p in spec["properties"]:
        rows = [gal["differences"][p] for gal in galaxies if p in gal["differences"]]
        if rows:
            n_sigma = np.array([r["n_sigma"] for r in rows])
            diff = np.array([r["difference"] for r in rows])
            grads[p] = {
                "galaxies_fitted": len(rows),
                "median_difference": float(np.median(diff)),
                "robust_sigma_difference": robust_sigma(diff),
                "fraction_within_1sigma": float(np.mean(n_sigma < 1)),
                "fraction_within_2sigma": float(np.mean(n_sigma < 2)),
            }
    return {
        "model": model,
        "galaxies": n,
        "seconds": time.perf_counter() - t0,
        "accuracy_by_snr": by_bin,
        "gradient_recovery": grads,
        "per_galaxy": galaxies,
    }


def plot(result: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = result["model"]
    props = list(result["gradient_recovery"])
    fig, axes = plt.subplots(1, len(props), figsize=(4.3 * len(props), 4), squeeze=False)
    for ax, p in zip(axes[0], props):
        rows = [
            (g["truth_gradients"][p], g["gradients"][p])
            for g in result["per_galaxy"]
            if g["gradients"].get(p) and g["truth_gradients"].get(p)
        ]
        t = np.array([r[0]["slope"] for r in rows])
        m = np.array([r[1]["slope"] for r in rows])
        te = np.array([r[0]["slope_err"] for r in rows])
        me = np.array([r[1]["slope_err"] for r in rows])
        ax.errorbar(t, m, xerr=te, yerr=me, fmt="o", ms=4)
        lim = [min(t.min(), m.min()) - 0.05, max(t.max(), m.max()) + 0.05]
        ax.plot(lim, lim, "k--", lw=1)
        r = result["gradient_recovery"][p]
        ax.set_title(f"{p}: {r['fraction_within_2sigma']:.0%} within 2 sigma", fontsize=9)
        ax.set_xlabel("gradient of the truth maps [per R_e]")
        ax.set_ylabel(f"gradient from {model} [per R_e]")
    fig.suptitle(f"{model}: radial gradients within R_e of {result['galaxies']} new mock galaxies", fontsize=10)
    g_png = out / f"{model}_gradients.png"
    save_figure(fig, g_png, dpi=90)

    bins = [b for b in result["accuracy_by_snr"] if b != "all"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in props:
        ax.plot(bins, [result["accuracy_by_snr"][b][p]["robust_sigma"] for b in bins], "o-", label=f"{p} robust sigma")
        ax.plot(bins, [result["accuracy_by_snr"][b][p]["bias"] for b in bins], "x:", label=f"{p} bias")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("median S/N per band")
    ax.set_ylabel("model - truth [dex]")
    ax.legend(fontsize=7)
    ax.set_title(f"{model} on {result['galaxies']} new mock galaxies (pixels with flag = 0)", fontsize=9)
    a_png = out / f"{model}_accuracy.png"
    save_figure(fig, a_png, dpi=90)
    return [str(g_png), str(a_png)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--galaxies", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cluster", default="none", help="engine cluster per run (none: in process)")
    parser.add_argument("--json", default="benchmarks/results/photometric_models.json")
    args = parser.parse_args(argv)
    out = Path(args.json).parent
    out.mkdir(parents=True, exist_ok=True)
    from throughput import machine

    results = {"machine": machine(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            res = evaluate(model, args.galaxies, Path(tmp), args.seed, args.cluster)
            res["figures"] = plot(res, out)
            results["models"][model] = res
            print(
                json.dumps({k: res[k] for k in ("model", "accuracy_by_snr", "gradient_recovery", "figures")}, indent=1)
            )
    Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {args.json}")
    return results


if __name__ == "__main__":
    main()
