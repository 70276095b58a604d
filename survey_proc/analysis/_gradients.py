"""Radial gradients of map properties: deprojected radius, linear fits within R_e, subsample errors.

Following Liew-Cain et al. (2021): each property is fitted linearly against R/R_e over the pixels
inside R_e (deprojected with the galaxy's inclination and position angle); the uncertainty comes from
100 Monte Carlo draws of 75 % of those pixels. A galaxy is fitted only when at least 25 usable pixels
lie inside R_e and some lie outside (otherwise the "gradient" would not span the radius it claims).

Subsampling 75 % without replacement spreads the fitted slopes by only sqrt((1 - f) / f) = 0.58 of
the standard error of the fit to all pixels, so the draws' standard deviation (``slope_err_draws``,
the paper's number) is scaled by sqrt(f / (1 - f)) (a delete-d jackknife) into ``slope_err``, the
error this module uses when it compares gradients. Neighbouring pixels are correlated in real maps
(PSF, binning) and in the mocks, so both still underestimate the true scatter somewhat.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from survey_proc.errors import CubeError
from survey_proc.figures import pyplot, save_figure
from survey_proc.geometry import disc_coordinates
from survey_proc.stores import open_maps

DEFAULT_GRADIENT_PROPERTIES = ("log_age", "metallicity", "av", "log_mass_surface_density")


@dataclass(frozen=True)
class Geometry:
    """Where the galaxy is and how it is seen (pixels, degrees)."""

    centre_x: float
    centre_y: float
    inclination_deg: float
    position_angle_deg: float
    r_e_pixels: float
    source: str = ""

    def radius_re(self, shape: tuple[int, int]) -> np.ndarray:
        """Deprojected radius in units of R_e, (ny, nx)."""
        r, _, _ = disc_coordinates(shape, self.centre_x, self.centre_y, self.inclination_deg, self.position_angle_deg)
        return r / self.r_e_pixels


@dataclass(frozen=True)
class GradientFit:
    """A linear fit value = intercept + slope * R/R_e within ``r_max`` R_e."""

    slope: float  #: per R/R_e (property units)
    slope_err: float  #: standard error (scaled 75 % subsamples: a delete-d jackknife, see the module docstring)
    slope_err_draws: float  #: standard deviation of the 75 % draws (Liew-Cain et al.)
    intercept: float
    intercept_err: float
    n_inside: int
    n_outside: int


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through (x, y)."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def radial_gradient(
    values: np.ndarray,
    radius_re: np.ndarray,
    good: np.ndarray | None = None,
    *,
    r_max: float = 1.0,
    n_draws: int = 100,
    fraction: float = 0.75,
    min_inside: int = 25,
    seed: int = 0,
) -> GradientFit | None:
    """The gradient of ``values`` against ``radius_re`` inside ``r_max``, or None when the galaxy does not
    qualify (fewer than ``min_inside`` usable pixels inside, or none outside)."""
    v, r = np.asarray(values, np.float64).ravel(), np.asarray(radius_re, np.float64).ravel()
    ok = np.isfinite(v) & np.isfinite(r)
    if good is not None:
        ok &= np.asarray(good, bool).ravel()
    inside = ok & (r <= r_max)
    n_in, n_out = int(inside.sum()), int((ok & (r > r_max)).sum())
    if n_in < min_inside or n_out == 0:
        return None
    x, y = r[inside], v[inside]
    intercept, slope = linear_fit(x, y)
    rng = np.random.default_rng(seed)
    k = max(int(round(fraction * n_in)), 3)
    draws = np.array(
        [linear_fit(x[idx], y[idx]) for idx in (rng.choice(n_in, k, replace=False) for _ in range(n_draws))]
    )
    scale = np.sqrt(fraction / (1.0 - fraction))
    return GradientFit(
        slope=slope,
        slope_err=float(scale * draws[:, 1].std(ddof=1)),
        slope_err_draws=float(draws[:, 1].std(ddof=1)),
        intercept=intercept,
        intercept_err=float(scale * draws[:, 0].std(ddof=1)),
        n_inside=n_in,
        n_outside=n_out,
    )


def gradients_of(
    maps: xr.Dataset,
    geometry: Geometry,
    properties: Sequence[str] = DEFAULT_GRADIENT_PROPERTIES,
    good: np.ndarray | None = None,
    **kwargs,
) -> dict[str, GradientFit | None]:
    """Gradient of every property present in ``maps`` ((y, x) variables); ``good`` defaults to flag == 0."""
    if good is None and "flag" in maps:
        good = np.asarray(maps["flag"].values) == 0
    shape = (maps.sizes["y"], maps.sizes["x"])
    radius = geometry.radius_re(shape)
    return {
        p: radial_gradient(np.asarray(maps[p].values), radius, good, **kwargs)
        for p in properties
        if p in maps and maps[p].dims == ("y", "x")
    }


def geometry_from(maps: xr.Dataset, maps_path: str | os.PathLike, overrides: Mapping[str, float | None]) -> Geometry:
    """The galaxy geometry: explicit ``overrides`` (centre_x, centre_y, inclination_deg, position_angle_deg,
    r_e_pixels) first, then the maps' own attributes, then the truth group of the cube the maps came from."""
    values: dict[str, float] = {}
    origin = []
    sources = _geometry_sources(maps, maps_path, overrides)
    for field_name, key in _GEOMETRY_KEYS.items():
        for where, attrs in sources:
            value = attrs.get(field_name, attrs.get(key))
            if value is not None:
                values[field_name] = float(value)
                origin.append(where)
                break
    if "centre_x" not in values or "centre_y" not in values:  # default: the middle of the field
        values.setdefault("centre_x", (maps.sizes["x"] - 1) / 2.0)
        values.setdefault("centre_y", (maps.sizes["y"] - 1) / 2.0)
    _check_geometry(values, maps_path)
    return Geometry(**values, source=", ".join(sorted(set(origin))))


