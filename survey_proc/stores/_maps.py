"""The Maps schema: per-pixel properties, their uncertainties, the quality flag and provenance.

A maps store has the spatial dims of its input (``y, x`` or ``object``), plus ``age``/``metal`` for
weight grids. Each property ``p`` has ``p_err`` (1-sigma, same units) and, where the model reports
one, ``p_sys_err`` (the SSP-library systematic, not in ``p_err``); ``flag`` is a bitmask
(CF ``flag_masks``/``flag_meanings``); ``chi2`` is present where the estimator reconstructs the
spectrum. A mock cube's ``truth`` group follows the same schema.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc.errors import CubeError


class Flag(enum.IntFlag):
    """Per-pixel quality bits of the ``flag`` variable (0 = good)."""

    NO_DATA = 1  #: every pixel of the spectrum is masked or NaN; outputs are NaN
    OUT_OF_RANGE = 2  #: the spectrum does not cover the model's wavelength range; outputs are NaN
    LOW_SNR = 4  #: median S/N per Angstrom below the configured minimum
    OUT_OF_DISTRIBUTION = 8  #: input unlike the training set (novelty score above threshold)
    MASKED = 16  #: too many model pixels masked to fit; outputs are NaN
    FIT_FAILED = 32  #: the estimator raised or returned non-finite values; outputs are NaN
    NOT_BINNED = 64  #: pixel maps of a binned input: the spaxel is in no bin (S/N below the binning minimum)
    AT_LIMIT = 128  #: an estimate at an edge of the range the model was trained on: the truth may lie beyond
    POOR_FIT = 256  #: the fitted spectrum does not match the data (reduced chi^2 above the manifest's threshold)
    LSF_MISMATCH = 512  #: the data's instrumental resolution differs from the one the model was trained with


#: dtype of the ``flag`` variable (the bits above need 10)
FLAG_DTYPE = np.uint16


#: what each bit of ``flag`` means, short enough for a FITS header comment
FLAG_DESCRIPTIONS = {
    Flag.NO_DATA: "all pixels masked or NaN; no estimate",
    Flag.OUT_OF_RANGE: "model range not covered; no estimate",
    Flag.LOW_SNR: "S/N per A below the minimum; estimate kept",
    Flag.OUT_OF_DISTRIBUTION: "unlike the training set; estimate kept",
    Flag.MASKED: "too many pixels masked; no estimate",
    Flag.FIT_FAILED: "the estimator failed; no estimate",
    Flag.NOT_BINNED: "the spaxel is in no bin; no estimate",
    Flag.AT_LIMIT: "at a training-range edge; estimate kept",
    Flag.POOR_FIT: "spectrum not matched; estimate kept",
    Flag.LSF_MISMATCH: "resolution unlike training; estimate kept",
}

#: flags that mean "no estimate was made" (outputs NaN)
NOT_FITTED = Flag.NO_DATA | Flag.OUT_OF_RANGE | Flag.MASKED | Flag.FIT_FAILED | Flag.NOT_BINNED


def flag_attrs() -> dict:
    """CF-style attributes describing the bits of ``flag``."""
    return {
        "long_name": "quality flag (bitmask, 0 = good)",
        "flag_masks": [int(f) for f in Flag],
        "flag_meanings": " ".join(f.name.lower() for f in Flag),
        "units": "1",
    }


#: units and long names of the properties survey-proc knows; a manifest may add others.
PROPERTIES: dict[str, dict[str, str]] = {
    "log_age": {"units": "log10(yr)", "long_name": "light-weighted log10 stellar age"},
    "metallicity": {"units": "dex", "long_name": "light-weighted stellar metallicity [M/H]"},
    "log_age_mw": {"units": "log10(yr)", "long_name": "mass-weighted log10 stellar age"},
    "metallicity_mw": {"units": "dex", "long_name": "mass-weighted stellar metallicity [M/H]"},
    "av": {"units": "mag", "long_name": "V-band dust attenuation A_V"},
    "ebv": {"units": "mag", "long_name": "colour excess E(B-V)"},
    "sigma": {"units": "km/s", "long_name": "stellar line-of-sight velocity dispersion"},
    "velocity": {"units": "km/s", "long_name": "stellar line-of-sight velocity relative to systemic"},
    "chi2": {"units": "1", "long_name": "reduced chi-squared of the reconstructed spectrum"},
    "chi2_floor": {
        "units": "1",
        "long_name": "reduced chi-squared with a 2 % model error added to the noise (what poor_fit judges)",
    },
    "weights": {"units": "1", "long_name": "light fraction per SSP (age, metallicity)"},
    "log_mass_density": {"units": "log10(Msun/pix)", "long_name": "stellar mass per pixel"},
    "log_mass_surface_density": {
        "units": "log10(Msun/kpc2)",
        "long_name": "stellar mass surface density (stars and remnants)",
    },
    "log_sfr_surface_density": {
        "units": "log10(Msun/yr/kpc2)",
        "long_name": "star-formation-rate surface density over the last 100 Myr, plus the detection floor",
    },
    "star_forming_probability": {
        "units": "1",
        "long_name": "probability that the pixel forms stars above the detection floor (last 100 Myr)",
    },
}


def property_attrs(name: str, units: str | None = None, long_name: str | None = None) -> dict:
    """Attributes of a map variable (``name``, ``name_err`` or ``name_sys_err``)."""
    systematic = name.endswith("_sys_err")
    base = name.removesuffix("_sys_err") if systematic else name.removesuffix("_err")
    attrs = dict(PROPERTIES.get(base, {}))
    if units is not None:
        attrs["units"] = units
    if long_name is not None:
        attrs["long_name"] = long_name
    attrs.setdefault("units", "1")
    attrs.setdefault("long_name", base.replace("_", " "))
    if systematic:
        attrs["long_name"] = f"1-sigma SSP-library systematic uncertainty of {attrs['long_name']}"
    elif name.endswith("_err"):
        attrs["long_name"] = f"1-sigma uncertainty of {attrs['long_name']}"
    return attrs


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation of the finite values (a Gaussian's sigma)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


#: the group of a binned run's maps store holding the maps on the pixel grid
PIXEL_MAPS_GROUP = "pixels"


def open_maps(path: str | os.PathLike, group: str | None = None) -> xr.Dataset:
    """Open a maps store (or a cube's ``truth`` group); raises CubeError if it is not one."""
    path = Path(path)
    if not path.exists():
        raise CubeError(f"{path}: no such maps store")
    try:
        ds = xr.open_zarr(path, group=group, consolidated=False)
    except Exception as exc:
        where = f"{path} (group {group!r})" if group else str(path)
        raise CubeError(f"{where} is not a readable maps store ({type(exc).__name__}: {exc})") from exc
    if "flag" not in ds and group != "truth":
        raise CubeError(f"{path} has no 'flag' variable: not a survey-proc maps store")
    return ds


#: variables of a maps store that describe the data or the run rather than a property
_NOT_PROPERTIES = ("flag", "snr", "bin_id")


def map_variables(ds: xr.Dataset) -> tuple[list[str], list[str]]:
    """(properties, diagnostics) of a maps Dataset, each over its spatial dims only: the estimated
    properties in the order :data:`PROPERTIES` lists them (then others), and the diagnostics
    (``snr`` and novelty scores). Errors (``<name>_err``), ``flag``, the bookkeeping arrays and
    variables with extra dims (weight grids) are not in either."""
    spatial = tuple(d for d in ds["flag"].dims) if "flag" in ds else ()
    names = [
        str(n)
        for n, v in ds.data_vars.items()
        if v.dims == spatial and not str(n).startswith("region_") and not str(n).endswith("_err") and n != "flag"
    ]
    order = {name: i for i, name in enumerate(PROPERTIES)}
    properties = [n for n in names if (n not in _NOT_PROPERTIES and f"{n}_err" in ds) or n in order]
    properties.sort(key=lambda n: order.get(n, len(order)))
    return properties, [n for n in names if n not in properties and n != "bin_id"]


def open_pixel_maps(path: str | os.PathLike) -> xr.Dataset:
    """A maps store as images where it has them: a binned run's group ``pixels`` (with the store's
    attributes), else the store itself (``(y, x)`` maps of a cube, ``(object,)`` of a catalogue)."""
    ds = open_maps(path)
    if "object" in ds.dims and (Path(path) / PIXEL_MAPS_GROUP).is_dir():
        pixels = open_maps(path, group=PIXEL_MAPS_GROUP)
        return pixels.assign_attrs({**ds.attrs, **pixels.attrs})
    return ds
