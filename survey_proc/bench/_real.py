"""``survey-proc bench --real``: every applicable estimator on real spectra nobody here made, scored
against the range of pPXF set-ups and published values.

Sets (fetched from the package registry, pinned and cached, like every example):

- ``sdss``: the three SDSS spectra shipped in ppxf (NGC 3073, 3522, 4636), ingested as a catalogue;
  published values from pPXF's own reference output (ppxf 8.2.6's ``examples/ppxf_python_reference_
  output.txt``: its kinematics and population examples on these spectra).
- ``manga``: the eight real MaNGA spaxels in the sdss-mangadap 4.5.0 wheel (``MaNGA_test_spectra.fits.gz``,
  seven galaxies, z = 0.017-0.050), ingested with ``survey-proc ingest-spectra`` (the spectral resolution
  from ``SRES``); published values: the MaNGA DAP's own stellar sigma for them (its ``test_ppxffit.py``,
  corrected for the resolution difference as the DAP does: sqrt(sigma^2 - SIGMACORR_SRES^2), +- its error).
- ``muse``: the real MUSE minicube shipped in mpdaf (Abell 478's central galaxy, z = 0.086), Voronoi-
  binned to S/N 12 per Angstrom with correlated spaxels (``survey-proc bin``; 900 s of MUSE: the whole
  galaxy reaches S/N 24 together); at that redshift the 4750-8800 A models are out of
  range (flagged), the 4750-7100 A ones fit.

The photometric model ``narrowband`` runs on the synthetic J-PAS photometry of the SDSS and MaNGA
spectra (``survey-proc photometry``; each object at its own redshift), against the same references.
Each estimator runs through the engine (a LocalCluster, as ``survey-proc run``); pPXF runs in several
set-ups (Calzetti dust and no polynomial, a multiplicative polynomial and no dust, the shorter range).
A pair (object, property) of an estimator *agrees* when its value lies within twice its reported error
of the reference range (the pPXF set-ups' spread and the published values), and passes when it agrees
or carries a flag. Issue 17's acceptance: >= 85 % of the pairs pass, with >= 70 % of objects unflagged.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc.estimators import load_manifest

log = logging.getLogger(__name__)

PROPS = ("log_age", "metallicity", "av", "sigma", "velocity")
#: Calzetti (2000): A_V = R_V E(B-V), to compare models that give E(B-V)
R_V = 4.05

#: published pPXF values on the SDSS spectra (ppxf 8.2.6 examples/ppxf_python_reference_output.txt):
#: the kinematics example (NGC 4636, h3/h4, additive degree 20), the population example with gas
#: (NGC 3522, two set-ups) and the population-and-photometry example (NGC 3073, three set-ups)
SDSS_PUBLISHED = {
    "NGC4636": {"sigma": (224.0, 224.0)},
    "NGC3522": {"sigma": (102.0, 102.0), "log_age": (9.87, 9.88), "metallicity": (0.0266, 0.0305)},
    "NGC3073": {
        "sigma": (18.0, 28.0),
        "av": (0.609, 0.959),
        "log_age": (8.55, 8.88),
        "metallicity": (-0.494, -0.314),
    },
}
SDSS_SOURCE = "pPXF reference output (ppxf 8.2.6 examples)"


#: the MaNGA DAP's stellar sigma for the 8 test spaxels (mangadap 4.5.0 tests/test_ppxffit.py): KIN sigma,
#: its KINERR and SIGMACORR_SRES; spaxel 5 is NO_FIT there (None)
MANGA_DAP_KIN = [
    (292.9, 1.9, 23.5), (123.2, 1.7, 10.1), (236.4, 2.4, 27.3), (169.7, 2.3, 38.7),
    (202.7, 1.1, 22.3), None, (63.8, 30.8, 63.8), (51.8, 7.5, 23.8),
]  # fmt: skip
MANGA_SOURCE = "MaNGA DAP (mangadap 4.5.0 test_ppxffit.py, sigma corrected for SRES)"


def manga_published() -> dict[str, dict[str, tuple[float, float]]]:
    """Per spaxel, the DAP's resolution-corrected sigma +- its error."""
    out = {}
    for i, kin in enumerate(MANGA_DAP_KIN):
        if kin is not None:
            sigma, err, corr = kin
            corrected = float(np.sqrt(max(sigma**2 - corr**2, 0.0)))
            out[f"manga{i}"] = {"sigma": (max(corrected - err, 0.0), corrected + err)}
    return out


