"""The SSP libraries of the ``sdss-mangadap`` wheel: where each lies, how its files are named, its units.

The MaNGA Data Analysis Pipeline (Westfall et al. 2019) ships its template libraries as one FITS file
per SSP under ``mangadap/data/spectral_templates/<folder>/``, with their FWHM, medium and usable
wavelengths in ``mangadap/config/spectral_templates/<name>.ini``; the values below are taken from
those files and the folders' READMEs. [M/H] is log10(Z / 0.02) where a library gives Z (the solar
Z = 0.02 of M11, BC03 and BPASS). Fluxes are brought to L_sun / Angstrom per M_sun formed (the
E-MILES unit) where the library gives an absolute scale (``flux_to_lsun``); MaStar's spectra are
shipped normalised to unit median, so their scale is set from E-MILES (see :mod:`._mangadap`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from survey_proc.ssp._luminosity import L_SUN_ERG_S

#: L_sun in erg/s (IAU 2015 nominal), to turn the M11 spectra (erg/s/A per M_sun) into L_sun/A
#: the solar metallicity (mass fraction) of the libraries that give Z
Z_SUN = 0.02


@dataclass(frozen=True)
class WheelLibrary:
    """One SSP library of the wheel and how to read it.

    ``pattern`` matches a file name and has the groups ``age`` and ``metal``, read as ``age_unit``
    (``gyr`` or ``log_gyr``) and ``metal_unit`` (``Z``: mass fraction; ``Z1000``: Z x 1000;
    ``dex``: [M/H], with ``m``/``p`` for the sign as MILES writes it).
    """

    name: str
    title: str  #: what it is, for provenance and reports
    folder: str  #: under mangadap/data/spectral_templates/
    pattern: str
    age_unit: str
    metal_unit: str
    medium: str  #: air | vacuum, of the shipped wavelengths
    fwhm: float | None  #: Angstrom; None: lambda / R from the SRES extension
    flux_to_lsun: float | None  #: factor to L_sun/A per M_sun formed; None: spectra normalised (MaStar)
    imf: str
    reference: str
    wave_limit: tuple[float | None, float | None] = (None, None)  #: usable range (the .ini's wave_limit)
    step: float | None = None  #: linear air grid (Angstrom) for spectra that are not on one (vacuum or log)
    metals: tuple[float, ...] | None = None  #: [M/H] kept (None: all)
    min_age_gyr: float = 0.0  #: younger SSPs left out
    notes: str = ""

    def parse(self, filename: str) -> tuple[float, float] | None:
        """(age in Gyr, [M/H]) of one of the library's files, or None for a file that is not one."""
        m = re.search(self.pattern, filename)
        if not m:
            return None
        age = float(m.group("age"))
        return (10.0**age if self.age_unit == "log_gyr" else age), _metal(m.group("metal"), self.metal_unit)


def _metal(text: str, unit: str) -> float:
    """[M/H] (dex, 4 decimals) of a metallicity as a file name writes it."""
    if unit == "Z":
        return round(math.log10(float(text) / Z_SUN), 4)
    if unit == "Z1000":
        return round(math.log10(float(text) / 1000.0 / Z_SUN), 4)
    return round(float(text.replace("m", "-").replace("p", "+")), 4)


_M11 = "Maraston & Stromback (2011), Salpeter IMF (DAP set: Z = 0.01, 0.02, 0.04)"
_M11_UNITS = 1.0 / L_SUN_ERG_S  # erg/s/A per M_sun

