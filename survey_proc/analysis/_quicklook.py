"""A quick-look figure of a maps store: every property on the sky, the quality flag beside them.

``survey-proc plot MAPS.zarr`` (and every ``survey-proc run``, unless ``--no-plot``) writes it as
``<maps>.png``. Each property is drawn where its estimate is unflagged, on a colour scale set by
those pixels, with its units on the colourbar; flagged pixels whose estimate exists (low S/N,
unlike the training set) are light grey and pixels without an estimate dark grey, so neither reads
as a value. Axes are right ascension and declination where the cube had a celestial WCS, else
arcsec offsets where its pixel scale is known, else pixels. A catalogue is drawn as its objects on
the sky (or against their index where they have no position).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc.figures import FLAGGED, NO_VALUE, colormap, pyplot, save_figure
from survey_proc.stores import NOT_FITTED, Flag, map_variables, open_pixel_maps

#: the flag panel's colour per bit (the lowest bit set wins), and for good pixels
_FLAG_COLOURS = (
    "#ffffff",  # good
    "#4d4d4d", "#e41a1c", "#ff7f00", "#984ea3", "#377eb8", "#a65628", "#999999", "#f781bf", "#dede00", "#4daf4a",
)  # fmt: skip


#: diagnostics drawn wherever they have a value (flagged pixels too: the flags come from them)
WHEREVER = ("snr", "chi2", "chi2_floor")


def quicklook_path(maps: str | os.PathLike) -> Path:
    """``<maps>.png`` beside the store (``c.maps.zarr`` -> ``c.maps.png``)."""
    maps = Path(maps)
    return maps.with_name(maps.name.removesuffix(".zarr") + ".png")


def plot_maps(maps: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the quick-look PNG of the maps store ``maps`` (default :func:`quicklook_path`); returns its path."""
    ds = open_pixel_maps(maps)
    return save_figure(quicklook_figure(ds, title=_title(ds, maps)), out or quicklook_path(maps), dpi=90)


def _title(ds: xr.Dataset, maps) -> str:
    model = ds.attrs.get("model_id", "")
    z = ds.attrs.get("redshift")
    return f"{Path(maps).name}: {model}" + (f", z = {float(z):g}" if z is not None else "")


def _categories(flag: np.ndarray, values: np.ndarray) -> np.ndarray:
    """0 shown as a value, 1 flagged but estimated, 2 no estimate."""
    none = ((flag & int(NOT_FITTED)) != 0) | ~np.isfinite(values)
    return np.where(none, 2, np.where(flag != 0, 1, 0))


