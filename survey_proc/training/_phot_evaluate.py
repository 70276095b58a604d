"""Held-out evaluation of the photometric models the way their papers do (``survey-proc evaluate``).

Two sets, after Liew-Cain et al. (2021):

- **Set A**: the pixels of training galaxies that training held out at random (their neighbours
  and the same galaxy's populations were trained on: optimistic);
- **Set B**: whole galaxies never seen in training, drawn like the training set with a seed of
  their own (the honest estimate for new data).

Both are regenerated from the training configuration in the bundle's manifest (the galaxies, the
split and the held-out pixels are deterministic), observed at a chosen depth (S/N per Angstrom at
the brightest pixel, as ``survey-proc mock --snr``) with one noise draw, and predicted through the
exported file and the engine's own preprocessing, one galaxy at a time. Scores per property: median
bias, robust sigma and the coverage of the 68 % and 95 % intervals, over the pixels the engine
would report (fitted, median band S/N >= the model's ``min_snr``); the star-formation-rate density
only where the truth is above the mocks' detection floor. A model with ``star_forming_probability``
(an image model's ``star_forming`` hurdle) is also scored on how well that tells the star-forming
pixels from the rest (ROC AUC, Brier score, accuracy, reliability).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from survey_proc.estimators import Estimator, load_estimator
from survey_proc.figures import save_figure
from survey_proc.ssp import SSPLibrary, load_ssp_library
from survey_proc.stores import robust_sigma
from survey_proc.synth import SFR_FLOOR, star_forming
from survey_proc.training._bundle import add_held_out_metrics
from survey_proc.training._galaxies import (
    SFR_LABEL,
    GalaxySet,
    holdout_pixels,
    prepared_galaxies,
    split_galaxies,
    synthesise_galaxies,
)
from survey_proc.training._phot_trainer import PhotTrainConfig, metrics_by_snr
from survey_proc.training._star_forming import PROBABILITY, classification_scores

log = logging.getLogger(__name__)

#: the seed offset of Set B galaxies (training draws its galaxies from the config's seed)
SET_B_SEED_OFFSET = 4_000_037

#: what the papers report, for the tables beside ours
PAPERS = {
    "sed": {
        "reference": "Liew-Cain et al. 2021 (J-PAS-like narrow bands, CNN per pixel)",
        "set_a": "0.05 / 0.03 dex",
        "set_b": "0.16 dex",
    },
    "image": {
        "reference": "Buck & Wolf 2021 (PICASSSO, ugriz images to maps)",
        "set_a": "",
        "set_b": "<~20 % per pixel (~0.08 dex) in stellar mass",
    },
}

NOTE = (
    "set_a: pixels of training galaxies held out of training at random (their neighbours were trained "
    "on: optimistic); set_b: whole galaxies never trained on, drawn like the training set with a seed of "
    "their own (the honest estimate for new data). One noise draw at the stated depth, predicted through "
    "the exported TorchScript file and the engine's preprocessing; pixels the engine reports (fitted, median "
    f"S/N per band >= min_snr); {SFR_LABEL} only where the true Sigma_SFR >= the detection floor "
    f"{SFR_FLOOR:g} Msun/yr/kpc2."
)


@dataclass
class Predictions:
    """A set's predictions and truth, one row per pixel of its galaxies (raster order, galaxy by galaxy)."""

    pred: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    snr: np.ndarray  #: median S/N per band
    fitted: np.ndarray  #: bool: the engine would make an estimate


def predict_galaxies(est: Estimator, data: GalaxySet, rng: np.random.Generator, mask_fraction: float) -> Predictions:
    """One noise draw of ``data`` through ``est``'s own preprocessing (its input kind's hooks), galaxy
    by galaxy as the engine runs a tile; every output row per pixel (NaN where not fitted)."""
    g, h, w, _ = data.flux.shape
    parts: dict[str, np.ndarray] = {}
    snr = np.empty(g * h * w, np.float32)
    fitted = np.zeros(g * h * w, bool)
    for k, prep in enumerate(prepared_galaxies(data, est.manifest.input, rng, mask_fraction)):
        rows = slice(k * h * w, (k + 1) * h * w)
        snr[rows], fitted[rows] = prep.snr, prep.fit
        x, sel = prep.batch()
        if not sel.any():
            continue
        for key, value in est.predict(x).items():
            out = parts.setdefault(key, np.full(g * h * w, np.nan, np.float32))
            out[np.arange(rows.start, rows.stop)[sel]] = value
    truth = {n: data.labels[..., i].reshape(-1) for i, n in enumerate(data.label_names)}
    return Predictions(parts, truth, snr, fitted)


def scored_pixels(truth: dict[str, np.ndarray], name: str, base: np.ndarray) -> np.ndarray:
    """Where ``name`` is scored: ``base``, and for the star-formation-rate density the truth above the floor."""
    return base & star_forming(truth[name]) if name == SFR_LABEL else base


