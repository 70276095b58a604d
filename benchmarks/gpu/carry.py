"""Gather what the GPU node lacks into the git-ignored folder ``.carry/``, and check its size.

    python -m benchmarks.gpu.carry            # -> .carry/whl/*.whl, .carry/ssp/*.npz, a size report

The GPU node (Python 3.12, a CUDA build of torch, no network) receives the repository's working tree
plus the paths named in ``carry``, 64 MiB in all. This puts there:

- the Python 3.12 manylinux wheels of ``benchmarks/gpu/wheels.txt`` (pinned; fetched with pip download);
- the compact E-MILES cache the project builds (``survey_proc.ssp.load_ssp_library``), so mocks can be
  made there without the registry.

``benchmarks/gpu/run_on_gpu.sh`` installs and uses them there.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARRY = ROOT / ".carry"
WHEELS = Path(__file__).with_name("wheels.txt")
LIMIT_MIB = 64.0
#: manylinux tags pip must match exactly (device README: add others where a wheel is not found)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "any",
)

log = logging.getLogger("survey_proc.benchmarks.gpu")


def pinned_wheels(path: Path = WHEELS) -> list[str]:
    """The ``name==version`` lines of ``wheels.txt`` (comments and blank lines skipped)."""
    pins = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    bad = [p for p in pins if p and "==" not in p]
    if bad:
        raise ValueError(f"{path}: every wheel must be pinned with ==, not {bad}")
    return [p for p in pins if p]


def download_wheels(pins: list[str], dest: Path, python: str = "3.12") -> None:
    """Python ``python`` wheels of ``pins`` into ``dest`` (no dependencies: wheels.txt lists them)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        "-q",
        "-d",
        str(dest),
    ]
    for tag in PLATFORMS:
        cmd += ["--platform", tag]
    subprocess.run(cmd + pins, check=True)


def stale_wheels(pins: list[str], dest: Path) -> list[Path]:
    """Wheels in ``dest`` that no pin asks for (an earlier version): two versions stop the install there."""
    wanted = {(_norm(p.split("==")[0]), p.split("==")[1]) for p in pins}
    out = []
    for whl in dest.glob("*.whl"):
        name, version = whl.name.split("-")[:2]
        if (_norm(name), version) not in wanted:
            out.append(whl)
    return out


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def copy_ssp_cache(dest: Path) -> Path:
    """The compact E-MILES cache (built from the pinned registry package on first use) into ``dest``."""
    from survey_proc.ssp import load_ssp_library

    lib = load_ssp_library()
    src = Path(lib.provenance["cache"])
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest / src.name)
    return dest / src.name


def tree_mib(root: Path = ROOT) -> float:
    """MiB of what travels besides carry: tracked files and untracked files git does not ignore."""
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    files = [root / f for f in out.split("\0") if f]
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.carry", description=__doc__.splitlines()[0])
    p.add_argument("--dest", default=str(CARRY), help="folder to fill (default: .carry at the repository root)")
    p.add_argument("--python", default="3.12", help="Python version of the GPU node (default: 3.12)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dest = Path(args.dest)
    pins = pinned_wheels()
    download_wheels(pins, dest / "whl", args.python)
    for old in stale_wheels(pins, dest / "whl"):
        log.info("removing %s (not pinned)", old.name)
        old.unlink()
    ssp = copy_ssp_cache(dest / "ssp")
    carry, tree = folder_mib(dest), tree_mib()
    log.info("wheels: %d files; SSP cache: %s", len(list((dest / "whl").glob("*.whl"))), ssp.name)
    log.info("carry %.1f MiB + working tree %.1f MiB = %.1f MiB of %.0f", carry, tree, carry + tree, LIMIT_MIB)
    if carry + tree > LIMIT_MIB * 0.95:
        log.error("over the device's limit (with 5 %% to spare): carry less")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
