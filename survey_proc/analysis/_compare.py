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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc.errors import CubeError
from survey_proc.figures import colormap, pyplot, save_figure
from survey_proc.stores import NOT_FITTED, open_maps, robust_sigma

#: properties compared by default, where both stores have them
COMPARED = ("log_age", "metallicity", "av", "sigma", "velocity")


@dataclass
class RunningDifference:
    """Median and 16/84th percentiles of a difference in quantile bins of the reference value."""

    reference: list[float] = field(default_factory=list)  #: median reference value of each bin
    median: list[float] = field(default_factory=list)
    p16: list[float] = field(default_factory=list)
    p84: list[float] = field(default_factory=list)
    n: list[int] = field(default_factory=list)  #: pairs in each bin

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DifferenceStats:
    """Bias, scatter and correlation of values against a reference (differences: values - reference)."""

    n: int  #: finite pairs
    bias: float  #: median difference
    mean_difference: float
    robust_sigma: float  #: 1.4826 MAD of the differences
    rms: float
    correlation: float  #: Pearson r of values with reference
    running: RunningDifference
    units: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def difference_stats(values: np.ndarray, reference: np.ndarray, bins: int = 8) -> DifferenceStats:
    """Bias, scatter and correlation of ``values`` against ``reference`` over the finite pairs, with the
    running difference in ``bins`` quantile bins of the reference. Differences are ``values - reference``."""
    v = np.asarray(values, np.float64).ravel()
    r = np.asarray(reference, np.float64).ravel()
    ok = np.isfinite(v) & np.isfinite(r)
    v, r = v[ok], r[ok]
    d = v - r
    nan = float("nan")
    return DifferenceStats(
        n=int(d.size),
        bias=float(np.median(d)) if d.size else nan,
        mean_difference=float(d.mean()) if d.size else nan,
        robust_sigma=robust_sigma(d),
        rms=float(np.sqrt(np.mean(d**2))) if d.size else nan,
        correlation=pearson(v, r),
        running=running_difference(r, d, bins),
    )


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation coefficient (NaN with fewer than 3 pairs or a constant input)."""
    if a.size < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def running_difference(reference: np.ndarray, diff: np.ndarray, bins: int = 8) -> RunningDifference:
    """Median and 16/84th percentiles of ``diff`` in ``bins`` quantile bins of ``reference`` (fewer bins
    for fewer than two pairs per bin; empty bins are left out)."""
    res = RunningDifference()
    if reference.size < 2 * bins:
        bins = max(1, reference.size // 2)
    if reference.size == 0:
        return res
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        edges = np.array([reference.min(), reference.max() + 1e-12])
    which = np.clip(np.searchsorted(edges, reference, side="right") - 1, 0, edges.size - 2)
    for k in range(edges.size - 1):
        sel = which == k
        if not sel.any():
            continue
        p16, med, p84 = np.percentile(diff[sel], [16, 50, 84])
        res.reference.append(float(np.median(reference[sel])))
        res.median.append(float(med))
        res.p16.append(float(p16))
        res.p84.append(float(p84))
        res.n.append(int(sel.sum()))
    return res


def good_pixels(ds: xr.Dataset, good_only: bool = True) -> np.ndarray:
    """Pixels to compare: ``flag == 0``, or every fitted pixel when ``good_only`` is False."""
    flag = np.asarray(ds["flag"].values)
    return flag == 0 if good_only else (flag & np.uint8(NOT_FITTED)) == 0


@dataclass
class Comparison:
    """Result of :func:`compare_maps` (``to_json`` gives the JSON written beside the figures)."""

    labels: tuple[str, ...]
    reference: str
    pairs: dict[str, dict[str, DifferenceStats]] = field(default_factory=dict)  #: "A vs B" -> property -> stats
    used: dict[str, int] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    json_path: Path | None = None  #: where :func:`compare_stores` wrote ``compare.json``

    def to_json(self) -> dict:
        return {
            "labels": list(self.labels),
            "reference": self.reference,
            "used_pixels": self.used,
            "pairs": {pair: {name: s.to_json() for name, s in props.items()} for pair, props in self.pairs.items()},
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
        result.pairs[f"{la} vs {lb}"] = {
            name: replace(
                difference_stats(np.asarray(da[name].values)[good], np.asarray(db[name].values)[good], bins),
                units=da[name].attrs.get("units", ""),
            )
            for name in names
            if name in db
        }
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
    plt = pyplot()
    good = good_pixels(a, good_only) & good_pixels(b, good_only)
    va = np.where(good, np.asarray(a[name].values, np.float64), np.nan)
    vb = np.where(good, np.asarray(b[name].values, np.float64), np.nan)
    units = a[name].attrs.get("units", "")
    panels = _Panels.of(va, vb, truth[name].values if truth is not None and name in truth else None, labels)
    ncol = max(len(panels.maps), len(panels.diffs) + 1)
    nrow = 2 if panels.maps else 1
    fig, grid = plt.subplots(nrow, ncol, figsize=(3.6 * ncol + (2 if ncol == 1 else 0), 3.2 * nrow), squeeze=False)
    for ax in grid.ravel():
        ax.set_visible(False)
    _show_maps(fig, grid[0], panels.maps, name, units)
    _show_differences(fig, grid[-1], panels.diffs, units)
    _plot_running(grid[-1][len(panels.diffs)], panels.running, f"{panels.reference} {name}", units, bins)
    return save_figure(fig, path, dpi=90)


@dataclass
class _Panels:
    """What :func:`plot_comparison` shows: maps, difference maps, and (label, reference, difference) curves."""

    maps: list[tuple[str, np.ndarray]]
    diffs: list[tuple[str, np.ndarray]]
    running: list[tuple[str, np.ndarray, np.ndarray]]
    reference: str

    @classmethod
    def of(cls, va: np.ndarray, vb: np.ndarray, truth: np.ndarray | None, labels: tuple[str, str]) -> _Panels:
        if truth is not None:
            ref = np.asarray(truth, np.float64)
            panels = cls(
                maps=[("truth", ref), (labels[0], va), (labels[1], vb)],
                diffs=[(f"{labels[0]} - truth", va - ref), (f"{labels[1]} - truth", vb - ref)],
                running=[(labels[0], ref, va - ref), (labels[1], ref, vb - ref)],
                reference="truth",
            )
        else:
            panels = cls(
                maps=[(labels[0], va), (labels[1], vb)],
                diffs=[(f"{labels[0]} - {labels[1]}", va - vb)],
                running=[(f"{labels[0]} - {labels[1]}", vb, va - vb)],
                reference=labels[1],
            )
        if va.ndim != 2:  # a catalogue: no maps to show, only the differences against the reference
            panels.maps, panels.diffs = [], []
        return panels


def _finite(images: list[tuple[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([m[np.isfinite(m)] for _, m in images] + [np.zeros(0)])


def _show_maps(fig, axes, maps: list[tuple[str, np.ndarray]], name: str, units: str) -> None:
    """The maps on one colour scale (their 2-98th percentiles)."""
    stack = _finite(maps)
    lo, hi = np.percentile(stack, [2, 98]) if stack.size else (0.0, 1.0)
    for ax, (label, img) in zip(axes, maps):
        ax.set_visible(True)
        im = ax.imshow(img, origin="lower", vmin=lo, vmax=hi, cmap=colormap("viridis"))
        ax.set_title(f"{name}: {label}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label=units)
        ax.set_xticks([])
        ax.set_yticks([])


def _show_differences(fig, axes, diffs: list[tuple[str, np.ndarray]], units: str) -> None:
    """The difference maps on one symmetric scale (the 95th percentile of their magnitudes)."""
    dstack = _finite(diffs)
    lim = float(np.percentile(np.abs(dstack), 95)) if dstack.size else 1.0
    lim = lim if lim > 0 else 1.0
    for ax, (label, img) in zip(axes, diffs):
        ax.set_visible(True)
        im = ax.imshow(img, origin="lower", cmap=colormap("RdBu_r"), vmin=-lim, vmax=lim)
        ax.set_title(f"{label}\n(robust sigma {robust_sigma(img):.3g} {units}; grey: no value)", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8, label=units)
        ax.set_xticks([])
        ax.set_yticks([])


def _plot_running(ax, running: list[tuple[str, np.ndarray, np.ndarray]], xlabel: str, units: str, bins: int) -> None:
    """Differences against the reference value, with their running median and 16-84 % band."""
    ax.set_visible(True)
    for (label, ref, d), colour in zip(running, ("C0", "C1")):
        ok = np.isfinite(ref) & np.isfinite(d)
        ax.scatter(ref[ok], d[ok], s=3, alpha=0.25, color=colour)
        run = running_difference(ref[ok], d[ok], bins)
        if run.reference:
            ax.plot(run.reference, run.median, color=colour, lw=2, label=label)
            ax.fill_between(run.reference, run.p16, run.p84, color=colour, alpha=0.2)
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel(f"{xlabel} [{units}]", fontsize=8)
    ax.set_ylabel(f"difference [{units}]", fontsize=8)
    ax.set_title("running median, 16-84 %", fontsize=9)
    ax.legend(fontsize=7)


def compare_output(a_path: str | os.PathLike, b_path: str | os.PathLike) -> Path:
    """Where a comparison of two maps stores goes by default: ``<A>_vs_<B>`` beside A (``.zarr`` dropped)."""
    a, b = Path(a_path), Path(b_path)
    return a.with_name(f"{a.name.removesuffix('.zarr')}_vs_{b.name.removesuffix('.zarr')}")


def compare_stores(
    a_path: str | os.PathLike,
    b_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    truth_cube: str | os.PathLike | None = None,
    names: Sequence[str] = COMPARED,
    labels: tuple[str, str] | None = None,
    good_only: bool = True,
) -> Comparison:
    """Compare two maps stores on disk; writes ``compare.json`` and ``compare_<name>.png`` in ``out_dir``
    (default: :func:`compare_output`)."""
    a, b, truth = _open_compared(a_path, b_path, truth_cube)
    labels = labels or (_label(a, a_path), _label(b, b_path))
    if labels[0] == labels[1]:
        labels = (f"{labels[0]} (A)", f"{labels[1]} (B)")
    result = compare_maps(a, b, truth, names, labels, good_only)
    out = Path(out_dir) if out_dir else compare_output(a_path, b_path)
    out.mkdir(parents=True, exist_ok=True)
    for name in (n for n in names if n in a and n in b):
        png = plot_comparison(a, b, name, out / f"compare_{name}.png", truth, labels, good_only)
        result.figures.append(str(png))
    payload = result.to_json() | {
        "a": str(a_path),
        "b": str(b_path),
        "truth": str(truth_cube or ""),
        "a_model": a.attrs.get("model_id", ""),
        "b_model": b.attrs.get("model_id", ""),
    }
    result.json_path = out / "compare.json"
    result.json_path.write_text(json.dumps(payload, indent=2))
    return result


def _open_compared(
    a_path: str | os.PathLike, b_path: str | os.PathLike, truth_cube: str | os.PathLike | None = None
) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset | None]:
    """The two maps stores (and the truth group of ``truth_cube``), refused unless they cover the same pixels."""
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
    return a, b, truth


def _label(ds: xr.Dataset, path) -> str:
    return str(ds.attrs.get("model_name") or Path(path).name)
