"""SSP libraries from the pinned ``sdss-mangadap`` wheel: fetched once, each library converted once, cached.

The wheel (121 MB, pure Python) is fetched through :func:`survey_proc.fetch.registry_file` into the
user cache, like the E-MILES sdist. Only the files of the library asked for are read, straight from
the zip, and converted into an :class:`SSPLibrary` (rest-frame air wavelengths on a linear grid, flux
in L_sun / Angstrom per M_sun formed, float32) kept as one compact ``.npz`` per library.

What the wheel does not give is taken from E-MILES, and the provenance says so:

- mass in stars and remnants per M_sun formed: the Vazdekis et al. (2012) Salpeter table E-MILES
  carries (its ``mass``), interpolated bilinearly in log age and [M/H] and clipped at that grid's
  edges (63 Myr - 15.8 Gyr, -1.71 .. +0.22 dex). Right in kind for the Salpeter libraries (M11,
  MaStar, MIUSCAT); for BPASS (Kroupa-like) and BC03 (Chabrier), whose IMFs have fewer low-mass
  stars, it overstates the mass left after a few Gyr by roughly 10-15 %.
- MaStar's flux scale: the wheel's spectra are normalised to unit median, so each is scaled to the
  light per unit mass of E-MILES in the light window at its age and [M/H] (the same interpolation,
  of the logarithm).

A library's grid is the ages every kept metallicity has (the M11 sets have extra young ages at solar
metallicity only); what is left out is listed in the provenance.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from survey_proc import config
from survey_proc.errors import DataUnavailableError
from survey_proc.fetch import registry_file
from survey_proc.ssp._instrument import resample, vacuum_to_air
from survey_proc.ssp._library import SSPLibrary, cached_library, load_emiles, save_compact
from survey_proc.ssp._mangadap_grids import WHEEL_LIBRARIES, WheelLibrary

REQUIREMENT = "sdss-mangadap==4.5.0"
WHEEL = "sdss_mangadap-4.5.0-py3-none-any.whl"
WHEEL_SHA256 = "b8478bb24c32fe736fa6a2881805458719281862313838f8b032f3c10527ff34"
#: where the template libraries lie inside the wheel
TEMPLATES = "mangadap/data/spectral_templates/"
_FORMAT = 1  #: version of the conversion (part of the cache file's name)

log = logging.getLogger(__name__)

HOW_TO_SUPPLY = (
    f"To supply it by hand (e.g. on a compute node without registry access), download {WHEEL} from PyPI "
    f"({REQUIREMENT}) on a machine that can reach it and copy it to {{cache}}/downloads/ (its SHA-256 is checked)."
)


def mangadap_wheel() -> Path:
    """The pinned ``sdss-mangadap`` wheel in the user cache, fetched from the registry once."""
    return registry_file(
        REQUIREMENT,
        WHEEL,
        WHEEL_SHA256,
        pip_args=("--only-binary", ":all:"),
        how_to_supply=HOW_TO_SUPPLY.format(cache=config.cache_dir()),
    )


def load_wheel_library(name: str) -> SSPLibrary:
    """The wheel's library ``name`` (a key of :data:`WHEEL_LIBRARIES`), from its compact cache, built on first use."""
    spec = WHEEL_LIBRARIES[name]
    wave_range = tuple(float(w) for w in config.get("ssp.wave-range"))
    emiles_id = config.get("ssp.sha256")[:8]
    tag = f"{name}-{WHEEL_SHA256[:12]}-emiles{emiles_id}-{wave_range[0]:.0f}-{wave_range[1]:.0f}-v{_FORMAT}"
    compact = config.cache_dir() / "ssp" / f"{tag}.npz"

    def build(path: Path) -> None:
        wheel = mangadap_wheel()
        log.info("converting the %s library of %s into %s", spec.title, wheel.name, path)
        lib = convert_wheel_library(wheel, spec, wave_range, load_emiles())
        save_compact(lib, path)

    return dataclasses.replace(cached_library(compact, build), name=name)


