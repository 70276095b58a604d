"""The statistics of the library calibration (:mod:`benchmarks.library_calibration`): the spaxels of a
model's runs, the coverage and 2-sigma share their errors give with an ``error_systematics`` and an
out_of_distribution threshold, and the choice of both. Pure functions of arrays; no files."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from survey_proc.estimators import ErrorSystematics
from survey_proc.stores import Flag

log = logging.getLogger("benchmarks.library_calibration")

PROPERTIES = ("log_age", "metallicity", "av")


@dataclass(frozen=True)
class Options:
    models: tuple[str, ...] = ("default", "muse-7100", "muse-cnn-wide")
    seeds: tuple[int, ...] = (21, 22, 23)  #: never the library benchmark's (11)
    size: int = 20
    snr: float = 30.0
    redshift: float = 0.008
    coverage: float = 0.68
    max_in_library_coverage: float = 0.74
    ok_target: float = 0.90
    max_in_library_flagged: float = 0.05
    #: where the novelty term may start to grow: quantiles of the in-library ood_score; the one whose
    #: calibration gives the calibration spaxels the best worst-property share within 2 sigma or flagged is kept
    ramp_starts: tuple[float, ...] = (0.5, 0.75, 0.9)
    max_term: float = 1.0  #: no term beyond this (dex, mag): an estimate that far off is flagged, not excused
    #: in-library held-out spectra (as ``survey-proc evaluate`` draws them, with a seed of their own) per
    #: family and S/N: the in-library caps hold on them too
    heldout_n: int = 500
    heldout_snrs: tuple[float, ...] = (30.0,)
    #: keep each manifest's calibrated terms and threshold; measure and write only the library systematic
    library_only: bool = False


@dataclass
class Spaxels:
    """The spaxels of one library's mocks through one model: estimate - truth and the reported errors
    (n, property), ``ood_score``, and whether a flag other than out_of_distribution is set (or no
    estimate was made)."""

    library: str
    diff: np.ndarray
    err: np.ndarray
    score: np.ndarray
    other: np.ndarray

    @classmethod
    def of(cls, library: str, maps, truth) -> Spaxels:
        """The spaxels of ``maps`` against ``truth``; a property the model does not estimate (``fit-mpoly``'s
        A_V) is a column of NaN, and does not count when deciding which spaxels were fitted."""
        flag = np.asarray(maps["flag"].values).astype(np.int64).ravel()
        nan = np.full(flag.size, np.nan)
        diff = np.stack(
            [np.ravel(maps[p].values - truth[p].values) if p in maps else nan for p in PROPERTIES], axis=1
        ).astype(float)
        err = np.stack([np.ravel(maps[f"{p}_err"].values) if p in maps else nan for p in PROPERTIES], axis=1)
        err = err.astype(float)
        present = [k for k, p in enumerate(PROPERTIES) if p in maps]
        other = ((flag & ~int(Flag.OUT_OF_DISTRIBUTION)) != 0) | ~np.isfinite(diff[:, present]).all(axis=1)
        score = np.ravel(maps["ood_score"].values).astype(float) if "ood_score" in maps else np.full(flag.size, np.nan)
        return cls(library, diff, err, score, other)

    def join(self, more: Spaxels) -> Spaxels:
        cat = np.concatenate
        return Spaxels(
            self.library,
            cat([self.diff, more.diff]),
            cat([self.err, more.err]),
            cat([self.score, more.score]),
            cat([self.other, more.other]),
        )


def pooled(spaxels: list[Spaxels]) -> Spaxels:
    out = spaxels[0]
    for s in spaxels[1:]:
        out = out.join(s)
    return out


def grown(sp: Spaxels, k: int, sys: ErrorSystematics) -> np.ndarray:
    """The errors of property ``k`` as the estimator would return them with ``sys`` in its manifest."""
    name = PROPERTIES[k]
    return sys.add({"ood_score": sp.score, f"{name}_err": sp.err[:, k].copy()})[f"{name}_err"]


def coverage(sp: Spaxels, k: int, sys: ErrorSystematics, threshold: float = np.inf) -> float:
    """Share of the unflagged spaxels (ood_score above ``threshold`` flagging too) within 1 sigma."""
    use = ~sp.other & ~(sp.score > threshold)
    if not use.any():
        return float("nan")
    return float(np.mean(np.abs(sp.diff[use, k]) <= grown(sp, k, sys)[use]))


def ok_share(sp: Spaxels, k: int, sys: ErrorSystematics, threshold: float) -> float:
    """Share of all spaxels within 2 sigma or flagged, ood_score above ``threshold`` flagging too."""
    within = np.abs(sp.diff[:, k]) <= 2 * grown(sp, k, sys)
    return float(np.mean(sp.other | (sp.score > threshold) | within))


def smallest(ok, hi: float = 5.0) -> float:
    """The smallest x in [0, hi] with ``ok(x)`` (``ok`` false then true as x grows); bisection."""
    if ok(0.0):
        return 0.0
    if not ok(hi):
        return hi
    lo = 0.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def largest(ok, hi: float = 5.0) -> float:
    """The largest x in [0, hi] with ``ok(x)`` (``ok`` true then false as x grows; 0 if never)."""
    if not ok(0.0):
        return 0.0
    lo = 0.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def _floor4(x: float) -> float:
    """``x`` rounded down to 1e-4 (never past a ceiling found by bisection)."""
    return float(np.floor(x * 1e4) / 1e4)


def choose_terms(cal: Spaxels, refs: list[Spaxels], ramp: tuple[float, float], opts: Options) -> ErrorSystematics:
    """Per property, first the novelty term, then the constant one: each the smallest that brings the
    calibration spaxels' coverage to ``opts.coverage``, or the largest that keeps every in-library set's
    (``refs``) at or below ``opts.max_in_library_coverage``, whichever is smaller."""
    novelty, terms = {}, {}

    def sys(k: int, n: float, s: float = 0.0) -> ErrorSystematics:
        p = PROPERTIES[k]
        return ErrorSystematics({p: s}, {p: n}, "ood_score", *ramp)

    for k, p in enumerate(PROPERTIES):
        wanted = smallest(lambda n, k=k: coverage(cal, k, sys(k, n)) >= opts.coverage, opts.max_term)
        ceiling = largest(lambda n, k=k: max(coverage(r, k, sys(k, n)) for r in refs) <= opts.max_in_library_coverage)
        novelty[p] = _floor4(min(wanted, ceiling))
        wanted = smallest(lambda s, k=k, p=p: coverage(cal, k, sys(k, novelty[p], s)) >= opts.coverage, opts.max_term)
        ceiling = largest(
            lambda s, k=k, p=p: max(coverage(r, k, sys(k, novelty[p], s)) for r in refs) <= opts.max_in_library_coverage
        )
        terms[p] = _floor4(min(wanted, ceiling))
    return ErrorSystematics(terms, novelty, "ood_score", *ramp)


def choose_library_terms(cal: Spaxels, sys: ErrorSystematics, threshold: float, opts: Options) -> dict[str, float]:
    """Per property, the SSP-library systematic reported beside the error (``<name>_sys_err``): the smallest
    constant that, added in quadrature to the calibrated errors (``sys``), brings the 68 % coverage of the
    calibration spaxels unflagged at ``threshold`` up to ``opts.coverage``. No in-library cap: it is not in
    ``<name>_err``, whose in-library coverage stays as the other terms left it."""

    def reaches(k: int, s: float) -> bool:
        return coverage(cal, k, total(replace(sys, library_terms={PROPERTIES[k]: s})), threshold) >= opts.coverage

    estimated = [k for k in range(len(PROPERTIES)) if np.isfinite(cal.diff[:, k]).any()]
    out = {PROPERTIES[k]: _ceil4(smallest(partial(reaches, k), opts.max_term)) for k in estimated}
    for p in out:
        k = PROPERTIES.index(p)
        if not reaches(k, out[p]):
            log.warning("%s: the library systematic stops at --max-term %g short of the coverage target", p, out[p])
    return out


def total(sys: ErrorSystematics) -> ErrorSystematics:
    """``sys`` with its library terms folded into the constant ones: the errors it gives are
    ``sqrt(<name>_err^2 + <name>_sys_err^2)``, the total against another library's scale."""
    names = set(sys.terms) | set(sys.library_terms)
    terms = {p: float(np.hypot(sys.terms.get(p, 0.0), sys.library_terms.get(p, 0.0))) for p in names}
    return replace(sys, terms=terms, library_terms={})


