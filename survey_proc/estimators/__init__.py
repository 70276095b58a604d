"""Estimators: the interface the engine calls, model bundles and their implementations.

The implementations' modules (TorchScript, pPXF) load when one of their names is first used, as
:func:`load_estimator` loads them only for a manifest that names them: importing the package (the
engine, a pPXF worker) does not import torch.
"""

import importlib

from survey_proc.estimators._base import (
    BUNDLE_FORMAT,
    MANIFEST_NAME,
    Estimator,
    Manifest,
    OutputSpec,
    read_manifest,
    write_manifest_like,
)
from survey_proc.estimators._load import (
    IMPLEMENTATIONS,
    PACKAGED,
    PACKAGED_SUMS,
    check_trusted,
    compute_packaged_sums,
    load_estimator,
    load_manifest,
    packaged_models,
    packaged_sums,
    resolve_model,
    verify_bundle,
)
from survey_proc.estimators._systematics import ErrorSystematics

#: public names of the implementation modules, imported on first use
_LAZY = {
    "prepare_templates": "_ppxf",
    "floored_chi2": "_fit",
    "TorchScriptEstimator": "_torchscript",
    "batch_size_for": "_torchscript",
    "cpu_precision": "_torchscript",
    "gpu_batch_size": "_torchscript",
    "is_out_of_memory": "_torchscript",
    "pinned_rows": "_torchscript",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "BUNDLE_FORMAT",
    "IMPLEMENTATIONS",
    "MANIFEST_NAME",
    "PACKAGED",
    "PACKAGED_SUMS",
    "ErrorSystematics",
    "Estimator",
    "Manifest",
    "OutputSpec",
    "TorchScriptEstimator",
    "batch_size_for",
    "check_trusted",
    "compute_packaged_sums",
    "cpu_precision",
    "floored_chi2",
    "gpu_batch_size",
    "is_out_of_memory",
    "load_estimator",
    "load_manifest",
    "packaged_models",
    "packaged_sums",
    "pinned_rows",
    "prepare_templates",
    "read_manifest",
    "resolve_model",
    "verify_bundle",
    "write_manifest_like",
]