def quicklook_figure(ds: xr.Dataset, title: str = ""):
    """The quick-look figure of a maps Dataset (on a pixel grid, or a catalogue): a matplotlib Figure."""
    plt = pyplot()
    properties, diagnostics = map_variables(ds)
    panels = properties + [d for d in diagnostics if d in WHEREVER] + ["flag"]
    weights = _grid_weights(ds)
    if weights is not None:
        panels.append("weights")
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig = plt.figure(figsize=(4.2 * ncol, 3.6 * nrow + 0.6))
    frame = _Frame.of(ds)
    flag = np.asarray(ds["flag"].values).astype(np.int64)
    for i, name in enumerate(panels):
        ax = fig.add_subplot(nrow, ncol, i + 1, **frame.projection())
        if name == "flag":
            _flag_panel(fig, ax, flag, frame)
        elif name == "weights":
            fig.delaxes(ax)
            _weights_panel(fig, fig.add_subplot(nrow, ncol, i + 1), weights, flag)
        else:
            _value_panel(fig, ax, ds[name], flag, frame)
    fig.text(
        0.5,
        0.005,
        "light grey: estimate flagged (low S/N, unlike the training set); dark grey: no estimate",
        ha="center",
        fontsize=8,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


class _Frame:
    """How the panels place pixels: WCS axes, arcsec offsets, pixels, or (catalogues) points."""

    def __init__(self, kind: str, wcs=None, scale: float = 1.0, points=None) -> None:
        self.kind, self.wcs, self.scale, self.points = kind, wcs, scale, points

    @classmethod
    def of(cls, ds: xr.Dataset) -> _Frame:
        if "object" in ds["flag"].dims:
            ra, dec = (np.asarray(ds[c].values, float) if c in ds.coords else None for c in ("ra", "dec"))
            sky = ra is not None and np.isfinite(ra).any() and np.isfinite(dec).any()
            return cls("sky-points" if sky else "index", points=(ra, dec) if sky else None)
        if ds.attrs.get("wcs_header"):
            from astropy.io import fits
            from astropy.wcs import WCS

            return cls("wcs", wcs=WCS(fits.Header.fromstring(str(ds.attrs["wcs_header"]))))
        if ds.attrs.get("pixel_scale_arcsec"):
            return cls("arcsec", scale=float(ds.attrs["pixel_scale_arcsec"]))
        return cls("pixels")

    def projection(self) -> dict:
        return {"projection": self.wcs} if self.kind == "wcs" else {}

    def extent(self, shape: tuple[int, int]) -> list[float] | None:
        if self.kind != "arcsec":
            return None
        ny, nx = shape
        return [-nx / 2 * self.scale, nx / 2 * self.scale, -ny / 2 * self.scale, ny / 2 * self.scale]

    def label(self, ax) -> None:
        if self.kind == "wcs":
            ax.coords[0].set_axislabel("RA")
            ax.coords[1].set_axislabel("Dec")
        elif self.kind == "arcsec":
            ax.set_xlabel("x offset [arcsec]", fontsize=8)
            ax.set_ylabel("y offset [arcsec]", fontsize=8)
        elif self.kind == "sky-points":
            ax.set_xlabel("RA [deg]", fontsize=8)
            ax.set_ylabel("Dec [deg]", fontsize=8)
            ax.invert_xaxis()
        else:
            ax.set_xlabel("object" if self.kind == "index" else "x [pixel]", fontsize=8)
            ax.set_ylabel("value" if self.kind == "index" else "y [pixel]", fontsize=8)


def _value_panel(fig, ax, da: xr.DataArray, flag: np.ndarray, frame: _Frame) -> None:
    """A property where unflagged, flagged pixels grey; a diagnostic (S/N, chi^2) wherever it has a value."""
    values = np.asarray(da.values, np.float64)
    cat = _categories(flag, values) if da.name not in WHEREVER else np.where(np.isfinite(values), 0, 2)
    shown = np.where(cat == 0, values, np.nan)
    good = shown[np.isfinite(shown)]
    lo, hi = np.percentile(good, [2, 98]) if good.size else (0.0, 1.0)
    units = str(da.attrs.get("units", ""))
    units = "dimensionless" if units in ("", "1") else units
    if frame.kind in ("sky-points", "index"):
        _points(fig, ax, values, cat, frame, (lo, hi), units)
    else:
        cmap = colormap("viridis", bad=(0, 0, 0, 0))  # the grey layer below shows through
        ax.imshow(_grey_layer(cat), origin="lower", extent=frame.extent(cat.shape), interpolation="nearest")
        im = ax.imshow(
            shown, origin="lower", cmap=cmap, vmin=lo, vmax=hi, extent=frame.extent(cat.shape), interpolation="nearest"
        )
        fig.colorbar(im, ax=ax, shrink=0.8, label=units)
    shown_as = "unflagged" if da.name not in WHEREVER else "with a value"
    ax.set_title(f"{da.name} ({int((cat == 0).sum())} of {cat.size} {shown_as})", fontsize=9)
    frame.label(ax)


def _grid_weights(ds: xr.Dataset) -> xr.DataArray | None:
    """The fit's light fractions over (age, metal) per pixel, if the maps have them."""
    w = ds.get("weights")
    return w if w is not None and {"age", "metal"} <= set(w.dims) else None


def _weights_panel(fig, ax, weights: xr.DataArray, flag: np.ndarray) -> None:
    """The light fractions over (log age, [M/H]) summed over the unflagged pixels (each pixel's fractions
    weighted equally): the star-formation history of the region, as pPXF users plot it."""
    grid = np.asarray(weights.transpose(..., "metal", "age").values, np.float64)
    grid = grid.reshape(-1, weights.sizes["metal"], weights.sizes["age"])
    use = (flag.reshape(-1) == 0) & np.isfinite(grid).all(axis=(1, 2))
    total = grid[use].sum(0)
    total = total / total.sum() if total.sum() > 0 else np.full_like(total, np.nan)
    age, metal = np.asarray(weights["age"].values), np.asarray(weights["metal"].values)
    im = ax.pcolormesh(_edges(age), _edges(metal), total, cmap="magma_r", shading="flat")
    fig.colorbar(im, ax=ax, shrink=0.8, label="light fraction")
    ax.set_xlabel("log age (yr)")
    ax.set_ylabel("[M/H]")
    ax.set_title(f"light fractions summed over {int(use.sum())} unflagged pixels", fontsize=9)


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around grid centres (half-way between neighbours, mirrored at the ends)."""
    mid = 0.5 * (centres[1:] + centres[:-1])
    return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def _grey_layer(cat: np.ndarray) -> np.ndarray:
    """RGBA image: flagged pixels light grey, pixels without an estimate dark grey, the rest clear."""
    from matplotlib.colors import to_rgba

    rgba = np.zeros((*cat.shape, 4))
    rgba[cat == 1] = to_rgba(FLAGGED)
    rgba[cat == 2] = to_rgba(NO_VALUE)
    return rgba


def _points(fig, ax, values, cat, frame: _Frame, limits, units: str) -> None:
    x, y = frame.points if frame.kind == "sky-points" else (np.arange(values.size), values)
    for c, colour in ((1, FLAGGED), (2, NO_VALUE)):
        at = cat == c
        yy = y[at] if frame.kind == "sky-points" else np.where(np.isfinite(y[at]), y[at], limits[0])
        ax.scatter(x[at], yy, marker="x", s=14, color=colour)
    ok = cat == 0
    sc = ax.scatter(x[ok], y[ok], c=values[ok], s=18, cmap="viridis", vmin=limits[0], vmax=limits[1])
    fig.colorbar(sc, ax=ax, shrink=0.8, label=units)


def _flag_panel(fig, ax, flag: np.ndarray, frame: _Frame) -> None:
    """The lowest bit set in each pixel, one colour per bit (white: good)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    lowest = np.zeros(flag.shape, int)
    set_ = flag != 0
    lowest[set_] = np.log2(flag[set_] & -flag[set_]).astype(int) + 1
    names = ["good"] + [f.name.lower() for f in Flag]
    cmap = ListedColormap(_FLAG_COLOURS[: len(names)])
    norm = BoundaryNorm(np.arange(len(names) + 1) - 0.5, cmap.N)
    if frame.kind in ("sky-points", "index"):
        x, y = frame.points if frame.kind == "sky-points" else (np.arange(flag.size), flag)
        im = ax.scatter(x, y, c=lowest, cmap=cmap, norm=norm, s=18, edgecolors="k", linewidths=0.3)
    else:
        im = ax.imshow(
            lowest, origin="lower", cmap=cmap, norm=norm, extent=frame.extent(flag.shape), interpolation="nearest"
        )
    bar = fig.colorbar(im, ax=ax, shrink=0.8, ticks=np.arange(len(names)))
    bar.ax.set_yticklabels(names, fontsize=6)
    ax.set_title(f"flag ({int((flag != 0).sum())} of {flag.size} flagged; lowest bit)", fontsize=9)
    frame.label(ax)
