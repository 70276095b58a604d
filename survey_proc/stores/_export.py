"""A maps store as a multi-extension FITS file, in the spirit of the MaNGA DAP's ``MAPS`` file.

``survey-proc export MAPS.zarr OUT.fits`` writes:

- a primary HDU without data whose header holds the provenance (model id and SHA-256, software,
  the cube, redshift, S/N threshold, the run's options) and the list of extensions;
- one image HDU per property (``LOG_AGE``, ``METALLICITY``, ``AV``, ``SIGMA``, ...) with ``BUNIT``,
  the cube's celestial WCS (where it has one), ``ERRDATA`` and ``QUALDATA`` naming its error and
  quality extensions as the DAP does (and ``SYSDATA`` its SSP-library systematic, where the model
  reports one); then ``<NAME>_ERR`` for each, ``<NAME>_SYS_ERR``, the diagnostics (``SNR``,
  novelty scores) and ``FLAG``: the bitmask, with ``BITn`` keywords giving each bit's name and
  meaning;
- for a binned run, the maps on the pixel grid and ``BIN_ID``; for a catalogue (``object``), one
  table ``MAPS`` with a row per object (``RA``, ``DEC`` and every map as columns).

Variables with extra dims (weight grids) are left out and listed in the primary header
(``OMITTED``). Readable with astropy, DS9 or QFitsView; written beside the output and renamed
into place, and only ever over a file this command wrote (``ORIGIN = 'survey-proc'``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from survey_proc.errors import OptionError
from survey_proc.stores._lock import OutputPathError
from survey_proc.stores._maps import FLAG_DESCRIPTIONS, Flag, map_variables, open_pixel_maps

ORIGIN = "survey-proc"
#: primary-header keywords and the maps attributes they hold
_PROVENANCE = {
    "MODELID": "model_id",
    "MODEL": "model_name",
    "MODELSHA": "model_sha256",
    "ESTIMATR": "model_estimator",
    "SOFTWARE": "software",
    "CUBE": "cube",
    "CUBESRC": "cube_source",
    "INFPRINT": "input_fingerprint",
    "REDSHIFT": "redshift",
    "MINSNR": "min_snr",
    "PRECISN": "network_precision",
    "CREATED": "created",
    "COMPLETE": "completed",
    "STATUS": "status",
}


@dataclass(frozen=True)
class ExportedMaps:
    """What :func:`export_maps_fits` wrote."""

    path: str
    extensions: list[str]
    wcs: bool  #: whether the images carry a celestial WCS
    omitted: list[str]  #: variables left out (extra dims)


def _wcs_cards(ds: xr.Dataset):
    """The celestial WCS of the maps as header cards, or None."""
    from astropy.io import fits

    text = ds.attrs.get("wcs_header")
    return fits.Header.fromstring(str(text)) if text else None


def _image(name: str, da: xr.DataArray, wcs, extra: dict):
    from astropy.io import fits

    values = np.asarray(da.values)
    if values.dtype == bool:
        values = values.astype(np.uint8)
    hdu = fits.ImageHDU(values, name=name.upper())
    if wcs is not None:
        hdu.header.extend(wcs.cards)
    hdu.header["BUNIT"] = (str(da.attrs.get("units", "")), "units of the values")
    hdu.header["QUANTITY"] = str(da.attrs.get("long_name", name))[:68]
    for key, value in extra.items():
        hdu.header[key] = value
    return hdu


def _flag_hdu(ds: xr.Dataset, wcs):
    hdu = _image("flag", ds["flag"], wcs, {"BUNIT": ("", "bitmask, 0 = good")})
    for flag in Flag:
        bit = int(flag).bit_length() - 1
        hdu.header[f"BIT{bit}"] = (flag.name, FLAG_DESCRIPTIONS[flag])
    return hdu


def _errors(ds: xr.Dataset, properties: list[str]) -> list[str]:
    """The error maps of ``properties`` in ``ds``: every ``<name>_err``, then every ``<name>_sys_err``."""
    return [f"{n}{suffix}" for suffix in ("_err", "_sys_err") for n in properties if f"{n}{suffix}" in ds]


def _images(ds: xr.Dataset) -> list:
    """The image HDUs of maps on a pixel grid: properties, their errors, diagnostics, bin ids, flag."""
    wcs = _wcs_cards(ds)
    properties, diagnostics = map_variables(ds)
    hdus = []
    for name in properties:
        extra = {"QUALDATA": ("FLAG", "quality bitmask extension")}
        if f"{name}_err" in ds:
            extra["ERRDATA"] = (f"{name}_err".upper(), "1-sigma error extension")
        if f"{name}_sys_err" in ds:
            extra["SYSDATA"] = (f"{name}_sys_err".upper(), "SSP-library systematic error extension")
        hdus.append(_image(name, ds[name], wcs, extra))
    hdus += [_image(n, ds[n], wcs, {}) for n in _errors(ds, properties)]
    hdus += [_image(n, ds[n], wcs, {}) for n in diagnostics]
    if "bin_id" in ds:
        hdus.append(_image("bin_id", ds["bin_id"], wcs, {}))
    hdus.append(_flag_hdu(ds, wcs))
    return hdus


def _table(ds: xr.Dataset):
    """One table of a catalogue's maps: a row per object."""
    from astropy.io import fits

    properties, diagnostics = map_variables(ds)
    names = [*properties, *_errors(ds, properties), *diagnostics, "flag"]
    cols = [fits.Column("OBJECT", "K", array=np.arange(ds.sizes["object"]))]
    for c in ("ra", "dec"):
        if c in ds.coords:
            cols.append(fits.Column(c.upper(), "D", unit="deg", array=np.asarray(ds[c].values, np.float64)))
    for name in names:
        values = np.asarray(ds[name].values)
        fmt = "B" if values.dtype == np.uint8 else "E"
        cols.append(fits.Column(name.upper(), fmt, unit=str(ds[name].attrs.get("units", "")), array=values))
    table = fits.BinTableHDU.from_columns(cols, name="MAPS")
    for flag in Flag:
        table.header[f"BIT{int(flag).bit_length() - 1}"] = (flag.name, FLAG_DESCRIPTIONS[flag])
    return table