def convert_wheel_library(
    wheel: str | Path, spec: WheelLibrary, wave_range: tuple[float, float], emiles: SSPLibrary
) -> SSPLibrary:
    """Read ``spec``'s files from ``wheel`` (any zip with the wheel's layout) into an :class:`SSPLibrary`
    restricted to the rest-frame (air) ``wave_range``; ``emiles`` gives the masses (and MaStar's scale)."""
    with zipfile.ZipFile(wheel) as zf:
        found = _library_files(zf.namelist(), spec)
        metals, ages, picked, left_out = _full_grid(found, spec)
        spectra = {key: _read_spectrum(zf.read(member), member.endswith(".gz")) for key, member in picked.items()}
    wave_in, _, sres = spectra[(metals[0], ages[0])]
    wave_in_air = _to_air(wave_in, spec.medium)
    wave = _output_grid(wave_in_air, spec, wave_range)
    flux = np.empty((metals.size, ages.size, wave.size), np.float32)
    for (metal, age), (w, f, _) in spectra.items():
        if w.size != wave_in.size or not np.allclose(w, wave_in, rtol=0, atol=1e-6 * w[0]):
            raise DataUnavailableError(f"{spec.title}: the SSP of [M/H]={metal}, age={age} Gyr is on another grid")
        i, j = int(np.searchsorted(metals, metal)), int(np.searchsorted(ages, age))
        flux[i, j] = resample(wave_in_air, f, wave)
    _check_flux(flux, spec)
    log_age = np.log10(ages * 1e9)
    light_note = _scale_flux(flux, wave, spec, emiles, log_age, metals)
    lib = SSPLibrary(
        wave=wave,
        flux=flux,
        log_age=log_age,
        metal=metals,
        mass=on_emiles_grid(emiles.mass, emiles, log_age, metals),
        fwhm=_fwhm(spec, wave, wave_in_air, sres),
        name=spec.name,
    )
    return dataclasses.replace(lib, provenance=_provenance(spec, left_out, light_note))


def _library_files(names: Iterable[str], spec: WheelLibrary) -> dict[tuple[float, float], str]:
    """{([M/H], age Gyr): member} of the library's files in the wheel."""
    prefix = f"{TEMPLATES}{spec.folder}/"
    found = {}
    for member in names:
        if member.startswith(prefix) and "/" not in member[len(prefix) :]:
            parsed = spec.parse(member[len(prefix) :])
            if parsed is not None:
                found[(parsed[1], parsed[0])] = member
    if not found:
        raise DataUnavailableError(f"no {spec.title} files under {prefix} of the wheel")
    return found


def _full_grid(
    found: dict[tuple[float, float], str], spec: WheelLibrary
) -> tuple[np.ndarray, np.ndarray, dict[tuple[float, float], str], list[str]]:
    """(metals, ages in Gyr, {(metal, age): member} on the full grid, what was left out): the kept
    metallicities and the ages all of them have, at or above ``spec.min_age_gyr``."""
    metals = sorted({m for m, _ in found if spec.metals is None or any(abs(m - k) < 1e-3 for k in spec.metals)})
    per_metal = [{a for m, a in found if m == metal and a >= spec.min_age_gyr} for metal in metals]
    ages = sorted(set.intersection(*per_metal))
    if len(metals) < 2 or len(ages) < 2:
        raise DataUnavailableError(f"{spec.title}: the files do not form a grid of 2 or more ages and metallicities")
    picked = {(m, a): found[(m, a)] for m in metals for a in ages}
    left = sorted(set(found) - set(picked))
    left_out = [f"[M/H]={m:+.2f} age={a:g} Gyr" for m, a in left]
    return np.array(metals), np.array(ages), picked, left_out