@dataclass
class RealSet:
    """A set of real spectra as a store, what runs on it, and the published values it is compared with."""

    name: str
    store: Path
    objects: list[str]
    estimators: list[str]  #: bundle names or paths scored
    ppxf: list[str]  #: pPXF set-ups (bundle paths) giving the reference range
    published: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    source: str = ""
    photometric: list[str] = field(default_factory=list)  #: models run on the spectra's synthetic photometry


@dataclass
class Estimate:
    """One estimator's numbers for a set: (objects,) values, errors (NaN where none) and flags."""

    values: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]
    flags: np.ndarray
    model_id: str
    #: the rebuilt spectrum's ``chi2`` and ``chi2_floor`` (objects,), for estimators that return them
    fit_quality: dict[str, np.ndarray] = field(default_factory=dict)


def ppxf_setups(work: Path) -> dict[str, str]:
    """The pPXF set-ups as bundles (copies of the packaged configurations with other options)."""
    out = {}
    for name, base, options in (
        ("ppxf", "ppxf", {}),
        ("ppxf-mpoly", "ppxf", {"reddening": None, "mdegree": 8}),
        ("ppxf-7100", "ppxf-7100", {}),
        ("ppxf-7100-mpoly", "ppxf-7100", {"reddening": None, "mdegree": 8}),
    ):
        raw = json.loads(load_manifest(base).path.read_text())
        raw["name"] = name
        raw["ppxf"] = {**raw.get("ppxf", {}), **options}
        if options.get("reddening", 0) is None:
            raw["outputs"].pop("av", None)
        folder = work / "bundles" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").write_text(json.dumps(raw, indent=1))
        out[name] = str(folder)
    return out


#: the packaged estimators scored on every set they apply to
SCORED = [
    "default",
    "muse-7100",
    "muse-av3",
    "muse-recon",
    "muse-mix",
    "muse-mix-recon",
    "muse-mix-recon-k5-distil",
    "sdss-cnn",
    "fit",
    "fit-7100",
    "fit-mpoly",
]
#: what an estimator that rebuilds its spectra says of the match (the fit, muse-recon, muse-mix-recon)
FIT_QUALITY = ("chi2", "chi2_floor")
#: the packaged photometric models scored on the synthetic photometry of sets whose spectra cover their
#: bands (SDSS, MaNGA: 3600-9000 A and more; the MUSE minicube starts at 4750 A, too red for J-PAS's blue)
PHOTOMETRIC = ["narrowband"]


def sdss_set(work: Path, setups: dict[str, str]) -> RealSet:
    """The three SDSS spectra of ppxf as a catalogue store."""
    from survey_proc.stores import ingest_sdss_spectra, sdss_spectra

    store = work / "sdss.zarr"
    if not store.exists():
        ingest_sdss_spectra([str(p) for p in sdss_spectra()], str(store))
    files = [str(n) for n in xr.open_zarr(store)["source_file"].values]
    return RealSet(
        "sdss",
        store,
        [f.split("_")[0] for f in files],
        SCORED,
        list(setups.values()),
        SDSS_PUBLISHED,
        SDSS_SOURCE,
        PHOTOMETRIC,
    )


