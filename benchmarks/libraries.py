"""The estimates and their errors and flags on mocks from every SSP library (issue 17).

    python -m benchmarks.libraries --json benchmarks/results/libraries.json

The models are trained on E-MILES (``muse-mix`` and ``muse-mix-recon`` also on M11-MILES and M11-MARCS:
their manifests' ``trainset.libraries``). For each library
of ``survey_proc.ssp.SSP_LIBRARIES``
(E-MILES as the in-library reference; MIUSCAT and BC03 are the evaluation libraries) this makes a
seeded mock (``--size`` 24 x 24 spaxels at S/N ``--snr`` 30, the cube's pixels beyond the library
masked: ``survey-proc mock --library NAME --mask-uncovered``) and runs it through each ``--models``
(default: the default model, and ``muse-7100``, which reads rest 4750-7100 A, within the libraries
that stop near 7400 A) with ``survey-proc run``; on a smaller mock of the same galaxy (``--sample``
12 x 12) it runs pPXF (``--method ppxf``, E-MILES templates), ``--method fit`` where this build
has it, and the default model again, for a like-for-like comparison. Where a library does not cover
the whole cube, a ``control`` mock from E-MILES cut to the library's range (the same pixels masked)
runs through the models too: the difference from it is the library's, not the gap's. With
``--uncalibrated`` each model also runs as ``MODEL@uncalibrated``, a copy with its library calibration
(``python -m benchmarks.library_calibration``: ``error_systematics`` and the out_of_distribution
threshold) undone: before and after, side by side.

Per method and property (log_age, metallicity, av, sigma), against the mock's truth:

- ``bias`` (median of estimate - truth) and ``robust_sigma`` (1.4826 MAD), over unflagged spaxels;
- ``coverage_68``: the share of unflagged spaxels with |estimate - truth| <= the reported error;
- ``ok_2sigma``: the share of all spaxels within twice their error or flagged (issue 17's criterion);
- ``auc_ood``: how well ``ood_score`` separates the fitted spaxels off by more than 2 sigma from the
  others (area under the ROC curve; 0.5: not at all);

and per method the share of spaxels flagged (any bit), flagged ``out_of_distribution``, not fitted,
the AUC of ``ood_score`` for spaxels off by more than 2 sigma in any of log_age, metallicity, av,
the median and 99th percentile of ``ood_score`` beside the model's threshold, and the AUC of
``ood_score`` for telling the library's spaxels from the E-MILES mock's (the change of library).
JSON, Markdown and a PNG go to ``--json``'s folder (default ``./survey-proc-libraries/``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from survey_proc import __version__
from survey_proc.analysis import DEFAULT_PROPERTIES
from survey_proc.cli import build_parser, main
from survey_proc.estimators import read_manifest
from survey_proc.ssp import SSP_LIBRARIES, SSPLibrary, load_ssp_library, muse_lsf_fwhm
from survey_proc.stores import NOT_FITTED, Flag, open_maps, robust_sigma
from survey_proc.synth import MockConfig, open_truth, write_mock
from survey_proc.training._metrics import roc_auc as auc

log = logging.getLogger("benchmarks.libraries")

#: the properties whose 2-sigma misses the novelty score should catch
POPULATION = ("log_age", "metallicity", "av")


@dataclass(frozen=True)
class Options:
    libraries: tuple[str, ...] = tuple(SSP_LIBRARIES)
    models: tuple[str, ...] = ("default", "muse-7100")
    size: int = 24
    sample: int = 12  #: side of the mock pPXF and --method fit run on (0: none)
    methods: tuple[str, ...] = ("ppxf", "fit")
    snr: float = 30.0
    seed: int = 11
    redshift: float = 0.008
    uncalibrated: bool = False  #: also run each model as it was before its library calibration


@dataclass(frozen=True)
class PropertyScore:
    bias: float
    robust_sigma: float
    coverage_68: float  #: NaN where the method reports no error
    ok_2sigma: float  #: within 2 sigma or flagged, over all spaxels (NaN: no error)
    auc_ood: float  #: NaN: no ood_score, or no spaxel off (or all off) by 2 sigma
    off_2sigma: int  #: fitted spaxels off by more than 2 sigma
    n_good: int
    #: the two above with the total error sqrt(err^2 + sys_err^2) (NaN: the model reports no <name>_sys_err)
    coverage_68_total: float = float("nan")
    ok_2sigma_total: float = float("nan")


@dataclass(frozen=True)
class MethodScore:
    method: str  #: model name, or ppxf / fit
    cube: str  #: mock or sample
    spaxels: int
    fitted: float
    flagged: float
    ood_flagged: float  #: out_of_distribution, among fitted spaxels
    auc_ood_any: float  #: ood_score vs off by 2 sigma in any of log_age, metallicity, av
    seconds: float
    properties: dict[str, PropertyScore] = field(default_factory=dict)
    ood_threshold: float = float("nan")  #: the model's out_of_distribution threshold on ood_score
    ood_p50: float = float("nan")  #: median ood_score of the fitted spaxels
    ood_p99: float = float("nan")  #: its 99th percentile
    auc_vs_emiles: float = float("nan")  #: ood_score: this library's fitted spaxels vs the E-MILES mock's


def _property(maps, truth, name: str, flag: np.ndarray, fitted: np.ndarray, score: np.ndarray | None):
    """(PropertyScore, off-by-2-sigma mask over fitted spaxels) of one property."""
    pred = np.asarray(maps[name].values, float)
    diff = pred - np.asarray(truth[name].values, float)
    err = np.asarray(maps[f"{name}_err"].values, float) if f"{name}_err" in maps else None
    good = (flag == 0) & np.isfinite(diff)
    d = diff[good]
    coverage = ok2 = auc_ood = float("nan")
    off = np.zeros(flag.shape, bool)
    if err is not None:
        coverage = float(np.mean(np.abs(d) <= err[good])) if d.size else float("nan")
        within = np.abs(diff) <= 2 * err
        ok2 = float(np.mean((flag != 0) | within))
        off = fitted & np.isfinite(diff) & ~within
        if score is not None:
            use = fitted & np.isfinite(diff) & np.isfinite(score)
            auc_ood = auc(score[use], off[use])
    totals = {}
    if err is not None and f"{name}_sys_err" in maps:
        tot = np.hypot(err, np.asarray(maps[f"{name}_sys_err"].values, float))
        totals = {
            "coverage_68_total": float(np.mean(np.abs(d) <= tot[good])) if d.size else float("nan"),
            "ok_2sigma_total": float(np.mean((flag != 0) | (np.abs(diff) <= 2 * tot))),
        }
    result = PropertyScore(
        **totals,
        bias=float(np.median(d)) if d.size else float("nan"),
        robust_sigma=robust_sigma(d),
        coverage_68=coverage,
        ok_2sigma=ok2,
        auc_ood=auc_ood,
        off_2sigma=int(off.sum()),
        n_good=int(good.sum()),
    )
    return result, off


def score_maps(maps, truth, method: str, cube: str, seconds: float) -> MethodScore:
    """The scores of one run's maps against the mock's truth (both xarray Datasets on (y, x))."""
    flag = np.asarray(maps["flag"].values).astype(np.int64)
    fitted = (flag & int(NOT_FITTED)) == 0
    score = np.asarray(maps["ood_score"].values, float) if "ood_score" in maps else None
    properties, off_any = {}, np.zeros(flag.shape, bool)
    for name in DEFAULT_PROPERTIES:
        if name in maps and name in truth:
            properties[name], off = _property(maps, truth, name, flag, fitted, score)
            if name in POPULATION:
                off_any |= off
    any_auc = p50 = p99 = float("nan")
    if score is not None:
        use = fitted & np.isfinite(score)
        any_auc = auc(score[use], off_any[use])
        if use.any():
            p50, p99 = (float(q) for q in np.percentile(score[use], [50, 99]))
    n_fit = max(int(fitted.sum()), 1)
    return MethodScore(
        method=method,
        cube=cube,
        spaxels=int(flag.size),
        fitted=float(fitted.mean()),
        flagged=float(np.mean(flag != 0)),
        ood_flagged=float(((flag & int(Flag.OUT_OF_DISTRIBUTION)) != 0)[fitted].sum() / n_fit),
        auc_ood_any=any_auc,
        seconds=seconds,
        properties=properties,
        ood_threshold=_ood_threshold(maps),
        ood_p50=p50,
        ood_p99=p99,
    )


def _ood_threshold(maps) -> float:
    """The out_of_distribution threshold of the model that made ``maps`` (NaN: none)."""
    path = maps.attrs.get("model_manifest")
    if not path:
        return float("nan")
    rules = read_manifest(Path(path)).flag_rules
    return next((float(r["threshold"]) for f, r in rules if f == "OUT_OF_DISTRIBUTION"), float("nan"))


def fitted_ood_scores(maps) -> np.ndarray:
    """The finite ``ood_score`` of the fitted spaxels (empty without one)."""
    if "ood_score" not in maps:
        return np.zeros(0)
    flag = np.asarray(maps["flag"].values).astype(np.int64)
    score = np.asarray(maps["ood_score"].values, float)
    return score[((flag & int(NOT_FITTED)) == 0) & np.isfinite(score)]


def add_shift_auc(results: list[dict], scores: dict[tuple[str, str, str], np.ndarray]) -> None:
    """Set each run's ``auc_vs_emiles``: how well ood_score tells its fitted spaxels from those of the
    E-MILES mock run through the same method (mock and control against E-MILES' mock, sample against
    its sample)."""
    for entry in results:
        name = entry["library"]["name"]
        for s in entry["scores"]:
            ref = scores.get(("emiles", s["method"], "sample" if s["cube"] == "sample" else "mock"))
            own = scores.get((name, s["method"], s["cube"]))
            if name != "emiles" and ref is not None and own is not None and ref.size and own.size:
                labels = np.r_[np.ones(own.size, bool), np.zeros(ref.size, bool)]
                s["auc_vs_emiles"] = auc(np.r_[own, ref], labels)


def method_available(method: str) -> bool:
    """Whether this build's ``survey-proc run`` has ``--method METHOD``."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args(["run", "--cube", "x", "--method", method])
        except SystemExit:
            return False
    return True


