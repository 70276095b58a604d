"""The SDSS model against pPXF on real SDSS spectra (the three shipped in ppxf/spectra/).

    python benchmarks/sdss_real.py --model sdss-cnn --json benchmarks/results/sdss_real.json

1. ingests the real spectra into a catalogue store (``survey-proc ingest-spectra``);
2. runs the model through the engine (``survey-proc run``, LocalCluster);
3. fits each spectrum with pPXF (``pip install survey-proc[ppxf]``) over the same observed range,
   with the same E-MILES library normalised in the same light window (so weights are the same light
   fractions as the model's labels), templates broadened to the SDSS resolution of each spectrum,
   Calzetti reddening (E(B-V) = A_V / 4.05), no polynomials, gas lines masked (800 km/s);
4. writes the numbers side by side as JSON and a PNG (spectra with the pPXF fit; model vs pPXF).

This direct pPXF fit is a stand-in until the pPXF estimator (issue 4) runs behind the engine; the
fit set-up is stated in the JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from survey_proc.figures import save_figure

C_KMS = 299792.458
PROPS = ("log_age", "metallicity", "ebv", "sigma")


def ppxf_fit(
    wave_vac: np.ndarray,
    flux: np.ndarray,
    var: np.ndarray,
    bad: np.ndarray,
    z: float,
    lsf_fwhm: np.ndarray,
    lib,
    wave_range: tuple[float, float] = (3800.0, 8900.0),
) -> dict:
    """Light-weighted log age, [M/H], E(B-V) and sigma of one observed-frame spectrum by pPXF."""
    from ppxf import ppxf_util
    from ppxf.ppxf import ppxf

    from survey_proc.ssp import LIGHT_WINDOW, match_lsf, vacuum_to_air

    sel = (wave_vac >= wave_range[0]) & (wave_vac <= wave_range[1])
    lam = vacuum_to_air(wave_vac[sel]) / (1 + z)  # rest frame, air (like E-MILES)
    fwhm_rest = lsf_fwhm[sel] / (1 + z)
    gal, var, bad = flux[sel], var[sel], bad[sel] | ~np.isfinite(flux[sel]) | ~(var[sel] > 0)
    # every pixel's wavelength is given: the data may be log-sampled (SDSS) or not
    gal_ln, ln_lam, velscale = ppxf_util.log_rebin(lam, np.where(bad, 0, gal))
    noise_ln = np.sqrt(ppxf_util.log_rebin(lam, np.where(bad, np.nanmedian(var), var))[0])
    bad_ln = ppxf_util.log_rebin(lam, bad.astype(float))[0] > 0
    scale = np.nanmedian(gal_ln[~bad_ln])
    gal_ln, noise_ln = gal_ln / scale, noise_ln / scale

    lo, hi = lam[0] / 1.02 - 50, lam[-1] * 1.02 + 50
    tsel = (lib.wave >= lo) & (lib.wave <= hi)
    twave = lib.wave[tsel]
    fwhm_t = np.interp(twave, lam, fwhm_rest)
    light = lib.light_in_window(LIGHT_WINDOW)  # same normalisation as the labels
    temps = lib.flux[..., tsel].reshape(-1, twave.size) / light.reshape(-1, 1)
    temps = match_lsf(twave, temps, lib.fwhm, fwhm_t)
    temps_ln, ln_lam_t, _ = ppxf_util.log_rebin([twave[0], twave[-1]], temps.T, velscale=velscale)
    goodpix = ppxf_util.determine_mask(ln_lam, [twave[0], twave[-1]], redshift=0.0, width=800) & ~bad_ln
    t0 = time.perf_counter()
    pp = ppxf(
        temps_ln,
        gal_ln,
        noise_ln,
        velscale,
        start=[0.0, 180.0],
        moments=2,
        degree=-1,
        mdegree=-1,
        reddening=0.1,
        lam=np.exp(ln_lam),
        lam_temp=np.exp(ln_lam_t),
        mask=goodpix,
        quiet=True,
    )
    seconds = time.perf_counter() - t0
    w = pp.weights.reshape(lib.metal.size, lib.log_age.size)
    w = w / w.sum()
    return {
        "log_age": float((w.sum(axis=0) * lib.log_age).sum()),
        "metallicity": float((w.sum(axis=1) * lib.metal).sum()),
        "ebv": float(pp.reddening / 4.05),
        "av": float(pp.reddening),
        "sigma": float(pp.sol[1]),
        "velocity": float(pp.sol[0]),
        "chi2": float(pp.chi2),
        "seconds": seconds,
        "fit": {
            "wave": np.exp(ln_lam).tolist(),
            "galaxy": np.where(bad_ln, np.nan, gal_ln).tolist(),
            "bestfit": pp.bestfit.tolist(),
            "good": goodpix.tolist(),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sdss-cnn")
    p.add_argument("--json", default="benchmarks/results/sdss_real.json")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    import xarray as xr

    from survey_proc.engine import RunConfig, run
    from survey_proc.ssp import load_ssp_library
    from survey_proc.stores import ingest_sdss_spectra, open_spectral_store, sdss_spectra

    out_json = Path(args.json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sdss_real_"))
    files = sdss_spectra()
    ingest_sdss_spectra(files, work / "sdss.zarr", chunk=2)
    summary = run(
        RunConfig(
            cube=str(work / "sdss.zarr"),
            out=str(work / "maps.zarr"),
            model=args.model,
            workers=args.workers,
            progress=False,
        )
    )
    maps = xr.open_zarr(work / "maps.zarr")
    cat = open_spectral_store(work / "sdss.zarr")
    lib = load_ssp_library()
    wave = cat.wave.values
    lsf = cat.lsf_fwhm.values
    rows = []
    for i in range(cat.sizes["object"]):
        fit = ppxf_fit(
            wave,
            cat.flux.values[i].astype(float),
            cat["var"].values[i].astype(float),
            cat["mask"].values[i],
            float(cat.redshift.values[i]),
            lsf,
            lib,
        )
        model = {k: float(maps[k].values[i]) for k in PROPS}
        model_err = {k: float(maps[f"{k}_err"].values[i]) for k in PROPS}
        rows.append(
            {
                "object": str(cat.object_name.values[i]),
                "file": str(cat.source_file.values[i]),
                "redshift": float(cat.redshift.values[i]),
                "snr": float(maps.snr.values[i]),
                "flag": int(maps.flag.values[i]),
                "model": model,
                "model_err": model_err,
                "ppxf": {k: v for k, v in fit.items() if k != "fit"},
                "model_minus_ppxf": {k: model[k] - fit[k] for k in PROPS},
                "_fit": fit["fit"],
            }
        )
        print(
            f"{rows[-1]['object']} ({rows[-1]['file']}, z={rows[-1]['redshift']:.4f}, S/N {rows[-1]['snr']:.0f}): "
            + "  ".join(f"{k} {model[k]:.3f}+-{model_err[k]:.3f} vs pPXF {fit[k]:.3f}" for k in PROPS)
        )
    result = {
        "model": summary.model_id,
        "engine": {"spectra": summary.spectra, "seconds": summary.seconds, "verified": summary.verified},
        "ppxf_setup": (
            "ppxf " + __import__("ppxf").__version__ + ": 150 E-MILES SSPs (light-window normalised), "
            "broadened to the store's lsf_fwhm / (1+z), observed 3800-8900 A, vacuum->air, "
            "moments=2, degree=-1, mdegree=-1, Calzetti reddening, gas lines masked (800 km/s), regul=0"
        ),
        "objects": [{k: v for k, v in r.items() if k != "_fit"} for r in rows],
        "mean_difference": {k: float(np.mean([r["model_minus_ppxf"][k] for r in rows])) for k in PROPS},
    }
    out_json.write_text(json.dumps(result, indent=2))
    _plot(rows, out_json.with_suffix(".png"))
    print(f"numbers: {out_json}\nfigure: {out_json.with_suffix('.png')}")
    return result


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 3.0 * len(rows) + 3))
    gs = fig.add_gridspec(len(rows) + 1, 4)
    for i, r in enumerate(rows):
        ax = fig.add_subplot(gs[i, :])
        f = r["_fit"]
        ax.plot(f["wave"], f["galaxy"], "k-", lw=0.5, label="SDSS spectrum (rest frame, air)")
        ax.plot(f["wave"], f["bestfit"], "r-", lw=0.6, label="pPXF fit")
        good = np.asarray(f["good"])
        w = np.asarray(f["wave"])
        ax.plot(w[~good], np.asarray(f["galaxy"])[~good], "b.", ms=1, label="masked")
        ax.set_title(f"{r['object']} ({r['file']}), z = {r['redshift']:.4f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    for j, k in enumerate(PROPS):
        ax = fig.add_subplot(gs[len(rows), j])
        x = np.arange(len(rows))
        ax.errorbar(
            x - 0.1, [r["model"][k] for r in rows], [r["model_err"][k] for r in rows], fmt="o", label="sdss-cnn"
        )
        ax.plot(x + 0.1, [r["ppxf"][k] for r in rows], "s", label="pPXF")
        ax.set_xticks(x, [r["object"] for r in rows], rotation=20, fontsize=7)
        ax.set_title(k)
        if j == 0:
            ax.legend(fontsize=7)
    save_figure(fig, path, dpi=90)


if __name__ == "__main__":
    main()
