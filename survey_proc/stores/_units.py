"""A store's flux units as a number: what one unit of its ``flux`` is in erg/s/cm^2/Angstrom per pixel.

Units are read with astropy after the spellings FITS headers use and astropy does not know are
normalised (``Ang``, ``A`` for Angstrom; ``^`` for powers; a trailing ``/spaxel`` or ``/pixel``,
which is what a spaxel's flux is anyway). Surface brightness (per arcsec^2) is turned into flux per
pixel with the pixel's area.
"""

from __future__ import annotations

import re
import warnings

_PER_PIXEL = re.compile(r"\s*/\s*(spaxel|spx|pixel|pix)\b", re.IGNORECASE)
_ANGSTROM = re.compile(r"\b(Ang|A)\b")


def _normalised(units: str) -> str:
    text = _PER_PIXEL.sub("", units.strip())
    return _ANGSTROM.sub("Angstrom", text).replace("^", "**")


def flux_unit_cgs(units: str, pixel_scale_arcsec: float | None = None) -> tuple[float | None, str]:
    """(erg/s/cm^2/Angstrom per pixel of one flux unit, or None; why not, when None).

    ``units`` as the store's ``flux`` attribute has them; ``pixel_scale_arcsec`` turns a surface
    brightness (per arcsec^2) into flux per pixel."""
    import astropy.units as u

    if not units or not units.strip():
        return None, "the flux has no units"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unit = u.Unit(_normalised(units), parse_strict="raise")
    except ValueError:
        return None, f"flux units {units!r} are not understood"
    f_lambda = u.erg / u.s / u.cm**2 / u.AA
    if unit.is_equivalent(f_lambda):
        return float(unit.to(f_lambda)), ""
    if unit.is_equivalent(f_lambda / u.arcsec**2):
        if not pixel_scale_arcsec:
            return None, f"flux units {units!r} are per arcsec^2 and the store has no pixel_scale_arcsec"
        return float(unit.to(f_lambda / u.arcsec**2)) * float(pixel_scale_arcsec) ** 2, ""
    return None, f"flux units {units!r} are not a flux density per Angstrom (not flux-calibrated)"
