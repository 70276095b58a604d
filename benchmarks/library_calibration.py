"""Calibrate the shipped spectral networks' errors and novelty flag for SSP-library systematics (issue 17).

    python -m benchmarks.library_calibration --apply

The networks are trained on E-MILES (``muse-mix`` also on two M11 libraries, which its calibration
leaves out); on spectra from another SSP library their estimates move by
more than the errors they report, and their ``out_of_distribution`` threshold (the 99.5 % quantile of
``ood_score`` on E-MILES validation spectra) lets almost all of those spectra through. Without
retraining, this measures per model (``--models``), on seeded mocks (``--seeds``, ``--size`` x
``--size`` spaxels at S/N ``--snr``) from the **calibration** libraries only (``ssp.library_names``
of role ``calibration``: the M11 variants, MaStar, BPASS, each where it covers the model's whole rest
range; MIUSCAT and BC03 are never used: they are loaded with ``use="calibration"``, which refuses them)
and from E-MILES (in library), run through a copy of the bundle with any earlier calibration undone:

1. per property (log_age, metallicity, av) two terms added in quadrature to the reported error
   (``error_systematics``, :mod:`survey_proc.estimators._systematics`): one that grows linearly with
   ``ood_score`` from its in-library median to the validation threshold, then a constant one; each the
   smallest that brings the 68 % coverage of the pooled calibration-library spaxels up to ``--coverage``
   (0.68), but no larger than what keeps the in-library coverage at or below ``--max-in-library-coverage``
   (0.74; issue 17 asks 0.60-0.76 there) on the E-MILES mocks and on E-MILES held-out spectra drawn like
   ``survey-proc evaluate``'s (both families, S/N 30) with a seed of their own; no term beyond
   ``--max-term`` (1 dex or mag); the ramp starts at the in-library quantile of ood_score (0.5, 0.75 or 0.9)
   that serves the calibration spaxels best (:func:`choose_ramp`);
2. a threshold on ``ood_score``: the highest at which, with the new errors, at least ``--ok-target``
   (0.90) of the pooled calibration-library spaxels are within 2 sigma or flagged, for every property;
   never below the ``1 - --max-in-library-flagged`` (95 %) quantile of any in-library set (at most 5 %
   of in-library spectra flagged) and never above the model's own validation threshold;
3. per property the SSP-library systematic reported on its own as ``<name>_sys_err`` (the manifest's
   ``error_systematics.library``): the smallest constant that, added in quadrature to the errors of 1.
   (the spaxels above the threshold of 2. flagged), brings the calibration spaxels' 68 % coverage to
   ``--coverage``; no in-library cap, since it is not in ``<name>_err`` (:func:`choose_library_terms`).

``--library-only`` keeps each manifest's calibrated terms and threshold and measures only 3. (a
calibration made before 3. existed, or one to leave alone: re-deriving 1. and 2. moves them a little
from run to run). ``--apply`` writes the terms into each manifest's ``error_systematics`` (read by the estimator, which
adds them to the errors it returns), the threshold into its ``OUT_OF_DISTRIBUTION`` rule, a record of
how they were chosen into ``library_calibration`` (with the threshold before, which undoes it), and
regenerates ``estimators/models/SHA256SUMS``; ``--from REPORT`` does the same with the values of an
earlier report, measuring nothing (after a merge that rewrote the manifests: first the full report,
``benchmarks/results/library_calibration.json``, then the library systematic's,
``library_systematic.json``; a full report without library terms keeps the manifest's). The
measurements go to ``--json`` (``benchmarks/results/library_calibration.json``). ``python -m
benchmarks.libraries --uncalibrated`` evaluates before and after, on the held-out libraries too.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from sys import argv as command_line

import numpy as np

from benchmarks.library_calibration_fit import (
    PROPERTIES,
    Options,
    Spaxels,
    choose_library_terms,
    choose_ramp,
    library_scores,
    pooled,
)
from survey_proc import __version__
from survey_proc.estimators import (
    PACKAGED,
    PACKAGED_SUMS,
    ErrorSystematics,
    compute_packaged_sums,
    read_manifest,
    write_manifest_like,
)
from survey_proc.ssp import library_names, load_ssp_library
from survey_proc.stores import open_maps
from survey_proc.synth import MockConfig, open_truth, write_mock

log = logging.getLogger("benchmarks.library_calibration")

#: the manifest key of the record of a calibration
RECORD_KEY = "library_calibration"
OOD = "OUT_OF_DISTRIBUTION"
COMMAND = "python -m benchmarks.library_calibration --apply"


def mock_cubes(libraries: list[str], opts: Options, work: Path) -> dict[tuple[str, int], Path]:
    """A mock per (library, seed), the pixels beyond the library masked (each library checked for ``calibration``)."""
    cubes = {}
    for name in libraries:
        lib = load_ssp_library(name, use="calibration")  # refuses MIUSCAT and BC03
        for seed in opts.seeds:
            cfg = MockConfig(
                seed=seed, snr=opts.snr, redshift=opts.redshift, library=name, mask_uncovered=True,
                nx=opts.size, ny=opts.size, chunk=opts.size,
            )  # fmt: skip
            cubes[name, seed] = work / f"{name}-{seed}.zarr"
            write_mock(cubes[name, seed], cfg, lib)
    return cubes


#: the held-out seed of the calibration: the training seed + this (training uses + 0, validation + 1000003,
#: the manifest's held-out metrics + 2000003, ``survey-proc evaluate`` + 3000017)
HELDOUT_SEED_OFFSET = 5_000_029


def heldout_spaxels(manifest: Path, opts: Options) -> list[Spaxels]:
    """In-library (E-MILES) held-out spectra, both families of ``survey-proc evaluate``, through the bundle
    at ``manifest``: one :class:`Spaxels` per S/N of ``opts.heldout_snrs``."""
    from survey_proc.estimators import load_estimator
    from survey_proc.training import heldout_config, observe_noisy, predict_noisy, synthesise, trainset_from_record

    est = load_estimator(manifest)
    tcfg = trainset_from_record(est.manifest.raw["training"]["config"]["trainset"])
    lib = load_ssp_library("emiles", use="calibration")
    seed = tcfg.seed + HELDOUT_SEED_OFFSET
    sets = [
        synthesise(heldout_config(tcfg, f, opts.heldout_n, seed + k), lib, est.manifest.input)
        for k, f in enumerate(("ssp", "csfh"))
    ]
    out = []
    for snr in opts.heldout_snrs:
        parts = []
        for k, data in enumerate(sets):
            noisy = replace(data, snr=np.full(len(data), snr))
            flux, var, mask = observe_noisy(noisy, np.random.default_rng([seed, int(snr * 10), k]), tcfg)
            pred, fitted = predict_noisy(est, noisy, flux, var, mask, tcfg)
            truth = np.stack([data.labels[:, data.label_names.index(p)] for p in PROPERTIES], axis=1)
            diff = np.stack([pred[p] for p in PROPERTIES], axis=1) - truth
            err = np.stack([pred[f"{p}_err"] for p in PROPERTIES], axis=1)
            parts.append(
                Spaxels(
                    f"emiles-heldout-snr{snr:g}",
                    diff.astype(float),
                    err.astype(float),
                    pred["ood_score"].astype(float),
                    ~fitted,
                )
            )
        out.append(pooled(parts))
    return out


def covering_libraries(manifest, margin: float = 0.01) -> list[str]:
    """The calibration libraries (not E-MILES, none the model was trained on) that cover the model's rest
    range with ``margin`` to spare: a library that stops inside it would measure the missing pixels, not
    the library."""
    wave = manifest.raw["input"]["wave"]
    trained = set(manifest.raw.get("training", {}).get("config", {}).get("trainset", {}).get("libraries") or {})
    names = []
    for name in library_names("calibration"):
        lib = load_ssp_library(name, use="calibration")
        if (
            name != "emiles"
            and name not in trained
            and lib.wave[0] <= wave["start"] * (1 - margin)
            and lib.wave[-1] >= wave["stop"] * (1 + margin)
        ):
            names.append(name)
    return names


def uncalibrated(raw: dict) -> dict:
    """A manifest's content with a library calibration undone: no ``error_systematics``, the
    out_of_distribution threshold it replaced, no record."""
    raw = json.loads(json.dumps(raw))
    record = raw.pop(RECORD_KEY, None)
    raw.pop("error_systematics", None)
    if record is not None and "ood_threshold_before" in record:  # a --library-only record replaced none
        for rule in _ood_rules(raw):
            rule["threshold"], rule["meaning"] = record["ood_threshold_before"], record["ood_meaning_before"]
    return raw


def _ood_rules(raw: dict) -> list[dict]:
    entry = raw.get("flags", {}).get(OOD, [])
    return entry if isinstance(entry, list) else [entry]


def uncalibrated_bundle(model: str, dest: Path) -> Path:
    """A copy of a packaged bundle in ``dest`` with its library calibration undone (its manifest path)."""
    src = read_manifest(PACKAGED / model)
    shutil.copytree(src.path.parent, dest)
    write_manifest_like(dest / "manifest.json", uncalibrated(src.raw))
    return dest / "manifest.json"


def run_model(cube: Path, manifest: Path, out: Path):
    from benchmarks.libraries import run_maps

    run_maps(cube, out, str(manifest))
    return open_maps(out)


def measure(model: str, cubes: dict[tuple[str, int], Path], work: Path, opts: Options) -> dict[str, Spaxels]:
    """Each library's spaxels (its seeds pooled), and the in-library held-out sets (``emiles-heldout-snrN``),
    through the uncalibrated copy of ``model``."""
    manifest = uncalibrated_bundle(model, work / f"bundle-{model}")
    per: dict[str, list[Spaxels]] = {}
    for (name, seed), cube in cubes.items():
        maps = run_model(cube, manifest, work / f"{model}-{name}-{seed}.zarr")
        per.setdefault(name, []).append(Spaxels.of(name, maps, open_truth(cube)))
    out = {name: pooled(parts) for name, parts in per.items()}
    if "training" in read_manifest(manifest).raw:  # a network: also its in-library held-out spectra
        out.update((sp.library, sp) for sp in heldout_spaxels(manifest, opts))
    return out


def shipped_calibration(model: str, before: float) -> tuple:
    """(terms, threshold record, ramp start, {}) of the packaged manifest as it is, for ``--library-only``
    (a bundle without an out_of_distribution rule, the fit's: no threshold, no ramp)."""
    manifest = read_manifest(PACKAGED / model)
    sys = replace(manifest.error_systematics, library_terms={})
    start = manifest.raw.get(RECORD_KEY, {}).get("ramp_start_quantile")
    ood = {"threshold": ood_threshold(manifest.raw), "before": before, "bound": "kept (--library-only)"}
    return sys, ood, start, {}


def ood_threshold(raw: dict) -> float:
    """A manifest's out_of_distribution threshold (inf: it has no such rule, as the fit's)."""
    rules = _ood_rules(raw)
    return float(rules[0]["threshold"]) if rules else float("inf")


def calibrate_model(model: str, spaxels: dict[str, Spaxels], libraries: list[str], opts: Options) -> dict:
    """The error terms and threshold of one model from its spaxels (``libraries``: the calibration ones it
    may use). The novelty term ramps to the validation threshold from an in-library quantile of ood_score
    (:func:`choose_ramp`)."""
    raw = uncalibrated(read_manifest(PACKAGED / model).raw)
    before = ood_threshold(raw)
    in_library = ["emiles", *(n for n in spaxels if n.startswith("emiles-heldout"))]
    cal, refs = pooled([spaxels[n] for n in libraries]), [spaxels[n] for n in in_library]
    if opts.library_only:
        sys, ood, start, tried = shipped_calibration(model, before)
    else:
        sys, ood, start, tried = choose_ramp(cal, refs, before, opts)
    sys = replace(sys, library_terms=choose_library_terms(cal, sys, ood["threshold"], opts))
    ramp = (sys.novelty_from, sys.novelty_to)
    biases = np.array(
        [[np.median(spaxels[n].diff[~spaxels[n].other, k]) for k in range(len(PROPERTIES))] for n in libraries]
    )
    none = ErrorSystematics()
    names = [*in_library, *libraries]
    return {
        "model": model,
        "calibration_libraries": libraries,
        "ramp_start_quantile": start,
        "error_systematics": {
            "terms": dict(sys.terms),
            "novelty": {"output": "ood_score", "from": ramp[0], "to": ramp[1], "terms": dict(sys.novelty_terms)},
            "library": dict(sys.library_terms),
            "meaning": _meaning(start),
        },
        "ramp_starts_tried": tried,
        "bias_rms_between_libraries": dict(zip(PROPERTIES, np.sqrt(np.mean(biases**2, axis=0)).tolist())),
        "ood": ood,
        "before": {n: library_scores(spaxels[n], none, before) for n in names},
        "after": {n: library_scores(spaxels[n], sys, ood["threshold"]) for n in names},
        "pooled_before": library_scores(cal, none, before),
        "pooled_after": library_scores(cal, sys, ood["threshold"]),
    }


def _meaning(start: float | None) -> str:
    """What a manifest's ``error_systematics`` holds (``start``: the ramp's in-library quantile; None: no ramp)."""
    library = "'library' is reported on its own as <name>_sys_err; calibrated on mocks from other libraries "
    if start is None:
        return f"SSP-library systematics: {library}(library_calibration)"
    return (
        f"SSP-library systematics: a constant term and one growing with ood_score from its in-library {start:.0%} "
        "quantile to the validation threshold, added in quadrature, as far as the in-library coverage allows; beyond "
        f"that, {library}(library_calibration)"
    )


def with_library_terms(raw: dict, res: dict, opts: Options) -> dict:
    """A calibrated manifest's content with the library systematic of ``res`` added (``--library-only``): its
    terms and threshold as they were, the addition recorded."""
    raw = json.loads(json.dumps(raw))
    entry = raw.setdefault("error_systematics", {})
    entry["library"], entry["meaning"] = res["error_systematics"]["library"], res["error_systematics"]["meaning"]
    record = raw.setdefault(
        RECORD_KEY, {"libraries": res["calibration_libraries"], "never_used": list(library_names("evaluation"))}
    )
    record["library_systematic"] = {
        "command": COMMAND + " --library-only",
        "software": f"survey-proc {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rule": "per property, the smallest constant that, added in quadrature to the calibrated errors, brings "
        f"the {opts.coverage:.0%} coverage of the calibration libraries' unflagged spaxels to {opts.coverage:g}",
        "mocks": {"seeds": list(opts.seeds), "size": opts.size, "snr": opts.snr, "redshift": opts.redshift},
    }
    return raw


def kept_library_terms(raw: dict, shipped: dict, model: str) -> dict:
    """``raw`` (a full calibration's manifest) with the shipped manifest's library systematic and its record
    where the calibration brought none (a report from before ``<name>_sys_err``, applied with ``--from``)."""
    library = shipped.get("error_systematics", {}).get("library")
    if library and "library" not in raw["error_systematics"]:
        log.warning("%s: the report has no library systematic; keeping the manifest's %s", model, library)
        raw["error_systematics"]["library"] = library
        raw[RECORD_KEY]["library_systematic"] = shipped[RECORD_KEY]["library_systematic"]
    return raw


def apply(results: list[dict], opts: Options) -> None:
    """Write each model's terms, threshold and record into its packaged manifest; then SHA256SUMS."""
    for res in results:
        path = PACKAGED / res["model"] / "manifest.json"
        if opts.library_only:
            write_manifest_like(path, with_library_terms(json.loads(path.read_text()), res, opts))
            continue
        shipped = json.loads(path.read_text())
        raw = uncalibrated(shipped)  # as exported: a second calibration replaces the first
        rule = _ood_rules(raw)[0]
        record = {
            "command": COMMAND,
            "software": f"survey-proc {__version__}",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "libraries": res["calibration_libraries"],
            "in_library": "emiles: the mocks, and held-out spectra drawn like the training set's",
            "never_used": list(library_names("evaluation")),
            "mocks": {"seeds": list(opts.seeds), "size": opts.size, "snr": opts.snr, "redshift": opts.redshift},
            "ramp_start_quantile": res["ramp_start_quantile"],
            "in_library_heldout": {
                "n_per_family": opts.heldout_n,
                "snr": list(opts.heldout_snrs),
                "seed_offset": HELDOUT_SEED_OFFSET,
            },
            "targets": {
                k: v
                for k, v in asdict(opts).items()
                if k
                not in (
                    "models",
                    "seeds",
                    "size",
                    "snr",
                    "redshift",
                    "heldout_n",
                    "heldout_snrs",
                    "ramp_starts",
                    "library_only",
                )
            },
            "ood_threshold_before": rule["threshold"],
            "ood_meaning_before": rule["meaning"],
        }
        raw["error_systematics"] = res["error_systematics"]
        for rule in _ood_rules(raw) if res["ood"]["threshold"] != record["ood_threshold_before"] else ():
            rule["threshold"] = res["ood"]["threshold"]
            rule["meaning"] = (
                "ood_score above the threshold calibrated on mocks from other SSP libraries (library_calibration); "
                f"the 99.5% quantile of validation spectra was {record['ood_threshold_before']:.4f}"
            )
        raw[RECORD_KEY] = record
        raw = kept_library_terms(raw, shipped, res["model"])
        write_manifest_like(path, raw)
        log.info(
            "%s: error_systematics %s, ood threshold %.4f",
            res["model"],
            res["error_systematics"],
            res["ood"]["threshold"],
        )
    PACKAGED_SUMS.write_text(compute_packaged_sums())


def calibrate(opts: Options, work: Path, command: str = COMMAND) -> dict:
    t0 = time.perf_counter()
    manifests = {m: read_manifest(PACKAGED / m) for m in opts.models}
    without = [m for m, manifest in manifests.items() if not np.isfinite(ood_threshold(manifest.raw))]
    if without and not opts.library_only:
        raise ValueError(f"{', '.join(without)}: no out_of_distribution rule to calibrate; run with --library-only")
    usable = {m: covering_libraries(manifest) for m, manifest in manifests.items()}
    libraries = sorted({n for names in usable.values() for n in names})
    cubes = mock_cubes(["emiles", *libraries], opts, work)
    results = []
    for model in opts.models:
        log.info("%s: mocks of %s", model, ", ".join(usable[model]))
        mine = {k: v for k, v in cubes.items() if k[0] in ("emiles", *usable[model])}
        results.append(calibrate_model(model, measure(model, mine, work, opts), usable[model], opts))
    return {
        "benchmark": "library_calibration",
        "software": f"survey-proc {__version__}",
        "command": command,
        "options": asdict(opts),
        "seconds": time.perf_counter() - t0,
        "models": results,
    }


def parse_args(argv: list[str] | None = None) -> tuple[Options, Path, bool, Path | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Options()
    p.add_argument("--models", nargs="+", default=list(d.models))
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--size", type=int, default=d.size)
    p.add_argument("--snr", type=float, default=d.snr)
    floats = ("coverage", "max_in_library_coverage", "ok_target", "max_in_library_flagged", "max_term")
    for name in floats:
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--apply", action="store_true", help="write the values into the packaged manifests")
    p.add_argument(
        "--library-only",
        action="store_true",
        help="keep each manifest's calibrated terms and threshold; measure and write only the SSP-library "
        "systematic reported as <name>_sys_err",
    )
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/library_calibration.json"))
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="write the values of this earlier report into the manifests, measuring nothing (e.g. after a merge "
        "that rewrote them)",
    )
    a = p.parse_args(argv)
    opts = replace(
        d,
        models=tuple(a.models),
        seeds=tuple(a.seeds),
        size=a.size,
        snr=a.snr,
        library_only=a.library_only,
        **{k: getattr(a, k) for k in floats},
    )
    return opts, a.json, a.apply, a.source


def apply_report(path: Path) -> None:
    """Write the values of an earlier report (``--json``) into the packaged manifests, measuring nothing."""
    report = json.loads(path.read_text())
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in report["options"].items()}
    apply(report["models"], Options(**fields))


def cli(argv: list[str] | None = None) -> int:
    from benchmarks.libraries import _finite

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    opts, out, do_apply, source = parse_args(argv)
    if source is not None:
        apply_report(source)
        print(f"wrote the values of {source} into the manifests")
        return 0
    with tempfile.TemporaryDirectory(prefix="survey-proc-calibration-") as work:
        command = "python -m benchmarks.library_calibration " + " ".join(command_line[1:] if argv is None else argv)
        report = calibrate(opts, Path(work), command.strip())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(report), indent=1) + "\n")
    if do_apply:
        apply(report["models"], opts)
    for res in report["models"]:
        e = res["error_systematics"]
        print(f"{res['model']}: terms {e['terms']}, novelty terms {e['novelty']['terms']}, library (sys_err) "
              f"{e['library']}, ood threshold "
              f"{res['ood']['before']:.3f} -> {res['ood']['threshold']:.3f} ({res['ood']['bound']})")  # fmt: skip
    print(f"wrote {out}" + (" and the manifests" if do_apply else "") + f" in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