def score_set(
    p: Predictions, select: np.ndarray, names: Sequence[str], min_snr: float, bins: tuple[float, ...]
) -> dict[str, Any]:
    """Scores by S/N bin and over all reported pixels (``metrics_by_snr``), per property over its own
    scored pixels."""
    base = select & p.fitted & np.isfinite(p.snr)
    out: dict[str, Any] = {}
    for name in names:
        sel = scored_pixels(p.truth, name, base)
        keys = (name, f"{name}_err")
        by_snr = metrics_by_snr(
            {k: p.pred[k][sel] for k in keys if k in p.pred}, {name: p.truth[name][sel]}, p.snr[sel], [name], bins
        )
        for label, block in by_snr.items():
            out.setdefault(label, {})[name] = block[name]
    if PROBABILITY in p.pred:  # a star_forming model: how well it tells where stars form
        reported = base & (p.snr >= min_snr)  # the pixels the engine reports, as the labels' scores
        out["star_forming"] = classification_scores(p.pred[PROBABILITY][reported], p.truth[SFR_LABEL][reported])
    out["min_snr"] = min_snr
    return out


def held_out_sets(
    cfg: PhotTrainConfig, lib: SSPLibrary, n_galaxies: int, n_set_a: int, seed: int | None
) -> dict[str, tuple[GalaxySet, np.ndarray]]:
    """{"set_a": (training galaxies, their held-out pixels), "set_b": (new galaxies, all pixels)}."""
    gcfg = cfg.galaxies
    train, _, _ = split_galaxies(gcfg.n_galaxies, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    shape = (gcfg.n_galaxies, gcfg.size, gcfg.size)
    hold = holdout_pixels(shape, train, cfg.pixel_holdout, cfg.seed)
    chosen = np.sort(np.random.default_rng([cfg.seed, 11]).choice(train, min(n_set_a, train.size), replace=False))
    labels = tuple(cfg.labels)
    set_a = synthesise_galaxies(gcfg, lib, labels, indices=chosen)
    new_seed = gcfg.seed + SET_B_SEED_OFFSET if seed is None else seed
    if new_seed == gcfg.seed:
        raise ValueError(f"seed {seed} drew the training galaxies; choose another")
    set_b = synthesise_galaxies(dataclasses.replace(gcfg, n_galaxies=n_galaxies, seed=new_seed), lib, labels)
    return {"set_a": (set_a, hold[chosen]), "set_b": (set_b, np.ones(set_b.flux.shape[:3], bool))}


#: galaxies in Set A and in Set B by default: each galaxy's populations (one [M/H] level, one star-formation
#: history) move all its pixels together, so a score's sampling error goes with the galaxies, not the
#: pixels; with 24 the ugriz [M/H] bias read -0.13, with 96 -0.08, with 192 -0.05 (the network predicts
#: near its prior: 24 galaxies' mean [M/H] was 0.12 dex off the population's)
SET_GALAXIES = 192


def evaluate_photometric(
    model: str,
    snrs: Sequence[float] = (30.0,),
    galaxies: int = SET_GALAXIES,
    set_a_galaxies: int = SET_GALAXIES,
    seed: int | None = None,
    lib: SSPLibrary | None = None,
    png: str | Path | None = None,
) -> dict[str, Any]:
    """Score a photometric ``model`` on Set A and Set B at each depth in ``snrs`` (S/N per Angstrom at
    the brightest pixel). Returns ``{"snr": {"30": {"set_a": {"all": {prop: scores}, "3-5": ...},
    "set_b": ...}}, ...}``; with ``png``, predicted against true values at the first depth."""
    est = load_estimator(model)
    raw = est.manifest.raw.get("training", {}).get("config")
    if not raw or raw.get("kind") not in ("sed", "image"):
        raise ValueError(f"{model} records no photometric training configuration; it cannot be evaluated here")
    cfg = PhotTrainConfig.from_dict(raw)
    lib = lib or load_ssp_library()
    names = [o.name for o in est.manifest.outputs if o.name in cfg.labels]
    sets = held_out_sets(cfg, lib, galaxies, set_a_galaxies, seed)
    result: dict[str, Any] = {
        "model": est.manifest.model_id,
        "kind": cfg.kind,
        "galaxies": {k: len(d) for k, (d, _) in sets.items()},
        "pixels_held_out_set_a": int(sets["set_a"][1].sum()),
        "sfr_floor": SFR_FLOOR,
        "paper": PAPERS[cfg.kind],
        "snr": {},
        "note": NOTE,
    }
    curves = {}
    for j, snr in enumerate(snrs):
        key = f"{snr:g}"
        result["snr"][key] = {}
        for k, (name, (data, select)) in enumerate(sets.items()):
            p = predict_galaxies(
                est, data.at_snr(snr), np.random.default_rng([cfg.seed, 7, j, k]), cfg.galaxies.mask_fraction
            )
            result["snr"][key][name] = score_set(p, select.reshape(-1), names, cfg.min_snr, cfg.snr_bins)
            if j == 0:
                curves[name] = (p, select.reshape(-1))
    if png:
        result["figure"] = str(plot_sets(curves, names, cfg.min_snr, png, f"{result['model']} at S/N {snrs[0]:g}"))
    return result


def evaluate_sets(
    bundle: Path,
    cfg: PhotTrainConfig,
    sets: dict[str, tuple[GalaxySet, np.ndarray | None]],
    names: Sequence[str],
    png: Path,
) -> dict[str, Any]:
    """A trainer's held-out metrics: each set (galaxies, pixels to score or None: all) at its own
    depths through the exported ``bundle``, recorded in its manifest; the figure of every set."""
    est = load_estimator(bundle)
    metrics: dict[str, Any] = {}
    curves = {}
    for k, (key, (data, select)) in enumerate(sets.items()):
        select = np.ones(data.flux.shape[:3], bool) if select is None else select
        p = predict_galaxies(est, data, np.random.default_rng([cfg.seed, 7, k]), cfg.galaxies.mask_fraction)
        metrics[key] = score_set(p, select.reshape(-1), names, cfg.min_snr, cfg.snr_bins)
        curves[key] = (p, select.reshape(-1))
    plot_sets(curves, names, cfg.min_snr, png, f"{cfg.name}: held out, at the training set's depths")
    add_held_out_metrics(bundle, metrics, NOTE)
    return metrics


def plot_sets(curves: dict, names: Sequence[str], min_snr: float, path: str | Path, title: str) -> Path:
    """Predicted against true values: one row per set, one column per property."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(curves), len(names), figsize=(4.0 * len(names), 3.8 * len(curves)), squeeze=False)
    for row, (label, (p, select)) in enumerate(curves.items()):
        base = select & p.fitted & (p.snr >= min_snr)
        for ax, name in zip(axes[row], names):
            sel = scored_pixels(p.truth, name, base) & np.isfinite(p.pred[name])
            t, y = p.truth[name][sel], p.pred[name][sel]
            ax.hexbin(t, y, gridsize=45, bins="log", cmap="viridis", mincnt=1)
            lo, hi = np.percentile(t, [0.5, 99.5]) if t.size else (0, 1)
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            d = y - t
            ax.set_title(
                f"{label}: {name}\nbias {np.median(d):+.3f}, robust sigma {robust_sigma(d):.3f}" if d.size else name,
                fontsize=8,
            )
            ax.set_xlabel(f"true {name}", fontsize=8)
            ax.set_ylabel("predicted", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=80)


def format_photometric(result: dict[str, Any]) -> str:
    """A Markdown table of a result of :func:`evaluate_photometric`: every set, property and depth."""
    paper = result["paper"]
    lines = [
        f"**{result['model']}** ({paper['reference']}): Set A = {result['pixels_held_out_set_a']} held-out pixels "
        f"of {result['galaxies']['set_a']} training galaxies, Set B = {result['galaxies']['set_b']} new galaxies; "
        "pixels with S/N per band >= min_snr.",
        "",
        "| S/N | set | property | n | bias | σ_rob | cov68 | cov95 | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, sets in result["snr"].items():
        for set_name, block in sets.items():
            for name, m in block["all"].items():
                if not isinstance(m, dict):
                    continue
                lines.append(
                    f"| {key} | {set_name[-1].upper()} | {name} | {m['n']} | {m['bias']:+.3f} | "
                    f"{m['robust_sigma']:.3f} | {m.get('coverage_68', float('nan')):.2f} | "
                    f"{m.get('coverage_95', float('nan')):.2f} | {paper.get(set_name, '')} |"
                )
    return "\n".join(lines + _star_forming_lines(result))


def _star_forming_lines(result: dict[str, Any]) -> list[str]:
    """A second table for a model with ``star_forming_probability``: how well it finds star formation."""
    rows = [
        f"| {key} | {set_name[-1].upper()} | {c['n']} | {c['star_forming_share']:.2f} | {c['mean_probability']:.2f} "
        f"| {c['auc']:.3f} | {c['brier']:.3f} | {c['accuracy']:.3f} |"
        for key, sets in result["snr"].items()
        for set_name, block in sets.items()
        if (c := block.get("star_forming")) and c.get("n")
    ]
    if not rows:
        return []
    head = [
        "",
        f"{PROBABILITY} against star formation at the floor or more (true Sigma_SFR >= {SFR_FLOOR:.3g} Msun/yr/kpc2):",
        "",
        "| S/N | set | n | star-forming share | mean probability | ROC AUC | Brier | accuracy at 0.5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return head + rows
