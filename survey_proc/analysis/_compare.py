"""Compare two maps stores (e.g. the neural model and pPXF), optionally against a mock's truth.

Numbers per property: bias (median of A - B), robust scatter (1.4826 MAD of A - B), RMS, Pearson
correlation of A with B, and the running median / 16-84 % band of A - B in bins of the reference
value. Figures follow the layout of GalProTE (Anwar et al. 2025) Figs. 13-18: the maps side by
side, their difference map, and the running difference against the reference value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc.figures import save_figure
from survey_proc.stores import robust_sigma

#: properties compared by default, where both stores have them
COMPARED = ("log_age", "metallicity", "av", "sigma", "velocity")


def difference_stats(values: np.ndarray, reference: np.ndarray, bins: int = 8) -> dict:
    """Bias, scatter and correlation of ``values`` against ``reference`` over the finite pairs.

    Returns {n, bias (median difference), mean_difference, robust_sigma (1.4826 MAD), rms,
    correlation (Pearson r), running: {reference, median, p16, p84, n} in quantile bins of the
    reference}. Differences are ``values - reference``.
    """
    v = np.asarray(values, np.float64).ravel()
    r = np.asarray(reference, np.float64).ravel()
    ok = np.isfinite(v) & np.isfinite(r)
    v, r = v[ok], r[ok]
    d = v - r
    nan = float("nan")
    out = {
        "n": int(d.size),
        "bias": float(np.median(d)) if d.size else nan,
        "mean_difference": float(d.mean()) if d.size else nan,
        "robust_sigma": robust_sigma(d),
        "rms": float(np.sqrt(np.mean(d**2))) if d.size else nan,
        "correlation": pearson(v, r),
        "running": running_difference(r, d, bins),
    }
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation coefficient (NaN with fewer than 3 pairs or a constant input)."""
    if a.size < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def running_difference(reference: np.ndarray, diff: np.ndarray, bins: int = 8) -> dict:
    """Median and 16/84th percentiles of ``diff`` in ``bins`` quantile bins of ``reference``."""
    empty = {"reference": [], "median": [], "p16": [], "p84": [], "n": []}
    if reference.size < 2 * bins:
        bins = max(1, reference.size // 2)
    if reference.size == 0:
        return empty
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        edges = np.array([reference.min(), reference.max() + 1e-12])
    which = np.clip(np.searchsorted(edges, reference, side="right") - 1, 0, edges.size - 2)
    res = {k: [] for k in empty}
    for k in range(edges.size - 1):
        sel = which == k
        if not sel.any():
            continue
        p16, med, p84 = np.percentile(diff[sel], [16, 50, 84])
        res["reference"].append(float(np.median(reference[sel])))
        res["median"].append(float(med))
        res["p16"].append(float(p16))
        res["p84"].append(float(p84))
        res["n"].append(int(sel.sum()))
    return res


def good_pixels(ds: xr.Dataset, good_only: bool = True) -> np.ndarray:
    """Pixels to compare: ``flag == 0``, or every fitted pixel when ``good_only`` is False."""
    from survey_proc.stores import NOT_FITTED

    flag = np.asarray(ds["flag"].values)
    return flag == 0 if good_only else (flag & np.uint8(NOT_FITTED)) == 0


@dataclass
class Comparison:
    """Result of :func:`compare_maps` (``to_json`` gives the JSON written beside the figures)."""

    labels: tuple[str, ...]
    reference: str
    pairs: dict[str, dict[str, dict]] = field(default_factory=dict)  #: "A vs B" -> property -> stats
    used: dict[str, int] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "labels": list(self.labels),
            "reference": self.reference,
            "used_pixels": self.used,
            "pairs": self.pairs,
            "figures": self.figures,
        }


def compare_maps(
    a: xr.Dataset,
    b: xr.Dataset,
    truth: xr.Dataset | None = None,
    names: Sequence[str] = COMPARED,
    labels: tuple[str, str] = ("A", "B"),
    good_only: bool = True,
    bins: int = 8,
) -> Comparison:
    """Numbers comparing maps ``a`` and ``b`` (and each against ``truth`` when given).

    Only pixels good in both stores (``flag == 0`` unless ``good_only`` is False) and finite in
    both count. Without truth, ``b`` is the reference (differences are a - b, binned in b).
    """
    good = good_pixels(a, good_only) & good_pixels(b, good_only)
    names = [n for n in names if n in a and n in b]
    ref_label = "truth" if truth is not None else labels[1]
    result = Comparison(labels=tuple(labels), reference=ref_label, used={"both_good": int(good.sum())})
    pairs = [(labels[0], a, labels[1], b)]
    if truth is not None:
        pairs = [(labels[0], a, "truth", truth), (labels[1], b, "truth", truth), *pairs]
    for la, da, lb, db in pairs:
        key = f"{la} vs {lb}"
        result.pairs[key] = {}
        for name in names:
            if name not in db:
                continue
            sel = good
            stats = difference_stats(np.asarray(da[name].values)[sel], np.asarray(db[name].values)[sel], bins)
            stats["units"] = da[name].attrs.get("units", "")
            result.pairs[key][name] = stats
    return result


