"""Held-out evaluation of estimators against the truth (``survey-proc evaluate``).

Held-out spectra are synthesised from the model's own training configuration with a seed that
training never used, in two families: mixtures of 1-3 SSPs (the set pPXF's published accuracy
refers to) and continuous star-formation histories. For each S/N the *same* noisy observed spectra
go to every estimator (the model and, with ``--baseline``, pPXF), each through its own declared
preprocessing, so the comparison is like for like.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from survey_proc import progress
from survey_proc.estimators import Estimator, load_estimator
from survey_proc.figures import save_figure
from survey_proc.preprocess import estimator_meta, prepare
from survey_proc.ssp import SSPLibrary, load_ssp_library
from survey_proc.stores import robust_sigma
from survey_proc.training._dataset import (
    CONTINUOUS_SFH,
    NoiseFreeSet,
    TrainsetConfig,
    instrument_of,
    observe_noisy,
    synthesise,
    trainset_from_record,
)
from survey_proc.training._metrics import score_predictions

log = logging.getLogger(__name__)

#: seed offset of ``survey-proc evaluate`` sets (training uses seed, validation seed + 1000003, the
#: held-out metrics written into the manifest at export seed + 2000003)
EVAL_SEED_OFFSET = 3_000_017
#: fraction of a label's grid range counted as its low / high edge
EDGE_FRACTION = 0.15

FAMILIES = {
    "ssp": {"sfh_fraction": 0.0, "max_ssp": 3, "young_fraction": 0.0},
    "csfh": {"sfh_fraction": 1.0},
}


def heldout_config(train_cfg: TrainsetConfig, family: str, n: int, seed: int) -> TrainsetConfig:
    """The configuration of a held-out family drawn like the training set, with another seed, from the
    model's own SSP library only (a model trained on several is scored in library, like pPXF with it)."""
    return dataclasses.replace(
        train_cfg, n=n, seed=seed, batch=min(train_cfg.batch, n), libraries=None, **FAMILIES[family]
    )