def _ceil4(x: float) -> float:
    """``x`` rounded up to 1e-4 (never below a floor found by bisection)."""
    return float(np.ceil(x * 1e4) / 1e4)


def choose_ramp(cal: Spaxels, refs: list[Spaxels], before: float, opts: Options) -> tuple:
    """(terms, threshold record, ramp start quantile, what each start gave) for the ramp start of
    ``opts.ramp_starts`` (quantiles of the in-library ood_score) whose terms and threshold give the
    calibration spaxels the highest worst-property share within 2 sigma or flagged; ties (within 0.005) go
    to the one that flags fewer of them."""
    ref = pooled(refs)
    fitted = ref.score[~ref.other & np.isfinite(ref.score)]
    best, tried = None, {}
    for q in opts.ramp_starts:
        sys = choose_terms(cal, refs, (float(np.quantile(fitted, q)), before), opts)
        ood = choose_threshold(cal, refs, sys, before, opts)
        ok = min(ok_share(cal, k, sys, ood["threshold"]) for k in range(len(PROPERTIES)))
        flagged = float(np.mean(cal.score[~cal.other] > ood["threshold"]))
        tried[f"{q:g}"] = {"worst_ok_2sigma": ok, "flagged": flagged, "threshold": ood["threshold"]}
        log.info(
            "novelty ramp from the in-library %.0f%% quantile: worst ok2sigma %.3f, %.0f%% flagged",
            100 * q,
            ok,
            100 * flagged,
        )
        if best is None or ok > best[0] + 0.005 or (ok > best[0] - 0.005 and flagged < best[1]):
            best = (ok, flagged, sys, ood, q)
    return best[2], best[3], best[4], tried


