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

#: estimator kind -> "module:class"; the class takes (manifest, device=..., threads=...)
IMPLEMENTATIONS = {
    "torchscript": "survey_proc.estimators._torchscript:TorchScriptEstimator",
    "ppxf": "survey_proc.estimators._ppxf:PPXFEstimator",
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


def verify_bundle(manifest: Manifest) -> None:
    """Check that the model file exists and matches the manifest's SHA-256."""
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


def load_manifest(spec: str | Path) -> Manifest:
    """Read and verify the manifest of a model (no weights loaded)."""
    manifest = read_manifest(resolve_model(spec))
    verify_bundle(manifest)
    return manifest


_LOADING = threading.Lock()


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
