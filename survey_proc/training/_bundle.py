"""Export: the TorchScript file and the manifest of a bundle, and the held-out metrics added to it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from survey_proc import __version__
from survey_proc.estimators import BUNDLE_FORMAT, MANIFEST_NAME
from survey_proc.fetch import sha256_of

MODEL_FILE = "model.pt"


def save_model(module: nn.Module, out: Path) -> Path:
    """Script ``module`` into ``out/bundle/model.pt``; returns the bundle folder."""
    bundle = out / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module).save(str(bundle / MODEL_FILE))
    return bundle


def write_manifest(
    bundle: Path,
    *,
    name: str,
    description: str,
    input_spec: Any,
    outputs: dict[str, Any],
    flags: dict[str, Any],
    min_snr: float,
    batch_size: int,
    training: dict[str, Any],
    input_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the manifest of the model file in ``bundle`` (its SHA-256, the input it reads with
    ``input_extra`` added to it, what it outputs and flags, how it was trained); returns it."""
    model_path = bundle / MODEL_FILE
    manifest = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "description": description,
        "estimator": "torchscript",
        "file": model_path.name,
        "sha256": sha256_of(model_path),
        "input": {**input_spec.to_manifest(), **(input_extra or {})},
        "outputs": outputs,
        "flags": flags,
        "min_snr": min_snr,
        "batch_size": batch_size,
        "training": training,
        "software": f"survey-proc {__version__}, torch {torch.__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def add_held_out_metrics(bundle: Path, metrics: dict[str, Any], note: str) -> None:
    """Record the held-out metrics of the exported file (and how they were measured) in its manifest."""
    path = bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["metrics"] = {"held_out": metrics, "note": note}
    path.write_text(json.dumps(manifest, indent=2, default=float))