#: the suffix of a model's runs with its library calibration undone (``--uncalibrated``)
UNCALIBRATED = "@uncalibrated"


def run_maps(cube: Path, out: Path, method: str, bundles: dict[str, Path] | None = None) -> float:
    """``survey-proc run`` of ``cube`` into ``out`` (serial, in this process); its wall time. ``bundles``:
    the bundle (manifest path) of a method that names none of the packaged models."""
    spec = str((bundles or {}).get(method, method))
    how = ["--method", method] if method in ("ppxf", "fit") else ["--model", spec]
    argv = ["run", "--cube", str(cube), "--out", str(out), "--cluster", "none", "--overwrite", "--quiet", *how]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"survey-proc {' '.join(argv)} exited {rc}")
    return time.perf_counter() - t0


def library_record(lib: SSPLibrary, cfg: MockConfig) -> dict:
    """What the library is, and how it sits against the mock: coverage and resolution."""
    z1 = 1.0 + cfg.redshift
    rest = np.array([4800.0, 6500.0, 8500.0])
    fwhm = np.interp(rest, lib.wave, np.broadcast_to(lib.fwhm, lib.wave.shape), left=np.nan, right=np.nan)
    muse = muse_lsf_fwhm(rest * z1) / z1
    excess = np.sqrt(np.clip(fwhm**2 - muse**2, 0, None)) / rest * 299792.458 / 2.3548
    return {
        "name": lib.name,
        "role": lib.role,
        "title": SSP_LIBRARIES[lib.name].title,
        "source": lib.provenance.get("source", ""),
        "grid": {
            "metal": [round(float(m), 3) for m in lib.metal],
            "log_age": [float(lib.log_age[0]), float(lib.log_age[-1])],
        },
        "n_ages": int(lib.log_age.size),
        "rest_wave": [float(lib.wave[0]), float(lib.wave[-1])],
        "cube_pixels_masked": float(1.0 - cfg.covered(lib).mean()),
        "fwhm_rest_A": {f"{w:.0f}": round(float(f), 2) for w, f in zip(rest, fwhm)},
        "muse_fwhm_rest_A": {f"{w:.0f}": round(float(f), 2) for w, f in zip(rest, muse)},
        "lsf_excess_kms": {f"{w:.0f}": round(float(e), 1) for w, e in zip(rest, excess)},
        "assumptions": {k: lib.provenance[k] for k in ("imf", "flux", "mass", "notes") if lib.provenance.get(k)},
    }


