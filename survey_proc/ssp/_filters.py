"""Filter curves: the J-PAS-like narrow-band set built from its published design, SDSS ugriz.

A :class:`FilterSet` holds every band's response on one common wavelength grid (Angstrom,
observed frame, air), which is also how a photometric store keeps its curves beside the data.
Responses are photon-counting throughputs (dimensionless, arbitrary peak): synthetic photometry
weights them by wavelength (see :mod:`survey_proc.synth._photometry`).

- **J-PAS-like** (Benitez et al. 2014 design): 54 narrow bands centred at 3785 + 100 k Angstrom
  (k = 0..53), FWHM 145 Angstrom. No registry package ships the real curves, so each band is a top
  hat of width 145 Angstrom whose edges are Gaussian-smoothed (sigma 6 Angstrom, a 10-90 % rise of
  about 15 Angstrom, like the steep interference-filter edges of the real set); the half-power points
  are exactly centre +- 72.5 Angstrom. No atmosphere or detector efficiency is folded in.
- **SDSS ugriz**: the Doi et al. (2010) reference responses through airmass 1.3 as shipped by the
  ``speclite`` package (pinned wheel, read once and cached as a small ``.npz``).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import erf

from survey_proc import config
from survey_proc.errors import DataUnavailableError
from survey_proc.fetch import registry_file

#: J-PAS-like design: centres 3785 + 100 k Angstrom, k = 0..53, FWHM 145 Angstrom
JPAS_FIRST_CENTRE = 3785.0
JPAS_SPACING = 100.0
JPAS_N_BANDS = 54
JPAS_FWHM = 145.0
JPAS_EDGE_SIGMA = 6.0
#: the narrow-band model's 36 bands: centres 3785-7285 Angstrom (3700-7000 Angstrom in the rest
#: frame of a galaxy at z ~ 0.04, the CALIFA/MaNGA range Liew-Cain et al. 2021 worked in)
JPAS36_RANGE = (3785.0, 7285.0)

SPECLITE_REQUIREMENT = "speclite==1.0.0"
SPECLITE_WHEEL = "speclite-1.0.0-py3-none-any.whl"
SPECLITE_SHA256 = "4bc8cb7f718b347e0ce566cb5ed341684c8efebe4a77f2a49aabe8ee085465d7"
SDSS_BANDS = ("u", "g", "r", "i", "z")


@dataclass(frozen=True)
class FilterSet:
    """Bands and their responses on one common grid.

    name : the set's name (``jpas``, ``sdss``...).
    bands : (nband,) band names.
    wave : (nwave,) Angstrom, increasing.
    response : (nband, nwave) photon-counting throughput, >= 0, zero outside each band.
    provenance : where the curves come from.
    """

    name: str
    bands: tuple[str, ...]
    wave: np.ndarray
    response: np.ndarray
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.response.shape != (len(self.bands), self.wave.size):
            raise ValueError(
                f"filter set {self.name}: response shape {self.response.shape} does not match "
                f"{len(self.bands)} bands x {self.wave.size} wavelengths"
            )

    def __len__(self) -> int:
        return len(self.bands)

    @property
    def pivot(self) -> np.ndarray:
        """Pivot wavelength of each band, Angstrom: sqrt(int R l dl / int R / l dl)."""
        num = np.trapezoid(self.response * self.wave, self.wave, axis=1)
        den = np.trapezoid(self.response / self.wave, self.wave, axis=1)
        return np.sqrt(num / den)

    @property
    def fwhm(self) -> np.ndarray:
        """Full width at half the peak response of each band, Angstrom."""
        out = np.empty(len(self.bands))
        for i, r in enumerate(self.response):
            above = np.nonzero(r >= 0.5 * r.max())[0]
            out[i] = self.wave[above[-1]] - self.wave[above[0]]
        return out

    @property
    def support(self) -> np.ndarray:
        """(nband, 2) first and last wavelength with non-zero response, Angstrom."""
        out = np.empty((len(self.bands), 2))
        for i, r in enumerate(self.response):
            nz = np.nonzero(r > 0)[0]
            out[i] = self.wave[nz[0]], self.wave[nz[-1]]
        return out

    def select(self, bands: Sequence[str]) -> FilterSet:
        """The set restricted to ``bands`` (in that order); raises naming missing bands."""
        index = {b: i for i, b in enumerate(self.bands)}
        missing = [b for b in bands if b not in index]
        if missing:
            raise ValueError(
                f"filter set {self.name} has no band(s) {', '.join(missing)}; it has {', '.join(self.bands)}"
            )
        rows = [index[b] for b in bands]
        return FilterSet(self.name, tuple(bands), self.wave, self.response[rows], self.provenance)

    def in_range(self, lo: float, hi: float) -> FilterSet:
        """The bands whose pivot wavelength lies inside [lo, hi] Angstrom."""
        keep = [b for b, p in zip(self.bands, self.pivot) if lo <= p <= hi]
        if not keep:
            raise ValueError(f"filter set {self.name} has no band with a pivot in {lo:g}-{hi:g} A")
        return FilterSet(
            f"{self.name}[{lo:g}-{hi:g}]", tuple(keep), self.wave, self.select(keep).response, self.provenance
        )


def top_hat_response(wave: np.ndarray, centre: float, fwhm: float, edge_sigma: float) -> np.ndarray:
    """A top hat of width ``fwhm`` with Gaussian-smoothed edges (peak 1; half power at centre +- fwhm/2)."""
    s = np.sqrt(2.0) * edge_sigma
    lo, hi = centre - fwhm / 2.0, centre + fwhm / 2.0
    r = 0.5 * (erf((wave - lo) / s) - erf((wave - hi) / s))
    r[r < 1e-6] = 0.0
    return r


def jpas_filters(centre_range: tuple[float, float] | None = None, step: float = 1.0) -> FilterSet:
    """The J-PAS-like narrow bands (all 54, or those with centres inside ``centre_range``, Angstrom)."""
    centres = JPAS_FIRST_CENTRE + JPAS_SPACING * np.arange(JPAS_N_BANDS)
    if centre_range is not None:
        centres = centres[(centres >= centre_range[0]) & (centres <= centre_range[1])]
    pad = JPAS_FWHM / 2.0 + 6.0 * JPAS_EDGE_SIGMA
    wave = np.arange(np.floor(centres[0] - pad), np.ceil(centres[-1] + pad) + step, step)
    response = np.stack([top_hat_response(wave, c, JPAS_FWHM, JPAS_EDGE_SIGMA) for c in centres])
    name = "jpas" if centre_range is None else "jpas36" if len(centres) == 36 else "jpas-subset"
    return FilterSet(
        name,
        tuple(f"J{int(c):04d}" for c in centres),
        wave,
        response,
        {
            "source": "J-PAS-like design (Benitez et al. 2014): centres 3785 + 100 k A, FWHM 145 A; "
            f"top hat with Gaussian edges (sigma {JPAS_EDGE_SIGMA:g} A), built by survey-proc",
        },
    )


_SPECLITE_HOW = (
    f"Install the pinned package (pip install '{SPECLITE_REQUIREMENT}', or the extra "
    "survey-proc[photometry]), or download " + SPECLITE_WHEEL + " from PyPI on a machine that can reach "
    "it and copy it into {downloads}; survey-proc reads the five files "
    "speclite/data/filters/sdss2010-[ugriz].ecsv from it."
)


def _read_ecsv(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(wavelength, response) columns of a speclite ``.ecsv`` filter file."""
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not rows or rows[0][:2] != ["wavelength", "response"]:
        raise DataUnavailableError("unexpected speclite filter file: no 'wavelength response' header")
    data = np.array(rows[1:], dtype=np.float64)
    return data[:, 0], data[:, 1]