def _geometry_sources(
    maps: xr.Dataset, maps_path: str | os.PathLike, overrides: Mapping[str, float | None]
) -> list[tuple[str, Mapping]]:
    """(where, attributes) to read the geometry from, first first: options, the maps, the cube's truth."""
    sources: list[tuple[str, Mapping]] = []
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        sources.append(("options", given))
    sources.append((f"{maps_path} attributes", {k: maps.attrs[k] for k in _GEOMETRY_KEYS.values() if k in maps.attrs}))
    cube = maps.attrs.get("cube")
    if cube and Path(cube).exists():
        try:
            truth = xr.open_zarr(cube, group="truth", consolidated=False)
            sources.append((f"{cube} truth", dict(truth.attrs)))
        except Exception:  # no truth group: a real cube
            pass
    return sources


def _check_geometry(values: Mapping[str, float], maps_path: str | os.PathLike) -> None:
    """Refuse a geometry with unknown or impossible values, naming the options that give them."""
    missing = [k for k in ("inclination_deg", "position_angle_deg", "r_e_pixels") if k not in values]
    if missing:
        opts = {"inclination_deg": "--inclination", "position_angle_deg": "--position-angle", "r_e_pixels": "--r-e"}
        raise CubeError(
            f"{maps_path}: the galaxy's {', '.join(missing)} are not known (no truth group or "
            f"attributes carry them); give {' '.join(opts[m] + ' VALUE' for m in missing)}"
        )
    if values["r_e_pixels"] <= 0 or not 0 <= values["inclination_deg"] < 90:
        raise CubeError(
            f"{maps_path}: R_e must be > 0 and the inclination within [0, 90) degrees, got "
            f"{values['r_e_pixels']:g} and {values['inclination_deg']:g}"
        )


#: Geometry field -> attribute name in truth groups / maps stores
_GEOMETRY_KEYS = {
    "centre_x": "centre_x",
    "centre_y": "centre_y",
    "inclination_deg": "inclination_deg",
    "position_angle_deg": "position_angle_deg",
    "r_e_pixels": "r_e_spaxel",
}