def manga_set(work: Path, setups: dict[str, str]) -> RealSet:
    """The eight MaNGA spaxels of the DAP's tests as a catalogue store."""
    from survey_proc.stores import ingest_spectra_fits, manga_spectra

    store = work / "manga.zarr"
    if not store.exists():
        ingest_spectra_fits(manga_spectra(), store)
    n = xr.open_zarr(store).sizes["object"]
    return RealSet(
        "manga",
        store,
        [f"manga{i}" for i in range(n)],
        SCORED,
        list(setups.values()),
        manga_published(),
        MANGA_SOURCE,
        PHOTOMETRIC,
    )


#: the covariance of MUSE's resampled spaxels in co-added bins (CALIFA's value, Garcia-Benito et al.
#: 2015): without it the binned variance is several times too small and every fit's chi^2 is 3-12
MUSE_COVARIANCE_ALPHA = 1.07


def muse_set(work: Path, setups: dict[str, str], target_snr: float = 12.0) -> RealSet:
    """The mpdaf minicube, ingested and Voronoi-binned (a catalogue of bins) with correlated noise."""
    from survey_proc.binning import BinConfig, bin_cube
    from survey_proc.stores import MINICUBE_REDSHIFT, ingest_muse_fits, muse_minicube

    cube, bins = work / "minicube.zarr", work / "minicube-bins.zarr"
    if not cube.exists():
        ingest_muse_fits(muse_minicube(), cube, redshift=MINICUBE_REDSHIFT)
    if not bins.exists():
        bin_cube(cube, bins, BinConfig(target_snr=target_snr, covariance_alpha=MUSE_COVARIANCE_ALPHA))
    n = xr.open_zarr(bins).sizes["object"]
    return RealSet(
        "muse",
        bins,
        [f"bin{i}" for i in range(n)],
        [m for m in SCORED if m != "sdss-cnn"],  # MUSE starts at 4750 A; sdss-cnn reads 3800-8900 A
        [setups["ppxf-7100"], setups["ppxf-7100-mpoly"]],
    )


def _map_variable(prop: str, names) -> tuple[str, float]:
    """The maps variable that gives ``prop`` among ``names`` and the factor to it: A_V from E(B-V) x R_V
    where a model gives E(B-V) only."""
    return (prop, 1.0) if prop in names or prop != "av" else ("ebv", R_V)


def run_estimator(rs: RealSet, model: str, work: Path, client) -> Estimate:
    """One estimator over a set through the engine; its values, errors and flags per object."""
    from survey_proc.engine import RunConfig, run
    from survey_proc.errors import CoverageError
    from survey_proc.stores import Flag

    out = work / f"{rs.name}-{Path(model).name}.maps.zarr"
    shutil.rmtree(out, ignore_errors=True)
    try:
        s = run(RunConfig(cube=str(rs.store), out=str(out), model=model, cluster=_cluster(client), progress=False))
    except CoverageError as exc:  # the model's range is not covered: as if every object were flagged so
        log.info(f"  {Path(model).name} on {rs.name}: {exc}")
        manifest = load_manifest(model)
        gives = [p for p in PROPS if _map_variable(p, manifest.output_names)[0] in manifest.output_names]
        nan = np.full(len(rs.objects), np.nan)
        flags = np.full(len(rs.objects), int(Flag.OUT_OF_RANGE))
        return Estimate({p: nan for p in gives}, {p: nan for p in gives}, flags, manifest.model_id)
    maps = xr.open_zarr(out)
    values, errors = {}, {}
    for p in PROPS:
        name, scale = _map_variable(p, maps)
        if name in maps:
            values[p] = maps[name].values.astype(float) * scale
            err = maps.get(f"{name}_err")
            errors[p] = err.values.astype(float) * scale if err is not None else np.full(values[p].shape, np.nan)
    quality = {k: maps[k].values.astype(float) for k in FIT_QUALITY if k in maps}
    return Estimate(values, errors, maps["flag"].values.astype(int), s.model_id, quality)


