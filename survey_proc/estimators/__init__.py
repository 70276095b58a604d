"""Estimators: the interface the engine calls, model bundles and their implementations."""

from survey_proc.estimators._base import BUNDLE_FORMAT, MANIFEST_NAME, Estimator, Manifest, OutputSpec, read_manifest
from survey_proc.estimators._load import (
    IMPLEMENTATIONS,
    PACKAGED,
    load_estimator,
    load_manifest,
    packaged_models,
    resolve_model,
    verify_bundle,
)
from survey_proc.estimators._ppxf import prepare_templates
from survey_proc.estimators._torchscript import (
    TorchScriptEstimator,
    batch_size_for,
    cpu_precision,
    gpu_batch_size,
    is_out_of_memory,
    pinned_rows,
)

__all__ = [
    "BUNDLE_FORMAT",
    "IMPLEMENTATIONS",
    "MANIFEST_NAME",
    "PACKAGED",
    "Estimator",
    "Manifest",
    "OutputSpec",
    "TorchScriptEstimator",
    "batch_size_for",
    "cpu_precision",
    "gpu_batch_size",
    "is_out_of_memory",
    "load_estimator",
    "load_manifest",
    "packaged_models",
    "pinned_rows",
    "prepare_templates",
    "read_manifest",
    "resolve_model",
    "verify_bundle",
]