def _primary(ds: xr.Dataset, source: Path, extensions: list[str], omitted: list[str]):
    from astropy.io import fits

    hdu = fits.PrimaryHDU()
    hdr = hdu.header
    hdr["ORIGIN"] = (ORIGIN, "written by survey-proc export")
    hdr["MAPSSTOR"] = str(source.resolve())  # long strings take CONTINUE cards: no comments on them
    for key, attr in _PROVENANCE.items():
        value = ds.attrs.get(attr)
        if value is not None and value != "":
            hdr[key] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    options = ds.attrs.get("run_options")
    if options:
        hdr["RUNOPTS"] = json.dumps(options) if isinstance(options, dict) else str(options)
    hdr["EXTNAMES"] = " ".join(extensions)
    if omitted:
        hdr["OMITTED"] = " ".join(omitted)  # variables with extra dims (weight grids), not exported
    return hdu


def _check_output(out: Path, source: Path, overwrite: bool) -> None:
    from astropy.io import fits

    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise OutputPathError(f"{out}: the FITS file must not be the maps store or lie inside it")
    if not out.exists():
        return
    if not overwrite:
        raise OutputPathError(f"{out} exists; give --overwrite to replace it (only a file survey-proc export wrote)")
    try:
        mine = out.is_file() and fits.getheader(out).get("ORIGIN") == ORIGIN
    except OSError:
        mine = False
    if not mine:
        raise OutputPathError(
            f"{out} exists and is not a FITS file survey-proc export wrote: survey-proc never replaces other "
            "files, --overwrite or not; choose another output"
        )


def export_maps_fits(maps: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> ExportedMaps:
    """Write the maps store ``maps`` as a multi-extension FITS file ``out`` (see the module docstring)."""
    from astropy.io import fits

    source, out = Path(maps), Path(out)
    if not out.name.lower().endswith((".fits", ".fits.gz", ".fit")):
        raise OptionError(f"{out}: give the FITS file a .fits (or .fits.gz) name")
    _check_output(out, source, overwrite)
    ds = open_pixel_maps(source)
    spatial = ds["flag"].dims
    omitted = [
        str(n) for n, v in ds.data_vars.items() if len(v.dims) > len(spatial) and spatial == v.dims[: len(spatial)]
    ]
    hdus = _images(ds) if spatial == ("y", "x") else [_table(ds)]
    names = [h.name for h in hdus]
    tmp = out.with_name(f".partial-{out.name}")  # the same suffix: astropy compresses .fits.gz
    fits.HDUList([_primary(ds, source, names, omitted), *hdus]).writeto(tmp, overwrite=True, checksum=True)
    tmp.replace(out)
    return ExportedMaps(str(out), names, "wcs_header" in ds.attrs, omitted)