def rebuilt_spectra(estimates: dict[str, Estimate]) -> dict[str, dict]:
    """Per estimator that rebuilds its spectra: its ``chi2`` and ``chi2_floor`` per object (NaN: not
    fitted) and how many objects are ``poor_fit``."""
    from survey_proc.stores import Flag

    return {
        Path(model).name: {
            **{k: v.tolist() for k, v in est.fit_quality.items()},
            "poor_fit": int(((est.flags & int(Flag.POOR_FIT)) != 0).sum()),
        }
        for model, est in estimates.items()
        if est.fit_quality
    }


def photometric_estimate(rs: RealSet, model: str, work: Path, client) -> Estimate:
    """``model`` (a photometric one) on the synthetic photometry of the set's spectra through the
    model's filters (``survey-proc photometry``, made once into ``work``), each object at its redshift."""
    from survey_proc.ssp import load_filters
    from survey_proc.synth import photometry_from_store

    filters = load_manifest(model).input.filter_set
    phot = work / f"{rs.name}-{filters}.zarr"
    if not phot.exists():
        photometry_from_store(rs.store, load_filters(filters), phot, cluster=_cluster(client))
    return run_estimator(replace(rs, store=phot), model, work, client)


def _cluster(client) -> str:
    """The ``cluster`` option that runs on ``client`` (``none``: in this process)."""
    return client.scheduler.address if client is not None else "none"


def reference_ranges(rs: RealSet, ppxf: dict[str, Estimate]) -> dict[str, dict[str, tuple[float, float, list]]]:
    """Per object and property: (low, high, sources) over the unflagged pPXF set-ups and published values."""
    out: dict[str, dict[str, tuple[float, float, list]]] = {}
    for i, obj in enumerate(rs.objects):
        out[obj] = {}
        for p in PROPS:
            vals, srcs = [], []
            for name, est in ppxf.items():
                if p in est.values and est.flags[i] == 0 and np.isfinite(est.values[p][i]):
                    vals.append(float(est.values[p][i]))
                    srcs.append(Path(name).name)
            if p in rs.published.get(obj, {}):
                vals += list(rs.published[obj][p])
                srcs.append(rs.source)
            if vals:
                out[obj][p] = (min(vals), max(vals), srcs)
    return out