#: the libraries the wheel ships that survey-proc reads, by name
WHEEL_LIBRARIES: dict[str, WheelLibrary] = {
    lib.name: lib
    for lib in (
        WheelLibrary(
            "m11-miles",
            "M11-MILES",
            "m11_miles",
            r"_age_(?P<age>[\d.]+)_z_(?P<metal>\d\.\d+)\.fits$",
            "gyr",
            "Z",
            "air",
            2.54,
            _M11_UNITS,
            "Salpeter",
            _M11,
            wave_limit=(3550.0, 7400.0),
        ),
        WheelLibrary(
            "m11-stelib",
            "M11-STELIB",
            "m11_stelib",
            r"_age_(?P<age>[\d.]+)_z_(?P<metal>\d\.\d+)_s\.fits$",
            "gyr",
            "Z",
            "air",
            3.40,
            _M11_UNITS,
            "Salpeter",
            _M11,
            notes="the DAP's 1 A resampling (*_s.fits); usable to 7900 A (README)",
        ),
        WheelLibrary(
            "m11-elodie",
            "M11-ELODIE",
            "m11_elodie",
            r"_age_(?P<age>[\d.]+)_z_(?P<metal>\d\.\d+)\.fits$",
            "gyr",
            "Z",
            "air",
            0.55,
            _M11_UNITS,
            "Salpeter",
            _M11,
            wave_limit=(None, 6795.0),
        ),
        WheelLibrary(
            "m11-marcs",
            "M11-MARCS",
            "m11_marcs",
            r"_age_(?P<age>[\d.]+)_z_(?P<metal>-?\d\.\d+)_s\.fits$",
            "gyr",
            "dex",
            "air",
            2.73,
            _M11_UNITS,
            "Salpeter",
            "Maraston & Stromback (2011) with MARCS theoretical stars (Gustafsson et al. 2008), Salpeter IMF",
            metals=(0.0, 0.35),
            notes="ages 3-15 Gyr only; [Z/H] = -2.25 (4 ages) left out for a full grid",
        ),
        WheelLibrary(
            "mastar",
            "MaStar SSP v1.0",
            "mastar_ssp_v1.0",
            r"MaStar-SSP-A(?P<age>[\d.]+)-Z(?P<metal>[-+]\d\.\d+)\.fits\.gz$",
            "gyr",
            "dex",
            "vacuum",
            None,
            None,
            "Salpeter",
            "Maraston et al. (2020), MaStar stars, Salpeter IMF",
            step=0.5,
            min_age_gyr=0.06,
            notes="shipped normalised to unit median; ages under 60 Myr (3, 10, 32 Myr) left out: E-MILES, "
            "which restores their light per unit mass, starts at 63 Myr",
        ),
        WheelLibrary(
            "bpass",
            "BPASS v2.2.1 (binaries)",
            "bpass",
            r"-z(?P<metal>\d{3})-T(?P<age>-?\d\.\d+)\.fits$",
            "log_gyr",
            "Z1000",
            "vacuum",
            1.0,
            1e-6,  # L_sun/A per 1e6 M_sun formed
            "Kroupa-like broken power law, 0.1-300 M_sun (imf135_300)",
            "Eldridge, Stanway et al. (2017); Stanway & Eldridge (2018)",
            step=1.0,
            notes="vacuum wavelengths as the DAP's README assumes",
        ),
        WheelLibrary(
            "miuscat",
            "MIUSCAT",
            "miuscat",
            r"Iun1\.30Z(?P<metal>[mp]\d\.\d+)T(?P<age>\d+\.\d+)\.fits$",
            "gyr",
            "dex",
            "air",
            2.51,
            1.0,
            "Salpeter (unimodal 1.30)",
            "Vazdekis et al. (2012)",
            wave_limit=(3480.0, 9430.0),
            notes="the optical part of E-MILES' parent models: close to E-MILES where both exist",
        ),
        WheelLibrary(
            "bc03",
            "BC03 (MPA-JHU set)",
            "bc03_mpajhu",
            r"BC03_z(?P<metal>\d\.\d+)_a(?P<age>\d+\.\d+)\.fits$",
            "gyr",
            "Z",
            "air",
            2.30,
            1.0,
            "Chabrier (assumed: the DAP's README does not say)",
            "Bruzual & Charlot (2003), the set the MPA-JHU catalogue used",
        ),
    )
}
