"""Fetch pinned files from the Python package registry into the user cache.

Only the package registry is reachable from many machines (HPC login nodes, CI), so reference data
that ships inside registry packages (SSP spectra in the ``ppxf`` source distribution, a real MUSE
cube in the ``mpdaf`` wheel) is fetched with ``pip download`` — which honours the user's pip
configuration (mirrors, proxies, certificates) — and verified against a pinned SHA-256.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from survey_proc import config
from survey_proc.errors import DataUnavailableError

log = logging.getLogger(__name__)


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def registry_file(
    requirement: str,
    filename: str,
    sha256: str,
    pip_args: tuple[str, ...] = (),
    how_to_supply: str = "",
) -> Path:
    """Path of ``filename`` (a distribution of ``requirement``) in the cache, downloading it once.

    Parameters
    ----------
    requirement : a pinned requirement, e.g. ``"ppxf==8.2.6"``.
    filename : the distribution file expected from the registry.
    sha256 : its pinned hex digest; a file that does not match is refused.
    pip_args : extra ``pip download`` options selecting the distribution (sdist, platform, ...).
    how_to_supply : a sentence appended to the error saying how to provide the data by hand.
    """
    target_dir = config.cache_dir() / "downloads"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / filename
    if target.exists() and sha256_of(target) == sha256:
        return target
    log.info("fetching %s (%s) from the package registry into %s", filename, requirement, target_dir)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        fetched = _pip_download(requirement, filename, Path(tmp), pip_args, how_to_supply)
        digest = sha256_of(fetched)
        if digest != sha256:
            raise DataUnavailableError(
                f"{filename} from the registry has SHA-256 {digest}, expected the pinned {sha256}; "
                f"refusing it. {how_to_supply}"
            )
        shutil.move(str(fetched), target)
    return target


def _pip_download(requirement: str, filename: str, dest: Path, pip_args: tuple[str, ...], how_to_supply: str) -> Path:
    """``pip download`` of ``requirement`` (no dependencies) into ``dest``; the path of ``filename`` there."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        *pip_args,
        requirement,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataUnavailableError(f"could not run pip to fetch {requirement} ({exc}). {how_to_supply}") from exc
    fetched = dest / filename
    if proc.returncode != 0 or not fetched.exists():
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataUnavailableError(
            f"could not fetch {filename} ({requirement}) from the package registry: "
            f"{' | '.join(detail) or 'no such file'}. {how_to_supply}"
        )
    return fetched
