"""Preprocessing of photometry declared by a manifest: band fluxes -> a model's input (pure NumPy).

Two input kinds read photometric stores (feature dim ``band``):

- ``sed`` (:class:`SEDInputSpec`): one pixel's (or object's) band fluxes at a time, for per-pixel
  models such as the narrow-band CNN. The model's bands are picked by name from the store, divided
  by their median (``normalise: median``); masked bands are interpolated from their neighbours and
  marked in the mask channel. Input ``(n, 3, nband)``: flux, error, mask.
- ``image`` (:class:`ImageInputSpec`): a tile of pixels at once, for image-to-image models. Fluxes
  stay absolute (surface brightness carries the stellar mass), compressed with ``asinh(f / s_b)``
  by a softening ``s_b`` per band (nJy) that the manifest fixes, so every pixel's input depends on
  that pixel alone and tiles can be cut anywhere. Input ``(1, 3 nband, H, W)``: asinh flux per band,
  asinh error per band, mask per band. The engine reads each region with ``halo_pixels`` of
  neighbours; the model pads and crops internally and returns one row per pixel.

Flags follow the spectral kind: NO_DATA (no usable band, or a non-positive median flux), MASKED (more
than ``max_masked_fraction`` of the bands bad), OUT_OF_RANGE (redshift outside the declared
``redshift_range``). ``snr`` is the median S/N *per band* over the model's bands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from survey_proc.errors import CubeError
from survey_proc.preprocess._kinds import InputKind, Prepared
from survey_proc.preprocess._lines import LineMask
from survey_proc.preprocess._numeric import fill_gaps, masked_median
from survey_proc.stores import Flag, band_index


def select_bands(
    flux: np.ndarray, var: np.ndarray, mask: np.ndarray, axis: Sequence[str], bands: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flux, var, bad) of the model's ``bands`` (n, nband) picked by name from the store's ``axis``."""
    idx = band_index([str(a) for a in axis], bands)
    f = np.asarray(flux, np.float32)[:, idx]
    v = np.asarray(var, np.float32)[:, idx]
    with np.errstate(invalid="ignore"):
        bad = np.asarray(mask, bool)[:, idx] | ~np.isfinite(f) | ~np.isfinite(v) | (v <= 0)
    return np.where(bad, np.float32(0), f), np.where(bad, np.float32(0), v), bad


def band_flags(
    bad: np.ndarray,
    max_masked_fraction: float,
    redshift: float | np.ndarray,
    redshift_range: tuple[float, float] | None,
) -> np.ndarray:
    """Flags from bad bands and the redshift range (n,) uint8."""
    n = bad.shape[0]
    flags = np.zeros(n, np.uint8)
    flags[bad.all(axis=1)] |= np.uint8(Flag.NO_DATA)
    flags[bad.mean(axis=1) > max_masked_fraction] |= np.uint8(Flag.MASKED)
    if redshift_range is not None:
        z = np.broadcast_to(np.asarray(redshift, np.float64), (n,))
        flags[(z < redshift_range[0]) | (z > redshift_range[1])] |= np.uint8(Flag.OUT_OF_RANGE)
    return flags


def redshift_column(redshift: float | np.ndarray, scale: float, n: int) -> np.ndarray:
    """(n, 1) float32: the redshift input channel, ``scale`` x z per spectrum (one z or one per row)."""
    z = np.broadcast_to(np.asarray(redshift, np.float32).reshape(-1), (n,))
    return (z * np.float32(scale))[:, None]


