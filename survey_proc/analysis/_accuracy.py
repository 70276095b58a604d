"""Accuracy of maps against truth maps, and the figure comparing them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc.figures import colormap, pyplot, save_figure
from survey_proc.stores import robust_sigma
from survey_proc.synth import star_forming

DEFAULT_PROPERTIES = ("log_age", "metallicity", "av", "sigma")


@dataclass(frozen=True)
class PropertyAccuracy:
    """How one property's map departs from the truth over the pixels used."""

    bias: float  #: median of estimate - truth
    robust_sigma: float  #: 1.4826 MAD of estimate - truth
    n: int  #: pixels used
    units: str
    coverage_68: float | None = None  #: fraction with |estimate - truth| <= <name>_err (None: no _err map)

    def to_json(self) -> dict:
        """The JSON record (``coverage_68`` only where the maps carry errors)."""
        out = asdict(self)
        if self.coverage_68 is None:
            del out["coverage_68"]
        return out


@dataclass(frozen=True)
class Accuracy:
    """Result of :func:`accuracy_vs_truth`: the pixels counted and each property's accuracy."""

    spaxels: int  #: pixels in the maps
    used: int  #: pixels counted (flag == 0 when only good ones count)
    flagged_fraction: float
    properties: dict[str, PropertyAccuracy] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The JSON written beside the demo's figure: the counts, then one entry per property."""
        head = {"spaxels": self.spaxels, "used": self.used, "flagged_fraction": self.flagged_fraction}
        return head | {name: acc.to_json() for name, acc in self.properties.items()}


def compared_pixels(maps: xr.Dataset, truth: xr.Dataset, name: str) -> np.ndarray | bool:
    """Where ``name`` can be compared with the truth: everywhere, but for the SFR density of a model that
    maps it where stars form (it has ``star_forming_probability``): there, the truth's star-forming pixels."""
    if name != "log_sfr_surface_density" or "star_forming_probability" not in maps:
        return True
    return star_forming(truth[name].values)


def _property_accuracy(
    pred: np.ndarray, true: np.ndarray, good: np.ndarray, units: str = "", err: np.ndarray | None = None
) -> PropertyAccuracy:
    """Bias, robust scatter and (with ``err``) 68 % coverage of ``pred - true`` over the good, finite pixels."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    ok = good & np.isfinite(pred) & np.isfinite(true)
    diff = pred[ok] - true[ok]
    coverage = None
    if err is not None:
        inside = np.abs(diff) <= np.asarray(err, np.float64)[ok]
        coverage = float(np.mean(inside)) if diff.size else float("nan")
    return PropertyAccuracy(
        bias=float(np.median(diff)) if diff.size else float("nan"),
        robust_sigma=robust_sigma(diff),
        n=int(ok.sum()),
        units=units,
        coverage_68=coverage,
    )


def accuracy_vs_truth(
    maps: xr.Dataset, truth: xr.Dataset, names: Sequence[str] = DEFAULT_PROPERTIES, good_only: bool = True
) -> Accuracy:
    """Bias (median) and robust scatter (1.4826 MAD) of maps - truth per property.

    Only spaxels with ``flag == 0`` count when ``good_only``; the result also says how many were
    used and the flagged fraction, and the 68 % interval coverage where ``<name>_err`` exists.
    Properties missing from either dataset are left out. A map that is the SFR *where stars form*
    (beside a ``star_forming_probability``) is compared only where the truth forms stars.
    """
    flag = np.asarray(maps["flag"].values)
    good = flag == 0 if good_only else np.ones(flag.shape, bool)
    properties = {
        name: _property_accuracy(
            maps[name].values,
            truth[name].values,
            good & compared_pixels(maps, truth, name),
            maps[name].attrs.get("units", ""),
            maps[f"{name}_err"].values if f"{name}_err" in maps else None,
        )
        for name in names
        if name in maps and name in truth
    }
    return Accuracy(int(flag.size), int(good.sum()), float(1.0 - good.mean()), properties)


def plot_maps_vs_truth(
    maps: xr.Dataset,
    truth: xr.Dataset,
    path: str | os.PathLike,
    names: Sequence[str] = DEFAULT_PROPERTIES,
    title: str = "",
) -> Path:
    """PNG with one row per property: truth, estimate, estimate - truth, estimate vs truth."""
    plt = pyplot()
    names = [n for n in names if n in maps and n in truth]
    flag = np.asarray(maps["flag"].values)
    fig, axes = plt.subplots(len(names), 4, figsize=(14, 3.1 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        true = np.asarray(truth[name].values, np.float64)
        shown = np.where(
            (flag == 0) & compared_pixels(maps, truth, name), np.asarray(maps[name].values, np.float64), np.nan
        )
        _plot_property_row(fig, row, name, true, shown, maps[name].attrs.get("units", ""))
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=90)


def _plot_property_row(fig, row, name: str, true: np.ndarray, shown: np.ndarray, units: str) -> None:
    """One row of :func:`plot_maps_vs_truth`: truth, estimate, their difference, and one against the other."""
    lo, hi = np.nanpercentile(true, [2, 98])
    for ax, img, label in ((row[0], true, "truth"), (row[1], shown, "estimate (flag = 0)")):
        im = ax.imshow(img, origin="lower", vmin=lo, vmax=hi, cmap=colormap("viridis"))
        ax.set_title(f"{name} {label}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label=units)
    diff = shown - true
    lim = np.nanpercentile(np.abs(diff), 95) if np.isfinite(diff).any() else 1.0
    im = row[2].imshow(diff, origin="lower", cmap=colormap("RdBu_r"), vmin=-lim, vmax=lim)
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
