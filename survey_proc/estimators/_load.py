"""Resolve a model name or path to an Estimator, once per process.

``NAME`` is a bundle packaged in ``survey_proc/estimators/models/NAME``; anything else is a path to
a bundle folder (or its manifest.json). The manifest's ``estimator`` field picks the implementation
from :data:`IMPLEMENTATIONS`, imported only when needed, so the engine never imports torch or pPXF
itself.
"""

from __future__ import annotations

import functools
import importlib
import threading
from pathlib import Path

from survey_proc import config
from survey_proc.errors import ModelError
from survey_proc.estimators._base import Estimator, Manifest, read_manifest
from survey_proc.fetch import sha256_of

PACKAGED = Path(__file__).with_name("models")
#: SHA-256 of every file of the shipped bundles, as released (``sha256  name/file`` lines)
PACKAGED_SUMS = PACKAGED / "SHA256SUMS"

#: estimator kind -> "module:class"; the class takes (manifest, device=..., threads=...)
IMPLEMENTATIONS = {
    "torchscript": "survey_proc.estimators._torchscript:TorchScriptEstimator",
    "ppxf": "survey_proc.estimators._ppxf:PPXFEstimator",
    "fit": "survey_proc.estimators._fit:FitEstimator",
}


def packaged_models() -> list[str]:
    """Names of the bundles shipped with the package."""
    return sorted(p.name for p in PACKAGED.iterdir() if (p / "manifest.json").exists())


def resolve_model(spec: str | Path) -> Path:
    """The manifest path of a packaged model name or a bundle path."""
    path = Path(spec).expanduser()
    if path.exists():
        return (path / "manifest.json" if path.is_dir() else path).resolve()
    if (PACKAGED / str(spec) / "manifest.json").exists():
        return (PACKAGED / str(spec) / "manifest.json").resolve()
    raise ModelError(
        f"model {spec!r} is neither a bundle folder nor a packaged model "
        f"(packaged: {', '.join(packaged_models()) or 'none'})"
    )


def compute_packaged_sums(root: Path = PACKAGED) -> str:
    """The text of SHA256SUMS for the bundles now in ``root`` (a release records it after exporting)."""
    lines = [
        "# SHA-256 of the shipped bundles' files: survey-proc refuses a packaged model that differs.",
        "# After re-exporting a shipped bundle: python -c 'from survey_proc.estimators import "
        "compute_packaged_sums as c, PACKAGED_SUMS as p; p.write_text(c())'",
    ]
    for file in sorted(root.glob("*/*")):
        if file.is_file():
            lines.append(f"{sha256_of(file)}  {file.parent.name}/{file.name}")
    return "\n".join(lines) + "\n"


def packaged_sums(path: Path = PACKAGED_SUMS) -> dict[str, str]:
    """``name/file`` -> SHA-256 of the shipped bundles' files, as recorded in the package."""
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            sums[name.strip()] = digest
    return sums


def _packaged_name(manifest_path: Path) -> str | None:
    """The bundle name of a manifest inside the package's models folder (None: a foreign bundle)."""
    try:
        rel = manifest_path.resolve().relative_to(PACKAGED.resolve())
    except ValueError:
        return None
    return rel.parts[0] if len(rel.parts) == 2 else None


def _verify_packaged(name: str, folder: Path) -> None:
    """Every file a shipped bundle lists in SHA256SUMS is there, with the recorded SHA-256."""
    sums = {k: v for k, v in packaged_sums().items() if k.split("/", 1)[0] == name}
    if not sums:
        raise ModelError(f"packaged model {name!r} is not in {PACKAGED_SUMS} (re-install survey-proc)")
    for key, digest in sums.items():
        file = folder / key.split("/", 1)[1]
        if not file.exists() or sha256_of(file) != digest:
            raise ModelError(
                f"packaged model {name!r} was modified: {file} does not match the SHA-256 recorded in "
                f"{PACKAGED_SUMS} (re-install survey-proc; to run a changed copy, copy the bundle folder elsewhere)"
            )


def verify_bundle(manifest: Manifest) -> None:
    """Check the bundle's integrity: a shipped bundle against the hashes recorded in the package, any
    other against the SHA-256 its manifest records for its model file (where it records one)."""
    name = _packaged_name(manifest.path)
    if name is not None:
        _verify_packaged(name, manifest.path.parent)
    file = manifest.file
    if file is None:
        return
    if not file.exists():
        raise ModelError(f"model file {file} named by {manifest.path} is missing")
    if manifest.sha256 and sha256_of(file) != manifest.sha256:
        raise ModelError(
            f"model file {file} is corrupt: its SHA-256 differs from the one in "
            f"{manifest.path} (re-export or re-install the bundle)"
        )


def check_trusted(manifest: Manifest, trust: bool | None = None) -> None:
    """Refuse a foreign bundle whose manifest records no SHA-256 of its model file, unless trusted
    (``trust``, else ``survey-proc.run.trust-model``; ``--trust-model``): such a file cannot be told
    apart from one changed after export. Shipped bundles and bundles without a model file pass."""
    if trust is None:
        trust = bool(config.get("run.trust-model", False))
    if trust or manifest.file is None or manifest.sha256 or _packaged_name(manifest.path) is not None:
        return
    raise ModelError(
        f"model bundle {manifest.path.parent} records no SHA-256 of {manifest.file.name} in its manifest, so "
        "its integrity cannot be checked (bundles exported by `survey-proc train` record one); run it anyway "
        "with --trust-model (survey-proc.run.trust-model: true)"
    )


def load_manifest(spec: str | Path, trust: bool | None = None) -> Manifest:
    """Read and verify the manifest of a model (no weights loaded), and check that it may be trusted
    (:func:`check_trusted`)."""
    manifest = read_manifest(resolve_model(spec))
    verify_bundle(manifest)
    check_trusted(manifest, trust)
    return manifest


_LOADING = threading.RLock()  # re-entrant: an estimator may load another (the fit its seed network)


@functools.lru_cache(maxsize=8)
def _load_cached(manifest_path: str, mtime: float, device: str, threads: int | None, settings: tuple = ()) -> Estimator:
    manifest = read_manifest(Path(manifest_path))
    verify_bundle(manifest)
    target = IMPLEMENTATIONS.get(manifest.estimator)
    if target is None:
        raise ModelError(
            f"{manifest_path}: unknown estimator kind {manifest.estimator!r} (known: {', '.join(IMPLEMENTATIONS)})"
        )
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"estimator {manifest.estimator!r} needs a package that is not installed "
            f"({exc}); e.g. `pip install survey-proc[{manifest.estimator}]`"
        ) from exc
    return getattr(module, cls_name)(manifest, device=device, threads=threads)


def load_estimator(spec: str | Path, device: str = "cpu", threads: int | None = None) -> Estimator:
    """The Estimator for a model name or bundle path, loaded once per process and device.

    ``threads`` sets the number of CPU threads the implementation may use (None: its default).
    """
    path = resolve_model(spec)
    # the precision settings change what is loaded (survey-proc.run.cpu-precision, gpu.tf32): part of the key
    settings = (config.get("run.cpu-precision", None), bool(config.get("gpu.tf32", False)))
    with _LOADING:  # threads of one worker asking at once load the model once (the others find it cached)
        return _load_cached(str(path), path.stat().st_mtime, device, threads, settings)