def band_snr(flux: np.ndarray, var: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Median S/N per band over good bands (NaN where none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bad, 0.0, flux / np.sqrt(np.where(bad, 1.0, var)))
    return masked_median(ratio.astype(np.float32), ~bad)


def _check_bands(ds: Any, bands: Sequence[str], pivot: Sequence[float], path: str, model: str) -> None:
    """CubeError unless ``ds`` has every band, with pivot wavelengths within 1 % of the model's."""
    if "band" not in ds.dims:
        raise CubeError(f"{path} has no 'band' dim: model {model} reads a photometric store")
    idx = band_index([str(b) for b in ds["band"].values], bands, where=path)
    if pivot and "pivot_wave" in ds.coords:
        have = np.asarray(ds["pivot_wave"].values, np.float64)[idx]
        off = np.abs(have / np.asarray(pivot) - 1) > 0.01
        if off.any():
            b = [bands[i] for i in np.nonzero(off)[0]]
            raise CubeError(
                f"{path}: band(s) {', '.join(b)} have pivot wavelengths "
                f"{', '.join(f'{w:.0f}' for w in have[off])} A but model {model} was trained for "
                f"{', '.join(f'{w:.0f}' for w in np.asarray(pivot)[off])} A (a different filter set)"
            )


#: a band of synthetic photometry with less of its weight inside the spectra than this is empty everywhere
MIN_BAND_COVERAGE = 0.99


def _check_coverage(ds: Any, bands: Sequence[str], max_masked_fraction: float, path: str, model: str) -> None:
    """CubeError when more of the model's bands than it can do without are empty everywhere (the store's
    ``band_coverage``: synthetic photometry of spectra that do not reach them), so that every pixel
    would be flagged masked: naming those bands, the bands the store has, and the packaged models that
    read only those."""
    coverage = ds.attrs.get("band_coverage")
    if coverage is None:
        return
    store_bands = [str(b) for b in ds["band"].values]
    covered = [b for b, c in zip(store_bands, coverage) if c >= MIN_BAND_COVERAGE]
    missing = [b for b in bands if b not in covered]
    if len(missing) <= max_masked_fraction * len(bands):
        return
    others = models_reading(covered, exclude=model)
    rest = (
        f"model(s) {', '.join(others)} read only bands the store has"
        if others
        else "no packaged model reads only those: train one on them (a `kind: sed` training config with "
        "`galaxies: {filters: <set>, pivot_range: [lo, hi]}`), or make the photometry from spectra that "
        "reach the missing bands"
    )
    raise CubeError(
        f"{path}: {len(missing)} of the {len(bands)} bands model {model} reads are empty everywhere (the "
        f"spectra the photometry was made from do not reach them): {', '.join(missing)}; with more than "
        f"{max_masked_fraction:.0%} of its bands missing every pixel would be flagged masked. The store has "
        f"data in {len(covered)} bands ({_span(covered)}); {rest}"
    )


def _span(bands: Sequence[str]) -> str:
    return "none" if not bands else f"{bands[0]}-{bands[-1]}" if len(bands) > 2 else ", ".join(bands)


def models_reading(bands: Sequence[str], exclude: str = "") -> list[str]:
    """The packaged photometric models whose bands are all among ``bands``."""
    from survey_proc.estimators import load_manifest, packaged_models  # estimators import this package

    have = set(bands)
    out = []
    for name in packaged_models():
        spec = load_manifest(name).raw.get("input", {})
        if name != exclude and spec.get("feature_dim") == "band" and set(spec.get("bands", [])) <= have:
            out.append(name)
    return out


def _check_redshift(redshift: float, redshift_range: tuple[float, float] | None, path: str, model: str) -> None:
    if redshift_range is not None and not redshift_range[0] <= redshift <= redshift_range[1]:
        raise CubeError(
            f"{path}: redshift {redshift:g} is outside the range {redshift_range[0]:g}-"
            f"{redshift_range[1]:g} model {model} was trained for; every pixel would be "
            "flagged out_of_range (pass --redshift if the store's value is wrong)"
        )


def _common(section: Mapping[str, Any]) -> dict[str, Any]:
    z = section.get("redshift_range")
    return {
        "bands": tuple(section["bands"]),
        "pivot": tuple(float(p) for p in section.get("pivot", ())),
        "max_masked_fraction": float(section.get("max_masked_fraction", 0.3)),
        "redshift_range": tuple(map(float, z)) if z is not None else None,
    }


class BandKind(InputKind):
    """What the photometric kinds share: they read a store's ``band`` axis, by band name."""

    feature_dim: ClassVar[str] = "band"

    def feature_axis(self, values: np.ndarray, medium: str | None = None) -> np.ndarray:
        """The store's band names (str, in an object array)."""
        return np.array([str(v) for v in values], dtype=object)


@dataclass(frozen=True)
class SEDInputSpec(BandKind):
    """What a per-pixel photometric model expects (the manifest's ``input`` with ``kind: sed``)."""

    kind: ClassVar[str] = "sed"

    bands: tuple[str, ...]
    pivot: tuple[float, ...] = ()  #: Angstrom, per band (checked against the store)
    channels: tuple[str, ...] = ("flux", "error", "mask")  #: and optionally "redshift"
    normalise: str = "median"
    max_masked_fraction: float = 0.3
    redshift_range: tuple[float, float] | None = None
    filter_set: str = ""
    redshift_scale: float = 30.0  #: the "redshift" channel holds the redshift times this in every band
    line_mask: LineMask | None = None  #: bands holding a strong nebular line at the redshift are masked
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any]) -> SEDInputSpec:
        known = {
            "kind",
            "bands",
            "pivot",
            "channels",
            "normalise",
            "max_masked_fraction",
            "redshift_range",
            "filter_set",
            "feature_dim",
            "redshift_scale",
            "line_mask",
        }
        return cls(
            **_common(section),
            channels=tuple(section.get("channels", ("flux", "error", "mask"))),
            normalise=section.get("normalise", "median"),
            filter_set=section.get("filter_set", ""),
            redshift_scale=float(section.get("redshift_scale", 30.0)),
            line_mask=LineMask.from_manifest(section.get("line_mask")),
            extra={k: v for k, v in section.items() if k not in known},
        )

    def to_manifest(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "feature_dim": self.feature_dim,
            "filter_set": self.filter_set,
            "bands": list(self.bands),
            "pivot": list(self.pivot),
            "channels": list(self.channels),
            **({"redshift_scale": self.redshift_scale} if "redshift" in self.channels else {}),
            "normalise": self.normalise,
            "max_masked_fraction": self.max_masked_fraction,
            "redshift_range": list(self.redshift_range) if self.redshift_range else None,
            **({"line_mask": self.line_mask.to_manifest()} if self.line_mask else {}),
            **self.extra,
        }

    def prepare_batch(
        self,
        flux: np.ndarray,
        var: np.ndarray,
        mask: np.ndarray,
        axis: Sequence[str],
        redshift: float | np.ndarray,
        shape: tuple[int, ...] | None = None,
    ) -> Prepared:
        """Band fluxes (n, nstore) -> model input (n, nchannels, nband)."""
        f, v, bad = select_bands(flux, var, mask, axis, self.bands)
        counted = bad  # the line bands are masked, but not as bad data
        if self.line_mask:
            lines = self.line_mask.hit(redshift, f.shape[0])
            counted, bad = bad & ~lines, bad | lines
            f, v = np.where(bad, np.float32(0), f), np.where(bad, np.float32(0), v)
        flags = band_flags(counted, self.max_masked_fraction, redshift, self.redshift_range)
        if self.normalise != "median":
            raise ValueError(f"unknown normalisation {self.normalise!r}")
        norm = masked_median(f, ~bad)
        ok = np.isfinite(norm) & (norm > 0)
        flags[~ok] |= np.uint8(Flag.NO_DATA)
        safe = np.where(ok, norm, 1.0)[:, None].astype(np.float32)
        chans = []
        for name in self.channels:
            if name == "flux":
                chans.append(fill_gaps(f / safe, ~bad))
            elif name == "error":
                chans.append(np.where(bad, 0.0, np.sqrt(v) / safe))
            elif name == "mask":
                chans.append(bad.astype(np.float32))
            elif name == "redshift":
                chans.append(np.broadcast_to(redshift_column(redshift, self.redshift_scale, f.shape[0]), f.shape))
            else:
                raise ValueError(f"unknown input channel {name!r}")
        x = np.stack(chans, axis=1).astype(np.float32)
        x[~np.isfinite(x)] = 0.0
        return Prepared(x=x, flags=flags, snr=band_snr(f, v, bad), norm=np.where(ok, norm, np.nan))

    def check_store(self, ds: Any, redshift: float, path: str, model: str) -> None:
        _check_bands(ds, self.bands, self.pivot, path, model)
        _check_coverage(ds, self.bands, self.max_masked_fraction, path, model)
        if "object" not in ds["flux"].dims:
            _check_redshift(redshift, self.redshift_range, path, model)