@dataclass(frozen=True)
class GradientDifference:
    """Two fitted slopes of one property and how significantly they differ."""

    slope_a: float
    slope_b: float
    difference: float  #: slope_a - slope_b
    combined_err: float  #: the two slope errors added in quadrature
    n_sigma: float  #: |difference| / combined_err


def compare_gradients(
    a: Mapping[str, GradientFit | None], b: Mapping[str, GradientFit | None]
) -> dict[str, GradientDifference]:
    """Per property fitted in both: both slopes, their difference and its significance."""
    out = {}
    for p in a:
        if p not in b or a[p] is None or b[p] is None:
            continue
        diff = a[p].slope - b[p].slope
        err = float(np.hypot(a[p].slope_err, b[p].slope_err))
        out[p] = GradientDifference(
            slope_a=a[p].slope,
            slope_b=b[p].slope,
            difference=diff,
            combined_err=err,
            n_sigma=abs(diff) / err if err > 0 else float("inf"),
        )
    return out


def plot_gradients(
    sets: Mapping[str, tuple[xr.Dataset, dict[str, GradientFit | None], np.ndarray | None]],
    geometry: Geometry,
    path: str | os.PathLike,
    title: str = "",
    r_max: float = 1.0,
) -> Path:
    """PNG: one panel per property, pixel values against R/R_e for each map set, with the fitted lines."""
    plt = pyplot()
    props = [p for p in next(iter(sets.values()))[1]]
    fig, axes = plt.subplots(1, max(len(props), 1), figsize=(4.5 * max(len(props), 1), 4), squeeze=False)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for ax, p in zip(axes[0], props):
        for (label, (maps, fits, good)), colour in zip(sets.items(), colours):
            radius = geometry.radius_re((maps.sizes["y"], maps.sizes["x"]))
            v = np.asarray(maps[p].values, np.float64)
            ok = np.isfinite(v) & (good if good is not None else True)
            ax.scatter(radius[ok], v[ok], s=3, alpha=0.35, color=colour)
            fit = fits.get(p)
            if fit is not None:
                xx = np.linspace(0, r_max, 20)
                ax.plot(
                    xx,
                    fit.intercept + fit.slope * xx,
                    color=colour,
                    lw=2,
                    label=f"{label}: {fit.slope:+.3f} ± {fit.slope_err:.3f} per R_e",
                )
            else:
                ax.plot([], [], color=colour, label=f"{label}: not fitted")
        ax.axvline(r_max, color="k", ls=":", lw=1)
        units = next(iter(sets.values()))[0][p].attrs.get("units", "")
        ax.set_xlabel("deprojected R / R_e")
        ax.set_ylabel(f"{p} [{units}]")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    path = save_figure(fig, path, dpi=90)
    return path


def _good(ds: xr.Dataset) -> np.ndarray | None:
    return np.asarray(ds["flag"].values) == 0 if "flag" in ds else None


@dataclass(frozen=True)
class GradientOptions:
    """How gradients are fitted (see :func:`radial_gradient`)."""

    r_max: float = 1.0  #: fit inside this many R_e
    n_draws: int = 100  #: subsamples for the error
    fraction: float = 0.75  #: of the pixels inside, per subsample
    min_inside: int = 25  #: usable pixels inside r_max a galaxy needs to be fitted
    seed: int = 0


def _fits_json(fits: Mapping[str, GradientFit | None]) -> dict:
    return {p: asdict(f) if f else None for p, f in fits.items()}


@dataclass(frozen=True)
class GradientComparison:
    """The gradients of a second map set of the same galaxy (the truth, or another run) beside the first's."""

    label: str  #: ``truth`` or the other store's name
    gradients: dict[str, GradientFit | None]
    differences: dict[str, GradientDifference]
    input_gradients_per_r_e: Any = None  #: a mock's input gradients (its truth attribute), where known

    def to_json(self) -> dict:
        out = {
            "with": self.label,
            "gradients": _fits_json(self.gradients),
            "differences": {p: asdict(d) for p, d in self.differences.items()},
        }
        if self.input_gradients_per_r_e is not None:
            out["input_gradients_per_r_e"] = self.input_gradients_per_r_e
        return out


