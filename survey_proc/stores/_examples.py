"""Real example data fetched from the package registry (pinned) into the user cache."""

from __future__ import annotations

import zipfile
from pathlib import Path

from survey_proc import config
from survey_proc.errors import DataUnavailableError
from survey_proc.fetch import registry_file

MPDAF_WHEEL = "mpdaf-3.6-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
MPDAF_SHA256 = "c76e20ae254012669ed966c35f2acd31ced81acc31946d9a04587cce3578ee17"
MINICUBE_MEMBER = "mpdaf/data/sdetect/minicube.fits"
#: systemic redshift of the Abell 478 brightest cluster galaxy in the minicube
MINICUBE_REDSHIFT = 0.086


def muse_minicube() -> Path:
    """Path of ``minicube.fits``: a real MUSE cube (DATA/STAT/DQ, 3681 x 40 x 40, 4750-9350 A) of the
    Abell 478 central galaxy, shipped in the ``mpdaf==3.6`` wheel; fetched once and cached."""
    target = config.cache_dir() / "examples" / "mpdaf-3.6-minicube.fits"
    if target.exists():
        return target
    how = (
        "To supply it by hand, download "
        + MPDAF_WHEEL
        + " from PyPI, unzip "
        + MINICUBE_MEMBER
        + " from it and copy it to "
        + str(target)
    )
    wheel = registry_file(
        "mpdaf==3.6",
        MPDAF_WHEEL,
        MPDAF_SHA256,
        pip_args=(
            "--only-binary",
            ":all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--platform",
            "manylinux2014_x86_64",
        ),
        how_to_supply=how,
    )
    _extract(wheel, MINICUBE_MEMBER, target, how)
    return target


MANGADAP_WHEEL = "sdss_mangadap-4.5.0-py3-none-any.whl"
MANGADAP_SHA256 = "b8478bb24c32fe736fa6a2881805458719281862313838f8b032f3c10527ff34"
MANGA_MEMBER = "mangadap/data/tests/MaNGA_test_spectra.fits.gz"


def manga_spectra() -> Path:
    """Path of ``MaNGA_test_spectra.fits.gz``: 8 real MaNGA spaxel spectra (DRP v2_4_3 LOGCUBEs of
    seven galaxies) as images ``WAVE`` (vacuum), ``FLUX``, ``IVAR``, ``MASK``, ``SRES`` (R per
    pixel) and ``Z``, shipped in the ``sdss-mangadap==4.5.0`` wheel; fetched once and cached."""
    target = config.cache_dir() / "examples" / "mangadap-4.5.0-MaNGA_test_spectra.fits.gz"
    if target.exists():
        return target
    how = (
        f"To supply it by hand, download {MANGADAP_WHEEL} from PyPI, unzip {MANGA_MEMBER} from it and copy it "
        f"to {target}"
    )
    wheel = registry_file("sdss-mangadap==4.5.0", MANGADAP_WHEEL, MANGADAP_SHA256, how_to_supply=how)
    _extract(wheel, MANGA_MEMBER, target, how)
    return target


def _extract(wheel: Path, member: str, target: Path, how: str) -> None:
    """Copy ``member`` of the zip ``wheel`` to ``target`` (through a partial file renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise DataUnavailableError(f"{wheel} does not hold {member} ({exc}). {how}") from exc
    tmp.replace(target)


#: real SDSS spectra shipped in the pinned ppxf source distribution (ppxf/spectra/)
SDSS_SPECTRA = ("NGC3073_SDSS_DR8.fits", "NGC3522_SDSS_DR8.fits", "NGC4636_SDSS_DR12.fits")


def sdss_spectra() -> list[Path]:
    """Paths of three real SDSS galaxy spectra (NGC 3073 and NGC 3522: DR8 CAS tables; NGC 4636:
    a DR12 spec file) shipped in ``ppxf/spectra/`` of the pinned ``ppxf`` sdist; fetched once
    (the sdist is the one the SSP library comes from) and cached."""
    import tarfile

    from survey_proc.ssp import SDIST

    folder = config.cache_dir() / "examples" / "sdss"
    targets = [folder / name for name in SDSS_SPECTRA]
    if all(t.exists() for t in targets):
        return targets
    how = (
        f"To supply them by hand, download {SDIST} from PyPI, extract ppxf/spectra/ from it and copy "
        f"{', '.join(SDSS_SPECTRA)} to {folder}"
    )
    sdist = registry_file(
        config.get("ssp.package"),
        SDIST,
        config.get("ssp.sha256"),
        pip_args=("--no-binary", ":all:"),
        how_to_supply=how,
    )
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if "/spectra/" in member.name and name in SDSS_SPECTRA and member.isfile():
                src = tar.extractfile(member)
                tmp = folder / (name + ".partial")
                tmp.write_bytes(src.read())
                tmp.replace(folder / name)
    missing = [t.name for t in targets if not t.exists()]
    if missing:
        raise DataUnavailableError(f"{sdist} does not hold {', '.join(missing)}. {how}")
    return targets