def uncalibrated_bundles(opts: Options, work: Path) -> dict[str, Path]:
    """``MODEL@uncalibrated`` -> a copy of each model with its library calibration undone (``--uncalibrated``)."""
    from benchmarks.library_calibration import uncalibrated_bundle

    if not opts.uncalibrated:
        return {}
    return {m + UNCALIBRATED: uncalibrated_bundle(m, work / f"bundle-{m}") for m in opts.models}


def bench_library(name: str, opts: Options, work: Path, bundles: dict[str, Path] | None = None) -> dict:
    """The mock(s) of one library through every method: its record and scores.

    Where the library masks part of the cube, a ``control`` mock from E-MILES cut to the library's
    range (the same pixels masked) tells the effect of the gap from that of the library."""
    lib = load_ssp_library(name)
    base = MockConfig(seed=opts.seed, snr=opts.snr, redshift=opts.redshift, library=name, mask_uncovered=True)
    models = (*opts.models, *(bundles or {}))
    cubes = [("mock", opts.size, lib, models)]
    if opts.sample:
        cubes.append(("sample", opts.sample, lib, (opts.models[0], *opts.methods)))
    if name != "emiles" and not base.covered(lib).all():
        cut = load_ssp_library("emiles").crop(lib.wave[0], lib.wave[-1])
        cubes.append(("control", opts.size, cut, models))
    scores, ood = [], {}
    for kind, n, cube_lib, methods in cubes:
        cube = work / f"{name}-{kind}.zarr"
        write_mock(cube, replace(base, nx=n, ny=n, chunk=n, library=cube_lib.name), cube_lib)
        truth = open_truth(cube)
        for method in methods:
            log.info("%s: %s on the %d x %d %s", name, method, n, n, kind)
            out = work / f"{name}-{kind}-{method}.zarr"
            seconds = run_maps(cube, out, method, bundles)
            maps = open_maps(out)
            scores.append(score_maps(maps, truth, method, kind, seconds))
            ood[(name, method, kind)] = fitted_ood_scores(maps)
    return {"library": library_record(lib, base), "scores": [asdict(s) for s in scores]}, ood