def plot_comparison(
    a: xr.Dataset,
    b: xr.Dataset,
    name: str,
    path: str | os.PathLike,
    truth: xr.Dataset | None = None,
    labels: tuple[str, str] = ("A", "B"),
    good_only: bool = True,
    bins: int = 8,
) -> Path:
    """PNG for one property: maps side by side, difference map(s), running difference vs reference.

    Without truth: top [A, B], bottom [A - B, (A - B) against B]. With truth: top [truth, A, B],
    bottom [A - truth, B - truth, both against truth]. Catalogues (1-D) get the last panel only.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = good_pixels(a, good_only) & good_pixels(b, good_only)
    va = np.where(good, np.asarray(a[name].values, np.float64), np.nan)
    vb = np.where(good, np.asarray(b[name].values, np.float64), np.nan)
    units = a[name].attrs.get("units", "")
    if truth is not None and name in truth:
        ref = np.asarray(truth[name].values, np.float64)
        maps = [("truth", ref), (labels[0], va), (labels[1], vb)]
        diffs = [(f"{labels[0]} - truth", va - ref), (f"{labels[1]} - truth", vb - ref)]
        running = [(labels[0], ref, va - ref), (labels[1], ref, vb - ref)]
        ref_label = "truth"
    else:
        maps = [(labels[0], va), (labels[1], vb)]
        diffs = [(f"{labels[0]} - {labels[1]}", va - vb)]
        running = [(f"{labels[0]} - {labels[1]}", vb, va - vb)]
        ref_label = labels[1]
    if va.ndim != 2:  # a catalogue: no maps to show, only the differences against the reference
        maps, diffs = [], []
    ncol = max(len(maps), len(diffs) + 1)
    nrow = 2 if maps else 1
    fig, grid = plt.subplots(nrow, ncol, figsize=(3.6 * ncol + (2 if ncol == 1 else 0), 3.2 * nrow), squeeze=False)
    for ax in grid.ravel():
        ax.set_visible(False)
    finite = [m[np.isfinite(m)] for _, m in maps]
    stack = np.concatenate([*finite, np.zeros(0)])
    lo, hi = np.percentile(stack, [2, 98]) if stack.size else (0.0, 1.0)
    for ax, (label, img) in zip(grid[0], maps):
        ax.set_visible(True)
        im = ax.imshow(img, origin="lower", vmin=lo, vmax=hi, cmap="viridis")
        ax.set_title(f"{name}: {label}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label=units)
        ax.set_xticks([])
        ax.set_yticks([])
    dstack = np.concatenate([d[np.isfinite(d)] for _, d in diffs] + [np.zeros(0)])
    lim = float(np.percentile(np.abs(dstack), 95)) if dstack.size else 1.0
    lim = lim if lim > 0 else 1.0
    for ax, (label, img) in zip(grid[-1], diffs):
        ax.set_visible(True)
        im = ax.imshow(img, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"{label}\n(robust sigma {robust_sigma(img):.3g} {units})", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8, label=units)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = grid[-1][len(diffs)]
    ax.set_visible(True)
    for (label, ref, d), colour in zip(running, ("C0", "C1")):
        ok = np.isfinite(ref) & np.isfinite(d)
        ax.scatter(ref[ok], d[ok], s=3, alpha=0.25, color=colour)
        run = running_difference(ref[ok], d[ok], bins)
        if run["reference"]:
            ax.plot(run["reference"], run["median"], color=colour, lw=2, label=label)
            ax.fill_between(run["reference"], run["p16"], run["p84"], color=colour, alpha=0.2)
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel(f"{ref_label} {name} [{units}]", fontsize=8)
    ax.set_ylabel(f"difference [{units}]", fontsize=8)
    ax.set_title("running median, 16-84 %", fontsize=9)
    ax.legend(fontsize=7)
    path = save_figure(fig, path, dpi=90)
    return path


def compare_stores(
    a_path: str | os.PathLike,
    b_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    truth_cube: str | os.PathLike | None = None,
    names: Sequence[str] = COMPARED,
    labels: tuple[str, str] | None = None,
    good_only: bool = True,
) -> Comparison:
    """Compare two maps stores on disk; writes ``compare.json`` and ``compare_<name>.png`` in ``out_dir``."""
    from survey_proc.errors import CubeError
    from survey_proc.stores import open_maps

    a, b = open_maps(a_path), open_maps(b_path)
    for dim in ("y", "x", "object"):
        if (dim in a.dims or dim in b.dims) and a.sizes.get(dim) != b.sizes.get(dim):
            raise CubeError(
                f"{a_path} and {b_path} cover different pixels ({dim}: {a.sizes.get(dim)} vs "
                f"{b.sizes.get(dim)}); compare maps of the same cube"
            )
    truth = open_maps(truth_cube, group="truth") if truth_cube else None
    if truth is not None and any(truth.sizes.get(d) != a.sizes.get(d) for d in ("y", "x")):
        raise CubeError(f"the truth of {truth_cube} ({dict(truth.sizes)}) does not match the maps ({dict(a.sizes)})")
    labels = labels or (_label(a, a_path), _label(b, b_path))
    if labels[0] == labels[1]:
        labels = (f"{labels[0]} (A)", f"{labels[1]} (B)")
    result = compare_maps(a, b, truth, names, labels, good_only)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shown = [n for n in names if n in a and n in b]
    for name in shown:
        png = plot_comparison(a, b, name, out / f"compare_{name}.png", truth, labels, good_only)
        result.figures.append(str(png))
    payload = result.to_json() | {
        "a": str(a_path),
        "b": str(b_path),
        "truth": str(truth_cube or ""),
        "a_model": a.attrs.get("model_id", ""),
        "b_model": b.attrs.get("model_id", ""),
    }
    (out / "compare.json").write_text(json.dumps(payload, indent=2))
    return result


def _label(ds: xr.Dataset, path) -> str:
    return str(ds.attrs.get("model_name") or Path(path).name)