@dataclass(frozen=True)
class GradientReport:
    """Result of :func:`gradient_report` (``to_json`` gives the JSON it writes)."""

    maps: Path
    geometry: Geometry
    options: GradientOptions
    gradients: dict[str, GradientFit | None]  #: property -> fit, None where the galaxy does not qualify
    not_fitted: dict[str, str]  #: property -> why
    compare: GradientComparison | None
    figure: Path
    json_path: Path

    def to_json(self) -> dict:
        out = {
            "maps": str(self.maps),
            "geometry": asdict(self.geometry),
            "options": asdict(self.options),
            "gradients": _fits_json(self.gradients),
        }
        if self.not_fitted:
            out["not_fitted"] = dict(self.not_fitted)
        if self.compare is not None:
            out["compare"] = self.compare.to_json()
        return out | {"figure": str(self.figure), "json": str(self.json_path)}


def gradient_report(
    maps_path: str | os.PathLike,
    compare: str | None = None,
    out_dir: str | os.PathLike | None = None,
    properties: Sequence[str] = DEFAULT_GRADIENT_PROPERTIES,
    geometry_overrides: Mapping[str, float | None] | None = None,
    r_max: float = 1.0,
    n_draws: int = 100,
    fraction: float = 0.75,
    min_inside: int = 25,
    seed: int = 0,
) -> GradientReport:
    """Gradients of a maps store (and of a second map set: ``truth`` = the cube's truth group, or another
    maps store of the same galaxy), written as ``<maps>.gradients.json`` and ``.png`` in ``out_dir``
    (default: beside the maps)."""
    maps_path = Path(maps_path)
    maps = open_maps(maps_path)
    geometry = geometry_from(maps, maps_path, geometry_overrides or {})
    options = GradientOptions(r_max=r_max, n_draws=n_draws, fraction=fraction, min_inside=min_inside, seed=seed)
    fits = gradients_of(maps, geometry, properties, **asdict(options))
    sets = {maps_path.name: (maps, fits, _good(maps))}
    why = f"fewer than {min_inside} usable pixels inside {r_max:g} R_e or none outside"
    not_fitted = {p: why for p, f in fits.items() if f is None}
    comparison = None
    if compare:
        other, label = _open_other(maps, compare)
        # truth maps have no flags: every pixel counts, like the engine's maps with flag == 0
        other_fits = gradients_of(other, geometry, list(fits), good=_good(other), **asdict(options))
        sets[label] = (other, other_fits, _good(other))
        comparison = GradientComparison(
            label, other_fits, compare_gradients(fits, other_fits), other.attrs.get("input_gradients_per_r_e")
        )
    out = Path(out_dir) if out_dir else maps_path.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = maps_path.name.removesuffix(".zarr")
    png = plot_gradients(sets, geometry, out / f"{stem}.gradients.png", title=_title(geometry, r_max), r_max=r_max)
    report = GradientReport(
        maps_path, geometry, options, fits, not_fitted, comparison, png, out / f"{stem}.gradients.json"
    )
    report.json_path.write_text(json.dumps(report.to_json(), indent=2, default=str))
    return report


def _title(geometry: Geometry, r_max: float) -> str:
    return (
        f"radial gradients within {r_max:g} R_e (R_e = {geometry.r_e_pixels:.1f} px, "
        f"i = {geometry.inclination_deg:.0f} deg, PA = {geometry.position_angle_deg:.0f} deg)"
    )


def _open_other(maps: xr.Dataset, compare: str) -> tuple[xr.Dataset, str]:
    """The second map set: the truth group of the maps' cube (``truth``), or another maps store."""
    if compare == "truth":
        cube = maps.attrs.get("cube")
        if not cube or not Path(cube).exists():
            raise CubeError(
                f"--compare truth needs the cube the maps were made from (attribute 'cube'), which is {cube!r}"
            )
        try:
            return xr.open_zarr(cube, group="truth", consolidated=False), "truth"
        except Exception as exc:
            raise CubeError(f"{cube} has no truth group (only mocks do): {exc}") from exc
    return open_maps(compare), Path(compare).name