def choose_threshold(cal: Spaxels, refs: list[Spaxels], sys: ErrorSystematics, before: float, opts: Options) -> dict:
    """The ood_score threshold: the highest at which every property has ``ok_target`` of the calibration
    spaxels within 2 sigma or flagged, clipped to [in-library floor, the model's validation threshold]; the
    floor flags ``opts.max_in_library_flagged`` of each in-library set (``refs``) at most."""
    q = 1 - opts.max_in_library_flagged  # in every in-library set
    floor = max(float(np.quantile(r.score[~r.other & np.isfinite(r.score)], q)) for r in refs)
    candidates = np.unique(np.r_[cal.score[np.isfinite(cal.score)], floor, before])
    candidates = candidates[(candidates >= floor) & (candidates <= before)][::-1]  # highest first
    ks = range(len(PROPERTIES))
    reached = next((float(t) for t in candidates if min(ok_share(cal, k, sys, t) for k in ks) >= opts.ok_target), None)
    chosen = floor if reached is None else reached
    bound = "target reached" if reached is not None else "in-library floor (target not reached)"
    if reached is not None and np.isclose(reached, before):
        bound = "the validation threshold already reaches the target"
    return {"threshold": chosen, "before": before, "in_library_floor": floor, "bound": bound}


def library_scores(sp: Spaxels, sys: ErrorSystematics, threshold: float) -> dict:
    """Bias, coverage and the 2-sigma share of one library, with a calibration's errors and threshold."""
    fitted = ~sp.other
    out = {"spaxels": int(sp.score.size), "ood_flagged": float(np.mean(sp.score[fitted] > threshold))}
    for k, prop in enumerate(PROPERTIES):
        d = sp.diff[fitted, k]
        if not np.isfinite(d).any() and d.size:
            continue  # a property the model does not estimate
        out[prop] = {
            "bias": float(np.median(d)) if d.size else float("nan"),
            "coverage_68": coverage(sp, k, sys, threshold),
            "ok_2sigma": ok_share(sp, k, sys, threshold),
        }
        if prop in sys.library_terms:  # with <name>_sys_err: the total error against another library's scale
            out[prop] |= {
                "coverage_68_total": coverage(sp, k, total(sys), threshold),
                "ok_2sigma_total": ok_share(sp, k, total(sys), threshold),
            }
    return out