def score(rs: RealSet, estimates: dict[str, Estimate], refs) -> list[dict]:
    """One row per (object, property, estimator): value, error, flag, reference range, pass or not."""
    rows = []
    for model, est in estimates.items():
        for i, obj in enumerate(rs.objects):
            for p in PROPS:
                if p not in est.values or p not in refs.get(obj, {}):
                    continue
                lo, hi, srcs = refs[obj][p]
                v, e, flag = float(est.values[p][i]), float(est.errors[p][i]), int(est.flags[i])
                off = abs(v - min(max(v, lo), hi)) if np.isfinite(v) else np.inf
                pull = off / e if np.isfinite(e) and e > 0 else (0.0 if off == 0 else np.inf)
                agrees = bool(np.isfinite(v) and pull <= 2.0)
                rows.append(
                    {
                        "set": rs.name, "object": obj, "property": p, "estimator": Path(model).name,
                        "model_id": est.model_id, "value": v, "error": e, "flag": flag, "ref_low": lo,
                        "ref_high": hi, "ref_sources": srcs, "pull": pull, "agrees": agrees,
                        "passes": bool(agrees or flag != 0),
                    }
                )  # fmt: skip
    return rows


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per estimator: pairs, the fraction that pass (agree or flagged), that agree, objects unflagged."""
    out: dict[str, dict] = {}
    for model in sorted({r["estimator"] for r in rows}):
        mine = [r for r in rows if r["estimator"] == model]
        objects = {(r["set"], r["object"]): r["flag"] for r in mine}
        out[model] = {
            "pairs": len(mine),
            "pass_fraction": float(np.mean([r["passes"] for r in mine])) if mine else float("nan"),
            "agree_fraction": float(np.mean([r["agrees"] for r in mine])) if mine else float("nan"),
            "objects": len(objects),
            "unflagged_fraction": float(np.mean([f == 0 for f in objects.values()])) if objects else float("nan"),
        }
        out[model]["acceptance"] = bool(out[model]["pass_fraction"] >= 0.85 and out[model]["unflagged_fraction"] >= 0.7)
    return out


@dataclass
class RealReport:
    """What ``survey-proc bench --real`` writes as JSON."""

    sets: dict[str, dict]
    summary: dict[str, dict]
    rows: list[dict]
    definition: str = (
        "a pair (object, property) of an estimator agrees when its value is within 2 reported errors of the "
        "reference range (the unflagged pPXF set-ups and the published values), and passes when it agrees or "
        "carries a flag; acceptance (issue 17): >= 85 % of pairs pass and >= 70 % of objects are unflagged"
    )

    def to_json(self) -> dict:
        return asdict(self)


def run_real(
    work: Path, json_path: Path, workers: int = 2, sets: tuple[str, ...] = ("sdss", "manga", "muse")
) -> RealReport:
    """Every set: the pPXF set-ups, every applicable estimator, the scores; JSON + Markdown + PNG."""
    from survey_proc.bench._timing import bench_cluster

    work.mkdir(parents=True, exist_ok=True)
    setups = ppxf_setups(work)
    builders = {"sdss": sdss_set, "manga": manga_set, "muse": muse_set}
    all_rows: list[dict] = []
    per_set: dict[str, dict] = {}
    with bench_cluster(workers) as client:
        for name in sets:
            rs = builders[name](work, setups)
            log.info(f"  {name}: {len(rs.objects)} objects in {rs.store}")
            ppxf = {m: run_estimator(rs, m, work, client) for m in rs.ppxf}
            refs = reference_ranges(rs, ppxf)
            estimates = {m: run_estimator(rs, m, work, client) for m in rs.estimators}
            estimates |= {m: photometric_estimate(rs, m, work, client) for m in rs.photometric}
            rows = score(rs, estimates, refs)
            all_rows += rows
            per_set[name] = {
                "objects": rs.objects, "store": str(rs.store), "estimators": rs.estimators + rs.photometric,
                "ppxf_setups": [Path(m).name for m in rs.ppxf], "summary": summarise(rows),
                "rebuilt_spectra": rebuilt_spectra(estimates),
            }  # fmt: skip
            for model, sm in per_set[name]["summary"].items():
                log.info(
                    f"  {name} {model:10s}: {sm['pass_fraction']:.0%} of {sm['pairs']} pairs pass "
                    f"({sm['agree_fraction']:.0%} agree), {sm['unflagged_fraction']:.0%} of objects unflagged"
                )
    report = RealReport(per_set, summarise(all_rows), all_rows)
    write_real_report(report, json_path)
    return report


def write_real_report(report: RealReport, json_path: Path) -> None:
    """The JSON, a Markdown table per set and estimator, and a PNG of the values against the ranges."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report.to_json(), indent=1, default=float))
    json_path.with_suffix(".md").write_text(real_markdown(report, json_path.with_suffix(".png").name))
    real_png(report, json_path.with_suffix(".png"))


def _rebuilt_lines(report: RealReport) -> list[str]:
    """A table of the rebuilt spectra's reduced chi^2 per set and estimator (none: no lines)."""
    rows = [(name, m, q) for name, st in report.sets.items() for m, q in st.get("rebuilt_spectra", {}).items()]
    if not rows:
        return []
    lines = [
        "Rebuilt spectra (the estimators that return them): reduced χ² and `chi2_floor` (χ² with a 2 % model "
        "error, what `poor_fit` judges) over the fitted objects, min / median / max:",
        "",
        "| set | estimator | χ² | chi2_floor | poor_fit |",
        "|---|---|---|---|---:|",
    ]
    for name, model, q in rows:
        cells = []
        for key in FIT_QUALITY:
            v = np.asarray(q.get(key, []), float)
            v = v[np.isfinite(v)]
            cells.append(" / ".join(f"{x:.2f}" for x in np.percentile(v, [0, 50, 100])) if v.size else "–")
        lines.append(f"| {name} | {model} | {cells[0]} | {cells[1]} | {q['poor_fit']} |")
    return lines


