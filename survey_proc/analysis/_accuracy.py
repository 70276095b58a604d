"""Accuracy of maps against truth maps, and the figure comparing them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc.figures import save_figure
from survey_proc.stores import robust_sigma

DEFAULT_PROPERTIES = ("log_age", "metallicity", "av", "sigma")


def accuracy_vs_truth(
    maps: xr.Dataset, truth: xr.Dataset, names: Sequence[str] = DEFAULT_PROPERTIES, good_only: bool = True
) -> dict:
    """Bias (median) and robust scatter (1.4826 MAD) of maps - truth per property.

    Only spaxels with ``flag == 0`` count when ``good_only``; the result also says how many were
    used and the flagged fraction, and the 68 % interval coverage where ``<name>_err`` exists.
    """
    flag = np.asarray(maps["flag"].values)
    good = flag == 0 if good_only else np.ones(flag.shape, bool)
    result: dict = {"spaxels": int(flag.size), "used": int(good.sum()), "flagged_fraction": float(1.0 - good.mean())}
    for name in names:
        if name not in maps or name not in truth:
            continue
        pred = np.asarray(maps[name].values, np.float64)
        true = np.asarray(truth[name].values, np.float64)
        ok = good & np.isfinite(pred) & np.isfinite(true)
        diff = pred[ok] - true[ok]
        entry = {
            "bias": float(np.median(diff)) if diff.size else float("nan"),
            "robust_sigma": robust_sigma(diff),
            "n": int(ok.sum()),
            "units": maps[name].attrs.get("units", ""),
        }
        if f"{name}_err" in maps:
            err = np.asarray(maps[f"{name}_err"].values, np.float64)[ok]
            entry["coverage_68"] = float(np.mean(np.abs(diff) <= err)) if diff.size else float("nan")
        result[name] = entry
    return result


def plot_maps_vs_truth(
    maps: xr.Dataset,
    truth: xr.Dataset,
    path: str | os.PathLike,
    names: Sequence[str] = DEFAULT_PROPERTIES,
    title: str = "",
) -> Path:
    """PNG with one row per property: truth, estimate, estimate - truth, estimate vs truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in names if n in maps and n in truth]
    flag = np.asarray(maps["flag"].values)
    fig, axes = plt.subplots(len(names), 4, figsize=(14, 3.1 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        true = np.asarray(truth[name].values, np.float64)
        pred = np.asarray(maps[name].values, np.float64)
        shown = np.where(flag == 0, pred, np.nan)
        lo, hi = np.nanpercentile(true, [2, 98])
        units = maps[name].attrs.get("units", "")
        for ax, img, label in ((row[0], true, "truth"), (row[1], shown, "estimate (flag = 0)")):
            im = ax.imshow(img, origin="lower", vmin=lo, vmax=hi, cmap="viridis")
            ax.set_title(f"{name} {label}", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8, label=units)
        diff = shown - true
        lim = np.nanpercentile(np.abs(diff), 95) if np.isfinite(diff).any() else 1.0
        im = row[2].imshow(diff, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
        row[2].set_title(f"estimate - truth (robust sigma {robust_sigma(diff):.3g} {units})", fontsize=9)
        fig.colorbar(im, ax=row[2], shrink=0.8)
        ok = np.isfinite(shown) & np.isfinite(true)
        row[3].scatter(true[ok], shown[ok], s=4, alpha=0.6)
        row[3].plot([lo, hi], [lo, hi], "k--", lw=1)
        row[3].set_xlabel(f"true {name}")
        row[3].set_ylabel(f"estimated {name}")
        for ax in row[:3]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    path = save_figure(fig, path, dpi=90)
    return path