def _read_spectrum(data: bytes, gz: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(wavelength, flux as float64, resolution R or None) of one SSP file's bytes (linear or log10 WCS)."""
    from astropy.io import fits

    with fits.open(io.BytesIO(gzip.decompress(data) if gz else data)) as hdul:
        hdr = hdul[0].header
        flux = np.asarray(hdul[0].data, dtype=np.float64)
        step = hdr.get("CDELT1", hdr.get("CD1_1"))
        coord = hdr["CRVAL1"] + step * (np.arange(flux.size) + 1 - hdr.get("CRPIX1", 1.0))
        wave = 10.0**coord if str(hdr.get("CTYPE1", "")).upper() == "WAVE-LOG" else coord
        sres = np.asarray(hdul["SRES"].data, np.float64) if "SRES" in hdul else None
    return wave, flux, sres


def _to_air(wave: np.ndarray, medium: str) -> np.ndarray:
    return vacuum_to_air(wave) if medium == "vacuum" else wave


def _output_grid(wave_air: np.ndarray, spec: WheelLibrary, wave_range: tuple[float, float]) -> np.ndarray:
    """The linear air grid of the converted library: the shipped pixels (a linear air grid), or a
    ``spec.step`` grid; within the usable range and ``wave_range``."""
    lo_lim, hi_lim = spec.wave_limit
    lo = max(wave_air[0], wave_range[0], lo_lim if lo_lim is not None else -np.inf)
    hi = min(wave_air[-1], wave_range[1], hi_lim if hi_lim is not None else np.inf)
    if spec.step is None:
        return wave_air[(wave_air >= lo) & (wave_air <= hi)]
    return np.ceil(lo / spec.step) * spec.step + spec.step * np.arange(int(np.floor((hi - lo) / spec.step)))


def _check_flux(flux: np.ndarray, spec: WheelLibrary) -> None:
    bad = ~(np.isfinite(flux) & (flux > 0))
    if bad.any():
        i, j, _ = np.argwhere(bad)[0]
        raise DataUnavailableError(
            f"{spec.title}: {int(bad.sum())} non-positive or non-finite flux values within the usable range "
            f"(first in SSP {i}, {j})"
        )


def on_emiles_grid(values: np.ndarray, emiles: SSPLibrary, log_age: np.ndarray, metal: np.ndarray) -> np.ndarray:
    """(len(metal), len(log_age)) of a quantity given on the E-MILES grid (nmetal, nage): bilinear in
    [M/H] and log age, clipped at the grid's edges."""
    by_age = np.stack([np.interp(log_age, emiles.log_age, row) for row in np.asarray(values, np.float64)])
    return np.stack([[np.interp(m, emiles.metal, by_age[:, j]) for j in range(log_age.size)] for m in metal])


def _scale_flux(
    flux: np.ndarray, wave: np.ndarray, spec: WheelLibrary, emiles: SSPLibrary, log_age: np.ndarray, metal: np.ndarray
) -> str:
    """Bring ``flux`` (in place) to L_sun/A per M_sun formed; returns how."""
    if spec.flux_to_lsun is not None:
        flux *= np.float32(spec.flux_to_lsun)
        return f"shipped flux x {spec.flux_to_lsun:.6g} -> L_sun/A per M_sun formed"
    light = flux[..., (wave >= 5070.0) & (wave <= 5950.0)].mean(axis=-1)
    target = 10.0 ** on_emiles_grid(np.log10(emiles.light_in_window()), emiles, log_age, metal)
    flux *= (target / light)[..., None].astype(np.float32)
    return (
        "shipped normalised; scaled to E-MILES' mean light per M_sun formed in 5070-5950 A at the same age "
        "and [M/H] (interpolated in log, clipped at the E-MILES grid's edges)"
    )


def _fwhm(spec: WheelLibrary, wave: np.ndarray, wave_in_air: np.ndarray, sres: np.ndarray | None) -> float | np.ndarray:
    if spec.fwhm is not None:
        return float(spec.fwhm)
    if sres is None:
        raise DataUnavailableError(f"{spec.title}: no FWHM given and no SRES extension to derive it from")
    return np.interp(wave, wave_in_air, wave_in_air / sres)


def _provenance(spec: WheelLibrary, left_out: list[str], light_note: str) -> dict:
    return {
        "source": f"{spec.title} via {REQUIREMENT} ({WHEEL}: {TEMPLATES}{spec.folder})",
        "sha256": WHEEL_SHA256,
        "reference": spec.reference,
        "imf": spec.imf,
        "medium": "air" if spec.medium == "air" else "air (converted from vacuum, Ciddor 1996)",
        "fwhm": f"{spec.fwhm} A (the DAP's .ini)" if spec.fwhm is not None else "lambda / R of the SRES extension",
        "flux": light_note,
        "mass": "stars + remnants per M_sun formed from the Vazdekis et al. (2012) Salpeter table (via E-MILES), "
        "interpolated in log age and [M/H], clipped at its grid's edges"
        + ("" if "Salpeter" in spec.imf else f"; an approximation for this IMF ({spec.imf})"),
        "left_out": left_out,
        "notes": spec.notes,
    }
