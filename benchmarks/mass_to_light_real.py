"""The fit's M/L in r on the real spectra of the scoreboard against M/L from the pPXF set-ups' weights.

    survey-proc bench --real --json benchmarks/results/real.json          # writes the maps it reads
    python -m benchmarks.mass_to_light_real --json benchmarks/results/mass_to_light_real.json

For every spectrum of the real-data scoreboard (SDSS, MaNGA, MUSE bins) the pPXF set-ups' light
fractions become M/L in r through pPXF's own route to L_r (``ppxf_util.synthetic_photometry`` with its
SDSS/r curve and its spectrum of the Sun, independent of ``ssp.band_luminosity``); the fit's
``mass_to_light_r`` is scored against the range of the set-ups in units of its reported error.
Writes JSON and Markdown.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc.ssp import LIGHT_WINDOW, load_ssp_library

SETS = {
    "sdss": (["fit", "fit-7100"], ["ppxf", "ppxf-mpoly", "ppxf-7100", "ppxf-7100-mpoly"]),
    "manga": (["fit", "fit-7100"], ["ppxf", "ppxf-mpoly", "ppxf-7100", "ppxf-7100-mpoly"]),
    "muse": (["fit-7100"], ["ppxf-7100", "ppxf-7100-mpoly"]),
}


def ppxf_ratios() -> tuple[np.ndarray, np.ndarray]:
    """(mass, r-band light) per unit window light of every E-MILES SSP, (age, metal), L_r by pPXF's route."""
    from ppxf import ppxf_util

    lib = load_ssp_library()
    spectra = lib.flux.reshape(-1, lib.wave.size).T.astype(np.float64)
    ssp = ppxf_util.synthetic_photometry(lib.wave, spectra, "SDSS/r", quiet=True).flux
    sun = np.load(importlib.resources.files("ppxf") / "sps_models/spectra_sun_vega.npz")
    sun_r = ppxf_util.synthetic_photometry(sun["lam"], sun["flux_sun"], "SDSS/r", quiet=True).flux
    lr = (ssp * 3.828e33 / (4 * np.pi * 3.085677581491367e19**2) / sun_r).reshape(lib.mass.shape)
    window = lib.light_in_window(LIGHT_WINDOW)
    return (lib.mass / window).T, (lr / window).T


def score(scratch: Path) -> list[dict]:
    ml, lr = ppxf_ratios()
    rows = []
    for name, (fits, setups) in SETS.items():
        refs = []
        for setup in setups:
            w = xr.open_zarr(scratch / f"{name}-{setup}.maps.zarr")["weights"].values
            refs.append((w * ml).sum((-2, -1)) / (w * lr).sum((-2, -1)))
        with np.errstate(all="ignore"):
            lo, hi = np.nanmin(refs, 0), np.nanmax(refs, 0)
        for fit in fits:
            m = xr.open_zarr(scratch / f"{name}-{fit}.maps.zarr")
            v, e, flag = m.mass_to_light_r.values, m.mass_to_light_r_err.values, m.flag.values
            for i in np.flatnonzero(np.isfinite(v) & np.isfinite(lo)):
                pull = max(lo[i] - v[i], v[i] - hi[i], 0.0) / e[i]
                rows.append(
                    {
                        "set": name,
                        "object": int(i),
                        "estimator": fit,
                        "value": float(v[i]),
                        "error": float(e[i]),
                        "flag": int(flag[i]),
                        "ppxf": [float(lo[i]), float(hi[i])],
                        "pull": float(pull),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scratch", type=Path, default=Path("benchmarks/results/real.scratch"))
    p.add_argument("--json", type=Path, default=Path("mass_to_light_real.json"))
    a = p.parse_args(argv)
    rows = score(a.scratch)
    a.json.write_text(json.dumps(rows, indent=1) + "\n")
    within = sum(r["pull"] <= 2 or r["flag"] != 0 for r in rows)
    lines = [
        "# The fit's M/L in r on real spectra against the pPXF set-ups' weights",
        "",
        f"`python -m benchmarks.mass_to_light_real` after `survey-proc bench --real`: {within} of {len(rows)} "
        "within twice the reported error of the set-ups' range or flagged. pull = distance from the range / error.",
        "",
        "| set | object | estimator | M/L_r (M☉/L☉,r) | flag | pPXF set-ups | pull |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['set']} | {r['object']} | {r['estimator']} | {r['value']:.2f} ± {r['error']:.2f} | {r['flag']} | "
        f"{r['ppxf'][0]:.2f} .. {r['ppxf'][1]:.2f} | {r['pull']:.1f} |"
        for r in rows
    ]
    a.json.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"{within} of {len(rows)} within 2 sigma or flagged; wrote {a.json} and {a.json.with_suffix('.md')}")
    return rows


if __name__ == "__main__":
    main()
