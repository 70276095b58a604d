"""Held-out evaluation of a bundle by S/N bin, redshift bin and spectral class, with figures.

``survey-proc evaluate-bins BUNDLE`` synthesises new spectra from the bundle's own training-set recipe
(read from its manifest) with a seed that training never used, in two classes — ``passive`` (no
emission lines) and ``star_forming`` (nebular lines on every spectrum, H-alpha EW 0-max) — runs
them through the engine's ``prepare`` and the exported model file, and reports, per bin, the
median bias and the robust scatter (1.4826 MAD) of prediction minus truth and the share of truths
inside the predicted 68 % interval. Writes ``evaluation.json`` and ``pred_vs_true.png`` /
``scatter_by_bin.png``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from survey_proc.estimators import load_estimator
from survey_proc.figures import save_figure
from survey_proc.ssp import load_ssp_library
from survey_proc.stores import NOT_FITTED, PROPERTIES
from survey_proc.training._dataset import TrainsetConfig, make_inputs, synthesise, trainset_from_record
from survey_proc.training._metrics import score_predictions

log = logging.getLogger(__name__)

#: classes of held-out spectra: TrainsetConfig overrides
CLASSES: dict[str, dict[str, Any]] = {
    "passive": {"emission_fraction": 0.0},
    "star_forming": {"emission_fraction": 1.0},
}


def binned_scores(
    pred: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    names: list[str],
    key: np.ndarray,
    edges: list[float] | None = None,
    labels: list[str] | None = None,
) -> dict[str, dict]:
    """:func:`score_predictions` per bin of ``key`` (numeric with ``edges``, or categorical)."""
    out: dict[str, dict] = {}
    if edges is not None:
        groups = [(f"{lo:g}-{hi:g}", (key >= lo) & (key < hi)) for lo, hi in itertools.pairwise(edges)]
    else:
        groups = [(str(lab), key == lab) for lab in (labels or sorted(set(key.tolist())))]
    for name, sel in groups:
        if sel.sum() == 0:
            continue
        scores = score_predictions({k: v[sel] for k, v in pred.items()}, {k: v[sel] for k, v in truth.items()}, names)
        out[name] = {"n": int(sel.sum()), **scores}
    return out


def trainset_of(manifest_raw: dict) -> TrainsetConfig:
    """The TrainsetConfig a bundle was trained with (from its manifest), drawing from the bundle's own SSP
    library only (a model trained on several is scored in library, as ``survey-proc evaluate`` does)."""
    recorded = trainset_from_record(manifest_raw["training"]["config"].get("trainset", {}))
    return dataclasses.replace(recorded, libraries=None)


def evaluate_held_out(
    bundle: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    n_per_class: int = 2000,
    seed: int = 90_000_001,
    snr_edges: tuple[float, ...] = (5, 10, 20, 35, 50.01),
    z_edges: tuple[float, ...] | None = None,
    batch: int = 32,
) -> dict:
    """Evaluate ``bundle`` on new synthetic spectra (``seed`` never used in training); returns the
    numbers written to ``out_dir/evaluation.json`` (:func:`format_evaluation` makes a table of them).
    ``batch``: spectra per redshift draw (small, so the redshift bins hold many redshifts)."""
    est = load_estimator(bundle)
    ts = trainset_of(est.manifest.raw)
    train_seeds = {ts.seed, ts.seed + 1_000_003, ts.seed + 2_000_003}
    if seed in train_seeds or seed + 1 in train_seeds:
        raise ValueError(f"seed {seed} was used to build the training/validation/test sets; pick another")
    names = list(ts.labels)
    held = _predict_classes(est, ts, n_per_class, seed, batch)
    lo, hi = ts.redshift_range
    z_edges = z_edges or (*tuple(np.round(np.linspace(lo, hi, 6), 4)[:-1].tolist()), hi + 1e-06)
    result = {
        "bundle": str(Path(bundle)),
        "model_id": est.manifest.model_id,
        "note": (
            f"{n_per_class} spectra per class synthesised with seed {seed} (+class index), never used in "
            "training/validation/test; S/N per Angstrom drawn as in training; scored through the engine's "
            "prepare and the exported TorchScript file"
        ),
        **_binned(held, names, snr_edges, z_edges),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    plot_pred_vs_true(
        held.pred, held.truth, names, held.snr, held.cls, out / "pred_vs_true.png", title=est.manifest.model_id
    )
    plot_scatter_by_bin(result, names, out / "scatter_by_bin.png")
    return result


@dataclass
class HeldOut:
    """Predictions and truths of the held-out spectra the engine would fit, with their S/N,
    redshift and class."""

    pred: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    snr: np.ndarray
    z: np.ndarray
    cls: np.ndarray


def _predict_classes(est, ts: TrainsetConfig, n_per_class: int, seed: int, batch: int) -> HeldOut:
    """Each class's spectra (seed + class index), one noise draw, through the engine's ``prepare``
    and the estimator."""
    spec, lib = est.manifest.input, load_ssp_library()
    preds, truths, snrs, zs, classes = [], [], [], [], []
    for k, (cls, overrides) in enumerate(CLASSES.items()):
        cfg = dataclasses.replace(ts, n=n_per_class, seed=seed + k, noiseless_fraction=0.0, batch=batch, **overrides)
        data = synthesise(cfg, lib, spec)
        x, flags, _ = make_inputs(data, np.random.default_rng([seed, k]), cfg, spec)
        fit = (flags & int(NOT_FITTED)) == 0
        preds.append(est.predict(x[fit]))
        truths.append(data.labels[fit])
        snrs.append(data.snr[fit])
        zs.append(data.redshift[fit])
        classes.append(np.full(int(fit.sum()), cls))
        log.info(f"{cls}: {int(fit.sum())} of {len(data)} held-out spectra fitted")
    truth = np.concatenate(truths)
    return HeldOut(
        {n: np.concatenate([p[n] for p in preds]) for n in preds[0]},
        {n: truth[:, i] for i, n in enumerate(ts.labels)},
        np.concatenate(snrs),
        np.concatenate(zs),
        np.concatenate(classes),
    )


def _binned(held: HeldOut, names: list[str], snr_edges, z_edges) -> dict[str, Any]:
    """The scores overall and by S/N, redshift, class, and class and S/N."""
    pred, truth, snr, cls = held.pred, held.truth, held.snr, held.cls
    return {
        "overall": {"n": int(snr.size), **score_predictions(pred, truth, names)},
        "by_snr": binned_scores(pred, truth, names, snr, list(snr_edges)),
        "by_redshift": binned_scores(pred, truth, names, held.z, list(z_edges)),
        "by_class": binned_scores(pred, truth, names, cls, labels=list(CLASSES)),
        "by_class_and_snr": {
            c: binned_scores(
                {k: v[cls == c] for k, v in pred.items()},
                {k: v[cls == c] for k, v in truth.items()},
                names,
                snr[cls == c],
                list(snr_edges),
            )
            for c in CLASSES
        },
    }


def format_evaluation(result: dict, names: list[str] | None = None) -> str:
    """A readable table: bias / robust scatter per label (default: every label scored) for every bin."""
    names = names or [k for k, v in result["overall"].items() if isinstance(v, dict)]
    lines = []
    head = f"{'bin':>22s} {'n':>5s} " + " ".join(f"{n:>19s}" for n in names)
    for section in ("overall", "by_snr", "by_redshift", "by_class"):
        lines.append(f"{section} (bias / robust scatter)")
        lines.append(head)
        entries = {"all": result[section]} if section == "overall" else result[section]
        for key, entry in entries.items():
            cells = " ".join(f"{entry[n]['bias']:+8.3f} / {entry[n]['robust_sigma']:7.3f}" for n in names)
            lines.append(f"{key:>22s} {entry['n']:5d} {cells}")
    return "\n".join(lines)


def plot_pred_vs_true(
    pred: dict, truth: dict, names: list[str], snr: np.ndarray, cls: np.ndarray, path: Path, title: str = ""
) -> Path:
    """Predicted vs true per label, coloured by S/N; passive as dots, star-forming as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), layout="constrained")
    for ax, name in zip(np.atleast_1d(axes), names):
        t, p = truth[name], pred[name]
        for c, marker in (("passive", "."), ("star_forming", "x")):
            sel = cls == c
            sc = ax.scatter(
                t[sel],
                p[sel],
                c=snr[sel],
                s=4,
                marker=marker,
                cmap="viridis",
                vmin=5,
                vmax=50,
                alpha=0.6,
                linewidths=0.5,
                label=c.replace("_", "-"),
            )
        lims = [min(t.min(), p.min()), max(t.max(), p.max())]
        ax.plot(lims, lims, "k-", lw=0.8)
        units = PROPERTIES.get(name, {}).get("units", "")
        ax.set_xlabel(f"true {name} [{units}]")
        ax.set_ylabel(f"predicted {name} [{units}]")
        ax.legend(loc="upper left", fontsize=7, markerscale=3)
    fig.colorbar(sc, ax=axes, label="S/N per Angstrom", shrink=0.8)
    fig.suptitle(f"{title}: held-out synthetic spectra")
    save_figure(fig, path, dpi=90, tight=False)
    return path


def plot_scatter_by_bin(result: dict, names: list[str], path: Path) -> Path:
    """Robust scatter and bias per label against S/N bin, per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(names), figsize=(4.0 * len(names), 6), sharex=True)
    for j, name in enumerate(names):
        for c, entries in result["by_class_and_snr"].items():
            bins = list(entries)
            x = [np.mean([float(v) for v in b.split("-")]) for b in bins]
            axes[0, j].plot(x, [entries[b][name]["robust_sigma"] for b in bins], "o-", label=c)
            axes[1, j].plot(x, [entries[b][name]["bias"] for b in bins], "o-", label=c)
        axes[0, j].set_title(name)
        axes[1, j].axhline(0, color="k", lw=0.6)
        axes[1, j].set_xlabel("S/N per Angstrom (bin centre)")
    axes[0, 0].set_ylabel("robust scatter")
    axes[1, 0].set_ylabel("median bias")
    axes[0, 0].legend(fontsize=8)
    save_figure(fig, path, dpi=90)
    return path