def run_benchmark(opts: Options, work: Path) -> dict:
    methods = tuple(m for m in opts.methods if method_available(m))
    skipped = sorted(set(opts.methods) - set(methods))
    opts = replace(opts, methods=methods)
    t0 = time.perf_counter()
    results, ood = [], {}
    bundles = uncalibrated_bundles(opts, work)
    for name in opts.libraries:
        entry, scores = bench_library(name, opts, work, bundles)
        results.append(entry)
        ood.update(scores)
    add_shift_auc(results, ood)
    return {
        "benchmark": "libraries",
        "software": f"survey-proc {__version__}",
        "options": asdict(opts),
        "methods_not_in_this_build": skipped,
        "definitions": DEFINITIONS,
        "seconds": time.perf_counter() - t0,
        "libraries": results,
    }


DEFINITIONS = {
    "bias": "median of estimate - truth over unflagged spaxels (flag == 0)",
    "robust_sigma": "1.4826 x MAD of estimate - truth over unflagged spaxels",
    "coverage_68": "share of unflagged spaxels with |estimate - truth| <= the reported error (ideal 0.68)",
    "ok_2sigma": "share of all spaxels within twice their reported error or flagged (issue 17 asks >= 0.85)",
    "coverage_68_total, ok_2sigma_total": "the same with the total error sqrt(<name>_err^2 + <name>_sys_err^2), "
    "where the model reports an SSP-library systematic <name>_sys_err",
    "auc_ood": "ROC AUC of ood_score for fitted spaxels off by more than 2 reported errors vs the rest",
    "ood_flagged": "share of fitted spaxels flagged out_of_distribution",
    "flagged": "share of all spaxels with any flag bit",
    "auc_vs_emiles": "ROC AUC of ood_score for this library's fitted spaxels vs the E-MILES mock's (same "
    "galaxy, same method): how well the novelty score sees the change of library",
    "ood_p50, ood_p99": "median and 99th percentile of ood_score over the fitted spaxels; ood_threshold: "
    "the model's out_of_distribution threshold",
    "truth": "light-weighted log age and [M/H] on the library's own grid, A_V, sigma of the mock",
}


def _finite(x):
    """``x`` with NaN floats as None (strict JSON)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def parse_args(argv: list[str] | None = None) -> tuple[Options, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--libraries", nargs="+", default=list(SSP_LIBRARIES), choices=list(SSP_LIBRARIES))
    p.add_argument("--models", nargs="+", default=list(Options.models))
    p.add_argument("--size", type=int, default=Options.size)
    p.add_argument("--sample", type=int, default=Options.sample, help="side of the pPXF sample mock (0: none)")
    p.add_argument("--methods", nargs="*", default=list(Options.methods), help="run --method values on the sample")
    p.add_argument("--snr", type=float, default=Options.snr)
    p.add_argument("--seed", type=int, default=Options.seed)
    p.add_argument(
        "--uncalibrated",
        action="store_true",
        help="also run each model with its library calibration undone (MODEL@uncalibrated): before and after",
    )
    p.add_argument("--json", type=Path, default=Path("survey-proc-libraries") / "libraries.json")
    a = p.parse_args(argv)
    opts = Options(
        tuple(a.libraries),
        tuple(a.models),
        a.size,
        a.sample,
        tuple(a.methods),
        a.snr,
        a.seed,
        uncalibrated=a.uncalibrated,
    )
    return opts, a.json


def cli(argv: list[str] | None = None) -> int:
    from benchmarks.libraries_report import write_markdown, write_png

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    opts, out = parse_args(argv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="survey-proc-libraries-") as work:
        report = run_benchmark(opts, Path(work))
    out.write_text(json.dumps(_finite(report), indent=1) + "\n")
    md, png = write_markdown(report, out.with_suffix(".md")), write_png(report, out.with_suffix(".png"))
    print(f"wrote {out}, {md} and {png} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
