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

__all__ = [
    "BUNDLE_FORMAT",
    "IMPLEMENTATIONS",
    "MANIFEST_NAME",
    "PACKAGED",
    "Estimator",
    "Manifest",
    "OutputSpec",
    "load_estimator",
    "load_manifest",
    "packaged_models",
    "read_manifest",
    "resolve_model",
    "verify_bundle",
]