def _speclite_texts(group: str, bands: Sequence[str]) -> tuple[dict[str, str], str]:
    """Text of each band's ``.ecsv`` file: from an installed speclite, else the pinned wheel."""
    files = {b: f"speclite/data/filters/{group}-{b}.ecsv" for b in bands}
    try:
        import speclite

        root = Path(speclite.__file__).parent.parent
        if all((root / f).exists() for f in files.values()):
            return (
                {b: (root / f).read_text() for b, f in files.items()},
                f"speclite {getattr(speclite, '__version__', '?')} (installed)",
            )
    except ImportError:
        pass
    how = _SPECLITE_HOW.format(downloads=config.cache_dir() / "downloads")
    wheel = registry_file(
        SPECLITE_REQUIREMENT, SPECLITE_WHEEL, SPECLITE_SHA256, pip_args=("--only-binary", ":all:"), how_to_supply=how
    )
    try:
        with zipfile.ZipFile(wheel) as zf:
            return {b: zf.read(f).decode() for b, f in files.items()}, f"{SPECLITE_WHEEL} (pinned)"
    except (KeyError, zipfile.BadZipFile) as exc:
        raise DataUnavailableError(f"{wheel} lacks the {group} filter files ({exc}). {how}") from exc


def sdss_filters(step: float = 1.0) -> FilterSet:
    """SDSS ugriz (Doi et al. 2010, airmass 1.3) from the pinned ``speclite`` data, cached."""
    cache = config.cache_dir() / "filters" / f"sdss2010-ugriz-{step:g}A.npz"
    if cache.exists():
        try:
            with np.load(cache) as z:
                return FilterSet(
                    "sdss",
                    SDSS_BANDS,
                    z["wave"],
                    z["response"],
                    json.loads(str(z["provenance"])) | {"cache": str(cache)},
                )
        except Exception:  # a truncated file: rebuild it
            cache.unlink(missing_ok=True)
    texts, source = _speclite_texts("sdss2010", SDSS_BANDS)
    curves = [_read_ecsv(texts[b]) for b in SDSS_BANDS]
    lo = min(w[0] for w, _ in curves)
    hi = max(w[-1] for w, _ in curves)
    wave = np.arange(np.floor(lo), np.ceil(hi) + step, step)
    # speclite interpolates linearly between the tabulated points and is zero outside them
    response = np.stack([np.interp(wave, w, r, left=0.0, right=0.0) for w, r in curves])
    provenance = {"source": f"SDSS 2010 reference responses (Doi et al. 2010, airmass 1.3) from {source}"}
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npz", delete=False) as tmp:
        np.savez_compressed(tmp, wave=wave, response=response, provenance=json.dumps(provenance))
    os.replace(tmp.name, cache)
    return FilterSet("sdss", SDSS_BANDS, wave, response, provenance)


#: filter sets by name (``--filters``)
FILTER_SETS = {
    "jpas": lambda: jpas_filters(),
    "jpas36": lambda: jpas_filters(JPAS36_RANGE),
    "sdss": sdss_filters,
}


def load_filters(name: str) -> FilterSet:
    """A filter set by name: ``jpas`` (54 bands), ``jpas36`` (centres 3785-7285 A), ``sdss``."""
    try:
        return FILTER_SETS[name]()
    except KeyError:
        raise ValueError(f"unknown filter set {name!r}; known: {', '.join(FILTER_SETS)}") from None