def predict_noisy(
    est: Estimator, data: NoiseFreeSet, flux: np.ndarray, var: np.ndarray, mask: np.ndarray, cfg: TrainsetConfig
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run ``est`` on noisy observed spectra through its own preprocessing; returns (pred, fitted)."""
    inst = instrument_of(cfg)
    spec = est.manifest.input
    full = inst.wave_in(spec.medium)  # as the engine hands data to a model: in its declared medium
    n = len(data)
    fitted = np.zeros(n, bool)
    parts: dict[str, np.ndarray] = {}
    for i0 in np.unique(data.wave_index):
        rows = np.nonzero(data.wave_index == i0)[0]
        wave = full[i0 : i0 + flux.shape[1]]
        prep = prepare(flux[rows], var[rows], mask[rows], wave, data.redshift[rows], spec)
        ok = prep.fit
        fitted[rows] = ok
        if not ok.any():
            continue
        meta = estimator_meta(data.redshift[rows][ok], wave, inst.lsf_fwhm(wave), spec)
        pred = est.predict(prep.x[ok], meta)
        for key, value in pred.items():
            if key not in parts:
                parts[key] = np.full((n, *value.shape[1:]), np.nan, np.float32)
            parts[key][rows[ok]] = value
    return parts, fitted


def _edge_bias(pred: np.ndarray, truth: np.ndarray, lo: float, hi: float) -> dict[str, float]:
    span = hi - lo
    d = pred - truth
    out = {}
    for name, sel in (
        ("bias_low_edge", truth <= lo + EDGE_FRACTION * span),
        ("bias_high_edge", truth >= hi - EDGE_FRACTION * span),
    ):
        ok = sel & np.isfinite(d)
        out[name] = float(np.median(d[ok])) if ok.sum() >= 10 else float("nan")
        out[name.replace("bias", "n")] = int(ok.sum())
    return out


def score(
    pred: dict[str, np.ndarray],
    fitted: np.ndarray,
    data: NoiseFreeSet,
    names: Sequence[str],
    lib: SSPLibrary,
    select: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of fitted spectra (optionally a subset): bias, robust sigma, coverage, edge biases."""
    sel = fitted if select is None else fitted & select
    truth = {n: data.labels[sel, i] for i, n in enumerate(data.label_names)}
    available = [n for n in names if n in pred and n in truth]
    out = score_predictions({k: v[sel] for k, v in pred.items()}, truth, available)
    ranges = {"log_age": (lib.log_age[0], lib.log_age[-1]), "metallicity": (lib.metal[0], lib.metal[-1])}
    for n in available:
        if n in ranges:
            out[n].update(_edge_bias(pred[n][sel], truth[n], *ranges[n]))
    out["n"] = int(sel.sum())
    out["not_fitted"] = int(((~fitted) & (select if select is not None else True)).sum())
    return out


def evaluate(
    model: str,
    snrs: Sequence[float] = (10, 20, 30, 50),
    n: int = 500,
    baseline: str | None = None,
    seed: int | None = None,
    lib: SSPLibrary | None = None,
    families: Sequence[str] = ("ssp", "csfh"),
    png: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score ``model`` (and ``baseline``) on held-out spectra at each S/N.

    Returns ``{"snr": {"30": {"model": {...}, "ppxf": {...}}}, "by_family": {...}, ...}`` where the
    top-level ``snr`` block pools the families and each entry maps a label to bias, robust_sigma,
    coverage_68, coverage_95 (and edge biases for log_age and metallicity).
    """
    lib = lib or load_ssp_library()
    est = load_estimator(model)
    tcfg = trainset_from_record(est.manifest.raw.get("training", {}).get("config", {}).get("trainset", {}))
    seed = _held_out_seed(tcfg, seed, model)
    estimators = {"model": est}
    if baseline:
        estimators[baseline] = load_estimator(baseline)
    names = [s.name for s in est.manifest.outputs if s.name in tcfg.labels]
    spec = est.manifest.input
    sets = {f: synthesise(heldout_config(tcfg, f, n, seed + k), lib, spec) for k, f in enumerate(families)}
    result: dict[str, Any] = {
        "model": est.manifest.model_id,
        "baseline": baseline,
        "n_per_family": n,
        "families": list(families),
        "seed": seed,
        "snr": {},
        "by_family": {},
        "note": "held-out spectra synthesised with a seed never used in training or "
        "validation; the same noisy spectra go to every estimator",
    }
    curves: dict[str, dict[str, Any]] = {}
    with progress.bar(len(snrs) * len(sets) * len(estimators), "held-out sets", unit="set") as advance:
        for snr in snrs:
            key = f"{snr:g}"
            pooled = _score_families(float(snr), sets, estimators, tcfg, seed, names, lib, result["by_family"], advance)
            result["snr"][key] = {}
            for label, acc in pooled.items():
                data, pred, fitted = acc.pooled()
                result["snr"][key][label] = score(pred, fitted, data, names, lib)
                curves.setdefault(key, {})[label] = (pred, fitted, data)
    if png:
        plot_predicted_vs_true(curves, names, png)
        result["figure"] = str(png)
    return result


def _held_out_seed(tcfg: TrainsetConfig, seed: int | None, model: str) -> int:
    """The held-out seed (default: the training seed + :data:`EVAL_SEED_OFFSET`); never one that
    trained or validated the model."""
    seed = tcfg.seed + EVAL_SEED_OFFSET if seed is None else seed
    if seed in {tcfg.seed, tcfg.seed + 1_000_003}:  # training and validation
        raise ValueError(f"seed {seed} was used to train or validate {model}; choose another")
    return seed


@dataclass
class _Pooled:
    """One estimator's predictions on every family at one S/N, pooled afterwards."""

    data: list[NoiseFreeSet] = field(default_factory=list)
    pred: list[dict[str, np.ndarray]] = field(default_factory=list)
    fitted: list[np.ndarray] = field(default_factory=list)

    def pooled(self) -> tuple[NoiseFreeSet, dict[str, np.ndarray], np.ndarray]:
        keys = set.intersection(*(set(p) for p in self.pred))
        pred = {k: np.concatenate([p[k] for p in self.pred]) for k in keys}
        return NoiseFreeSet.concat(self.data), pred, np.concatenate(self.fitted)


def _score_families(
    snr: float,
    sets: dict[str, NoiseFreeSet],
    estimators: dict[str, Estimator],
    tcfg: TrainsetConfig,
    seed: int,
    names: Sequence[str],
    lib: SSPLibrary,
    by_family: dict[str, Any],
    advance,
) -> dict[str, _Pooled]:
    """Every family's spectra at ``snr`` with one noise draw, through every estimator: the scores
    per family (into ``by_family``) and the predictions to pool."""
    key = f"{snr:g}"
    pooled: dict[str, _Pooled] = {}
    for k, (fam, data) in enumerate(sets.items()):
        noisy_set = dataclasses.replace(data, snr=np.full(len(data), snr))
        flux, var, mask = observe_noisy(noisy_set, np.random.default_rng([seed, int(snr * 10), k]), tcfg)
        for label, e in estimators.items():
            log.info(f"S/N {key}: {fam} spectra through {label}")
            pred, fitted = predict_noisy(e, noisy_set, flux, var, mask, tcfg)
            scores = score(pred, fitted, noisy_set, names, lib)
            by_family.setdefault(fam, {"snr": {}})["snr"].setdefault(key, {})[label] = scores
            acc = pooled.setdefault(label, _Pooled())
            acc.data.append(noisy_set)
            acc.pred.append(pred)
            acc.fitted.append(fitted)
            advance(1)
    return pooled


def plot_predicted_vs_true(curves: dict, names: Sequence[str], path: str | os.PathLike) -> Path:
    """Predicted vs true per label (rows) and S/N (columns); continuous SFHs in orange."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    snrs = list(curves)
    estimators = list(next(iter(curves.values())))
    fig, axes = plt.subplots(
        len(names),
        len(snrs) * len(estimators),
        figsize=(3.0 * len(snrs) * len(estimators), 2.8 * len(names)),
        squeeze=False,
    )
    for j, key in enumerate(snrs):
        for e, label in enumerate(estimators):
            pred, fitted, data = curves[key][label]
            col = j * len(estimators) + e
            for i, name in enumerate(names):
                ax = axes[i, col]
                if name not in pred:
                    ax.axis("off")
                    continue
                t = data.labels[:, list(data.label_names).index(name)]
                p = pred[name]
                for kind, colour in ((0, "tab:blue"), (CONTINUOUS_SFH, "tab:orange")):
                    s = fitted & (data.kind == kind)
                    ax.scatter(t[s], p[s], s=2, alpha=0.4, color=colour)
                lo, hi = np.nanmin(t), np.nanmax(t)
                ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
                d = p[fitted] - t[fitted]
                ax.set_title(
                    f"{label} S/N {key}: {name}\nbias {np.nanmedian(d):+.3f} sigma {robust_sigma(d):.3f}", fontsize=8
                )
                ax.tick_params(labelsize=7)
    path = save_figure(fig, path, dpi=80)
    return path


def write_json(result: dict, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(result, indent=2, default=float))