@dataclass(frozen=True)
class ImageInputSpec(BandKind):
    """What an image-to-image model expects (the manifest's ``input`` with ``kind: image``): a region
    goes in whole, as one tile grown by ``halo_pixels``."""

    kind: ClassVar[str] = "image"
    whole_regions: ClassVar[bool] = True

    bands: tuple[str, ...]
    softening: tuple[float, ...]  #: nJy per band: input is asinh(flux / softening)
    pixel_scale_arcsec: float  #: the pixel size the model was trained for
    halo_pixels: int = 0  #: neighbours read around each region (receptive field)
    pivot: tuple[float, ...] = ()
    max_masked_fraction: float = 0.3
    redshift_range: tuple[float, float] | None = None
    filter_set: str = ""
    #: > 0: one more channel, the redshift times this, the same in every pixel (0: none)
    redshift_scale: float = 0.0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any]) -> ImageInputSpec:
        known = {
            "kind",
            "bands",
            "pivot",
            "softening",
            "pixel_scale_arcsec",
            "halo_pixels",
            "max_masked_fraction",
            "redshift_range",
            "filter_set",
            "feature_dim",
            "channels",
            "redshift_scale",
        }
        return cls(
            **_common(section),
            softening=tuple(float(s) for s in section["softening"]),
            pixel_scale_arcsec=float(section["pixel_scale_arcsec"]),
            halo_pixels=int(section.get("halo_pixels", 0)),
            filter_set=section.get("filter_set", ""),
            redshift_scale=float(section.get("redshift_scale", 0.0)),
            extra={k: v for k, v in section.items() if k not in known},
        )

    def to_manifest(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "feature_dim": self.feature_dim,
            "filter_set": self.filter_set,
            "bands": list(self.bands),
            "pivot": list(self.pivot),
            "softening": list(self.softening),
            "channels": ["asinh_flux", "asinh_error", "mask"] + (["redshift"] if self.redshift_scale else []),
            "redshift_scale": self.redshift_scale,
            "pixel_scale_arcsec": self.pixel_scale_arcsec,
            "halo_pixels": self.halo_pixels,
            "max_masked_fraction": self.max_masked_fraction,
            "redshift_range": list(self.redshift_range) if self.redshift_range else None,
            **self.extra,
        }

    @property
    def n_channels(self) -> int:
        return 3 * len(self.bands) + (1 if self.redshift_scale else 0)

    def pixel_inputs(self, f: np.ndarray, v: np.ndarray, bad: np.ndarray) -> np.ndarray:
        """Per-pixel channels (n, 3 nband) from band fluxes, variances and bad flags (n, nband)."""
        s = np.asarray(self.softening, np.float32)[None, :]
        return np.concatenate(
            [
                np.where(bad, 0.0, np.arcsinh(f / s)),
                np.where(bad, 0.0, np.arcsinh(np.sqrt(v) / s)),
                bad.astype(np.float32),
            ],
            axis=1,
        ).astype(np.float32)

    def prepare_batch(
        self,
        flux: np.ndarray,
        var: np.ndarray,
        mask: np.ndarray,
        axis: Sequence[str],
        redshift: float | np.ndarray,
        shape: tuple[int, ...] | None = None,
    ) -> Prepared:
        """A tile's band fluxes (H*W, nstore) in raster order -> model input (1, 3 nband, H, W)."""
        if shape is None or len(shape) != 2:
            raise ValueError(f"an image model needs the tile's (y, x) shape, got {shape}")
        f, v, bad = select_bands(flux, var, mask, axis, self.bands)
        flags = band_flags(bad, self.max_masked_fraction, redshift, self.redshift_range)
        x = self.pixel_inputs(f, v, bad)
        x[~np.isfinite(x)] = 0.0
        if self.redshift_scale:
            x = np.concatenate([x, redshift_column(redshift, self.redshift_scale, x.shape[0])], axis=1)
        x = np.ascontiguousarray(x.T.reshape(1, x.shape[1], *shape))
        good = ~bad
        norm = masked_median(f, good)
        return Prepared(x=x, flags=flags, snr=band_snr(f, v, bad), norm=norm, per_pixel=False)

    def check_store(self, ds: Any, redshift: float, path: str, model: str) -> None:
        if tuple(ds["flux"].dims) != ("y", "x", "band"):
            raise CubeError(
                f"{path}: model {model} maps images; it needs a (y, x, band) store, not {tuple(ds['flux'].dims)}"
            )
        _check_bands(ds, self.bands, self.pivot, path, model)
        _check_redshift(redshift, self.redshift_range, path, model)
        scale = ds.attrs.get("pixel_scale_arcsec")
        if scale is None:
            raise CubeError(
                f"{path} has no 'pixel_scale_arcsec' attribute; model {model} works on "
                f"{self.pixel_scale_arcsec:g} arcsec pixels (set the attribute, resampling the "
                "images first if their pixels differ: survey-proc resample --input-pixel-scale)"
            )
        if abs(float(scale) / self.pixel_scale_arcsec - 1) > 0.01:
            raise CubeError(
                f"{path} has {float(scale):g} arcsec pixels but model {model} was trained on "
                f"{self.pixel_scale_arcsec:g} arcsec pixels; resample the images to that scale and its "
                f"seeing: survey-proc resample {path} OUT.zarr --model {model}"
            )