def real_markdown(report: RealReport, png_name: str) -> str:
    lines = [
        "# survey-proc on real spectra: the estimators against pPXF set-ups and published values",
        "",
        f"Definition: {report.definition}.",
        "",
        "| set | estimator | pairs | pass (agree or flagged) | agree | objects unflagged | acceptance |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, st in report.sets.items():
        for model, sm in st["summary"].items():
            lines.append(
                f"| {name} | {model} | {sm['pairs']} | {sm['pass_fraction']:.0%} | {sm['agree_fraction']:.0%} | "
                f"{sm['unflagged_fraction']:.0%} | {'met' if sm['acceptance'] else 'not met'} |"
            )
    lines += ["", *_rebuilt_lines(report)]
    lines += ["", "Per object (value ± error, flag; reference range):", ""]
    lines += [
        "| set | object | property | estimator | value | reference | pull | |",
        "|---|---|---|---|---|---|---:|---|",
    ]
    for r in report.rows:
        verdict = "agrees" if r["agrees"] else ("flagged" if r["flag"] else "**disagrees, unflagged**")
        lines.append(
            f"| {r['set']} | {r['object']} | {r['property']} | {r['estimator']} | {r['value']:.3g} ± {r['error']:.2g}"
            f"{' (flag ' + str(r['flag']) + ')' if r['flag'] else ''} | {r['ref_low']:.3g} .. {r['ref_high']:.3g} | "
            f"{r['pull']:.1f} | {verdict} |"
        )
    lines += ["", f"![values against the reference ranges]({png_name})", ""]
    return "\n".join(lines)


def real_png(report: RealReport, path: Path) -> None:
    """One panel per (set, property): each object's reference range and every estimator's value ± 2 errors."""
    from survey_proc.figures import pyplot, save_figure

    plt = pyplot()
    sets = list(report.sets)
    fig, axes = plt.subplots(len(sets), len(PROPS), figsize=(4.2 * len(PROPS), 3.4 * len(sets)), squeeze=False)
    models = sorted({r["estimator"] for r in report.rows})
    for i, name in enumerate(sets):
        objects = report.sets[name]["objects"]
        for j, p in enumerate(PROPS):
            a = axes[i][j]
            rows = [r for r in report.rows if r["set"] == name and r["property"] == p]
            for k, obj in enumerate(objects):
                ref = next((r for r in rows if r["object"] == obj), None)
                if ref:
                    a.fill_between([k - 0.4, k + 0.4], ref["ref_low"], ref["ref_high"], color="0.8", lw=0)
                    a.hlines([ref["ref_low"], ref["ref_high"]], k - 0.4, k + 0.4, color="0.6", lw=1)
            for m, model in enumerate(models):
                mine = [r for r in rows if r["estimator"] == model]
                xs = [objects.index(r["object"]) - 0.3 + 0.6 * m / max(len(models) - 1, 1) for r in mine]
                ys = [r["value"] for r in mine]
                es = [2 * r["error"] if np.isfinite(r["error"]) else 0 for r in mine]
                face = ["none" if r["flag"] else f"C{m}" for r in mine]
                a.errorbar(xs, ys, yerr=es, fmt="none", ecolor=f"C{m}", lw=0.8)
                a.scatter(xs, ys, s=18, facecolors=face, edgecolors=f"C{m}", label=model if (i, j) == (0, 0) else None)
            a.set_title(f"{name}: {p}", fontsize=9)
            a.set_xticks(range(len(objects)), objects if len(objects) <= 8 else [""] * len(objects), fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("grey: pPXF set-ups and published values; open symbols: flagged; bars: 2 reported errors", fontsize=9)
    save_figure(fig, path, dpi=90)
