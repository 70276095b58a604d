"""Which extensions of a FITS cube hold what: the data models ``survey-proc ingest`` recognises.

:func:`detect_layout` looks at the extension names (and a few header keywords) of an open file and
returns a :class:`FitsLayout`: the data, its uncertainty (a variance, an inverse variance or a 1-sigma
error), the bad-pixel mask and how to read it, where the wavelengths come from, and the instrument's
line-spread function. Recognised, in this order:

- **MaNGA** DRP ``LOGCUBE``/``LINCUBE`` (Law et al. 2016; DR15-DR17 data model): ``FLUX``, ``IVAR``,
  ``MASK`` (``MANGA_DRP3PIXMASK``: bits ``DONOTUSE`` and ``FORESTAR`` are bad, as the DAP takes
  them), ``WAVE`` (vacuum), resolution per spaxel ``LSFPOST``/``DISP`` (1-sigma, Angstrom) or else
  ``LSFPRE``/``PREDISP``, else the median ``SPECRES`` (R = lambda / FWHM).
- **CALIFA** DR2/DR3 ``V500``/``V1200``/``COMB`` cubes (Sanchez et al. 2016): data in the primary
  HDU, ``ERROR`` (1 sigma), ``BADPIX`` (1 = bad); air wavelengths from the spectral WCS; FWHM 6.0 A
  (V500, COMB) or 2.3 A (V1200), the setup read from the file name or the wavelength step.
- **MUSE** (ESO pipeline, PHANGS-MUSE releases without ``DQ``): ``DATA``, ``STAT`` (variance),
  optional ``DQ`` (non-zero = bad); the Bacon et al. (2017) LSF.
- **generic**: a data cube (``--data-ext``, else ``DATA``/``SCI``/``FLUX``, else the first 3-D
  image) with a spectral WCS, an uncertainty extension named ``--error-ext`` or found by name
  (``STAT``/``VAR``/``VARIANCE``: variance; ``IVAR``/``INVVAR``: inverse variance;
  ``ERR``/``ERROR``/``SIGMA``/``NOISE``: 1 sigma) or by the ESO keyword ``HDUCLAS3``
  (``MSE``/``INVMSE``/``RMSE``), an optional mask (``--mask-ext`` or ``DQ``/``QUALITY``/
  ``MASK``/``BADPIX``/``FLAGS``, non-zero = bad), and the resolution from ``--lsf-fwhm`` or a 1-D
  extension ``LSF_FWHM`` (Angstrom) or ``SPECRES`` (R).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from survey_proc.errors import CubeError, OptionError

#: how an uncertainty extension is turned into a variance
ERROR_KINDS = ("variance", "ivar", "error")
#: spectral setups of CALIFA and their instrumental FWHM in Angstrom (Sanchez et al. 2016, DR3)
CALIFA_FWHM = {"V500": 6.0, "V1200": 2.3, "COMB": 6.0}
#: MANGA_DRP3PIXMASK bits that make a pixel unusable (the DAP's choice): DONOTUSE, FORESTAR
MANGA_BAD_BITS = (1 << 10) | (1 << 3)

_DATA_NAMES = ("DATA", "SCI", "FLUX")
_ERROR_NAMES = {
    "STAT": "variance",
    "VAR": "variance",
    "VARIANCE": "variance",
    "IVAR": "ivar",
    "INVVAR": "ivar",
    "ERR": "error",
    "ERROR": "error",
    "SIGMA": "error",
    "NOISE": "error",
}
_HDUCLAS3 = {"MSE": "variance", "INVMSE": "ivar", "RMSE": "error"}
_MASK_NAMES = ("DQ", "QUALITY", "MASK", "BADPIX", "FLAGS")
_MANGA_LSF_PER_SPAXEL = ("LSFPOST", "DISP", "LSFPRE", "PREDISP")


@dataclass(frozen=True)
class IngestOptions:
    """What the user says about a FITS cube where its layout cannot (``survey-proc ingest`` options).

    ``data_ext``, ``error_ext``, ``mask_ext``: extension names (or numbers); ``error_kind``: what the
    error extension holds (variance | ivar | error); ``medium``: air | vacuum, for spectral axes that
    do not say; ``lsf_fwhm``: the instrumental FWHM in Angstrom (overrides the format's);
    ``lsf_per_spaxel``: keep a per-spaxel resolution as ``lsf_fwhm_spaxel(y, x, wave)`` beside the
    reduced ``lsf_fwhm(wave)`` the engine reads.
    """

    data_ext: str | None = None
    error_ext: str | None = None
    error_kind: str | None = None
    mask_ext: str | None = None
    medium: str | None = None
    lsf_fwhm: float | None = None
    lsf_per_spaxel: bool = False

    def check(self) -> None:
        if self.error_kind is not None and self.error_kind not in ERROR_KINDS:
            raise OptionError(f"--error-kind {self.error_kind}: use one of {', '.join(ERROR_KINDS)}")
        if self.medium is not None and self.medium not in ("air", "vacuum"):
            raise OptionError(f"--medium {self.medium}: use air or vacuum")


@dataclass(frozen=True)
class FitsLayout:
    """Where a FITS cube keeps what a cube store needs (HDU indices into the open file)."""

    format: str  #: e.g. "MaNGA LOGCUBE", "CALIFA V500", "MUSE", "MUSE (no DQ)", "generic"
    data: int
    error: int
    error_kind: str  #: variance | ivar | error
    mask: int | None = None
    mask_bits: int | None = None  #: bits of the mask that mean bad (None: any non-zero value)
    wave: int | None = None  #: an extension of wavelengths (else the data's spectral WCS)
    medium: str | None = None  #: known from the format (else from CTYPE3 or --medium)
    lsf: str = "header"  #: muse | califa | manga-spaxel | specres (R) | fwhm (Angstrom) | header (none known)
    lsf_ext: int | None = None  #: the extension holding the resolution (MaNGA; generic LSF_FWHM or SPECRES)
    lsf_fwhm: float | None = None  #: a constant FWHM in Angstrom (CALIFA)

    def names(self, hdul) -> str:
        """The extensions used, for messages and provenance: ``FLUX, IVAR, MASK``."""
        used = [self.data, self.error, self.mask, self.wave, self.lsf_ext]
        return ", ".join(hdul[i].name or f"HDU{i}" for i in used if i is not None)


def _index(hdul, names: tuple[str, ...]) -> int | None:
    for i, hdu in enumerate(hdul):
        if hdu.name.upper() in names:
            return i
    return None


def _named(hdul, ext: str, path: Path, option: str) -> int:
    """The index of extension ``ext`` (a name or a number) of an option; CubeError naming what exists."""
    if ext.isdigit() and int(ext) < len(hdul):
        return int(ext)
    found = _index(hdul, (ext.upper(),))
    if found is None:
        raise CubeError(f"{path}: {option} {ext}: no such extension; found: {_listing(hdul)}")
    return found


def _listing(hdul) -> str:
    return ", ".join(h.name or f"HDU{i}" for i, h in enumerate(hdul))


def _is_cube(hdu) -> bool:
    return hdu.header.get("NAXIS") == 3


def detect_layout(hdul, path: Path, options: IngestOptions) -> FitsLayout:
    """The layout of an open FITS cube: a recognised data model, else the generic one with the options."""
    names = {h.name.upper() for h in hdul}
    explicit = any(v is not None for v in (options.data_ext, options.error_ext, options.error_kind, options.mask_ext))
    if not explicit:
        if {"FLUX", "IVAR", "MASK", "WAVE"} <= names:
            return _manga(hdul)
        if {"ERROR", "BADPIX"} <= names and _is_cube(hdul[0]):
            return _califa(hdul, path)
    layout = _generic(hdul, path, options)
    if str(hdul[0].header.get("INSTRUME", hdul[layout.data].header.get("INSTRUME", ""))).strip().upper() == "MUSE":
        return replace(layout, format="MUSE" if layout.mask is not None else "MUSE (no DQ)", lsf="muse")
    return layout


def _manga(hdul) -> FitsLayout:
    lsf_ext = _index(hdul, _MANGA_LSF_PER_SPAXEL)
    if lsf_ext is None:
        lsf_ext, lsf = _index(hdul, ("SPECRES",)), "specres"
    else:
        lsf = "manga-spaxel"
    kind = "LINCUBE" if str(hdul["FLUX"].header.get("CTYPE3", "")).upper() == "WAVE" else "LOGCUBE"
    return FitsLayout(
        format=f"MaNGA {kind}",
        data=_index(hdul, ("FLUX",)),
        error=_index(hdul, ("IVAR",)),
        error_kind="ivar",
        mask=_index(hdul, ("MASK",)),
        mask_bits=MANGA_BAD_BITS,
        wave=_index(hdul, ("WAVE",)),
        medium="vacuum",
        lsf=lsf if lsf_ext is not None else "header",
        lsf_ext=lsf_ext,
    )


def califa_setup(path: Path, step: float) -> str:
    """The CALIFA setup of a cube: from its file name (``NGC0001.V500.rscube.fits.gz``), else its
    wavelength step (V1200: 0.7 A; V500 and COMB: 2 A, both at 6 A FWHM)."""
    match = re.search(r"\.(V500|V1200|COMB)\.", path.name.upper())
    if match:
        return match.group(1)
    return "V1200" if abs(step) < 1.0 else "V500"


def _califa(hdul, path: Path) -> FitsLayout:
    hdr = hdul[0].header
    setup = califa_setup(path, float(hdr.get("CDELT3", hdr.get("CD3_3", 2.0))))
    return FitsLayout(
        format=f"CALIFA {setup}",
        data=0,
        error=_index(hdul, ("ERROR",)),
        error_kind="error",
        mask=_index(hdul, ("BADPIX",)),
        medium="air",
        lsf="califa",
        lsf_fwhm=CALIFA_FWHM[setup],
    )


def _generic_data(hdul, path: Path, options: IngestOptions) -> int:
    if options.data_ext is not None:
        return _named(hdul, options.data_ext, path, "--data-ext")
    found = _index(hdul, _DATA_NAMES)
    if found is None:
        found = next((i for i, h in enumerate(hdul) if _is_cube(h)), None)
    if found is None:
        raise CubeError(
            f"{path}: no data extension (looked for {', '.join(_DATA_NAMES)} or any 3-D image); found: "
            f"{_listing(hdul)}; name it with --data-ext"
        )
    return found


def _generic_error(hdul, path: Path, options: IngestOptions, data: int) -> tuple[int, str]:
    """The uncertainty extension and what it holds: the options, else its name, else HDUCLAS3."""
    if options.error_ext is not None:
        index = _named(hdul, options.error_ext, path, "--error-ext")
    else:
        index = _index(hdul, tuple(_ERROR_NAMES))
        if index is None:
            index = next((i for i, h in enumerate(hdul) if i != data and h.header.get("HDUCLAS3") in _HDUCLAS3), None)
    if index is None:
        raise CubeError(
            f"{path}: no variance extension (looked for {', '.join(_ERROR_NAMES)}, or HDUCLAS3 = MSE, "
            f"INVMSE or RMSE); found: {_listing(hdul)}; name it with --error-ext NAME --error-kind "
            f"{'|'.join(ERROR_KINDS)}"
        )
    hdu = hdul[index]
    kind = options.error_kind or _ERROR_NAMES.get(hdu.name.upper()) or _HDUCLAS3.get(hdu.header.get("HDUCLAS3"))
    if kind is None:
        raise CubeError(
            f"{path}: extension {hdu.name or index} does not say whether it holds a variance, an inverse "
            f"variance or an error: give --error-kind {'|'.join(ERROR_KINDS)}"
        )
    return index, kind


def _generic(hdul, path: Path, options: IngestOptions) -> FitsLayout:
    data = _generic_data(hdul, path, options)
    error, kind = _generic_error(hdul, path, options, data)
    if options.mask_ext is not None:
        mask = _named(hdul, options.mask_ext, path, "--mask-ext")
    else:
        mask = _index(hdul, _MASK_NAMES)
    lsf_ext, lsf = _index(hdul, ("LSF_FWHM",)), "fwhm"
    if lsf_ext is None:
        lsf_ext, lsf = _index(hdul, ("SPECRES",)), "specres"
    lsf = lsf if lsf_ext is not None else "header"
    return FitsLayout(format="generic", data=data, error=error, error_kind=kind, mask=mask, lsf=lsf, lsf_ext=lsf_ext)
