"""Re-export a bundle with the current export code, from its own TorchScript file.

A bundle's ``model.pt`` holds everything the export wrapper needs: the trained network, the label
scaling, the calibrated error scales, the novelty statistics, the edge tables and, for networks that
rebuild spectra, the templates. :func:`reexport_bundle` wraps those in today's
:class:`~survey_proc.training._arch.ExportedModel` and :class:`~survey_proc.training._arch.Reconstructor`
and writes a new bundle: the estimates are the network's own, unchanged; what changes is how the
wrapper computes (for example how fast it rebuilds a spectrum). The training run folder is not needed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from survey_proc import __version__
from survey_proc.errors import ModelError
from survey_proc.estimators import MANIFEST_NAME, load_manifest, write_manifest_like
from survey_proc.fetch import sha256_of
from survey_proc.training._arch import ExportedModel, Reconstructor
from survey_proc.training._bundle import MODEL_FILE

log = logging.getLogger(__name__)

_EDGE_BUFFERS = ("edge_index", "edge_noise", "edge_true", "edge_table", "edge_err_factor")


def _templates_and_dust(old: nn.Module, buffers: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(templates, dust curve, index, frac) from an exported reconstructor's buffers, in any of the
    three forms it has been exported in: the templates with ``dust_curve``, ``index`` and ``frac`` (up to
    f01039e); the templates with ``position`` and ``dust_ln`` (937db75); their Fourier transforms
    ``spectra`` with ``position`` and ``dust_ln`` (since)."""
    if "spectra" in buffers:
        spectra = buffers["spectra"].double().reshape(buffers["spectra"].shape[0], -1, 2).contiguous()
        templates = torch.fft.irfft(torch.view_as_complex(spectra), n=int(old.nfft), dim=1)[:, : int(old.nlog)]
    elif "templates" in buffers:
        templates = buffers["templates"]
    else:
        raise ValueError("the bundle's reconstructor holds no templates: it cannot be re-exported")
    if "position" in buffers and "dust_ln" in buffers:
        position = buffers["position"].double()
        index = position.floor()
        return templates, buffers["dust_ln"].double() / (-0.4 * math.log(10.0)), index.long(), position - index
    missing = [b for b in ("dust_curve", "index", "frac") if b not in buffers]
    if missing:
        raise ValueError(f"the bundle's reconstructor lacks {', '.join(missing)}: it cannot be re-exported")
    return templates, buffers["dust_curve"], buffers["index"], buffers["frac"]


def _reconstructor(module: nn.Module) -> Reconstructor | None:
    """Today's reconstructor from the templates, dust curve and model pixels an exported one holds."""
    old = getattr(module, "reconstructor", None)
    if old is None:
        return None
    templates, dust, index, frac = _templates_and_dust(old, dict(old.named_buffers()))
    return Reconstructor(templates, dust, float(old.velscale), index, frac)


_NEEDED = (
    "net",
    "names",
    "label_mean",
    "label_std",
    "feat_mean",
    "feat_prec",
    "err_scale",
    "model_floor",
    "n_metal",
    "n_age",
    "i_flux",
    "i_error",
    "i_mask",
    *_EDGE_BUFFERS,
)


def rewrap(module: nn.Module) -> ExportedModel:
    """An :class:`ExportedModel` around the network and buffers of an exported (scripted) one."""
    for attr in _NEEDED:
        if not hasattr(module, attr):
            raise ValueError(f"not an exported survey-proc network (no {attr!r}): it cannot be re-exported")
    wrapped = ExportedModel(
        module.net,
        list(module.names),
        module.label_mean,
        module.label_std,
        module.feat_mean,
        module.feat_prec,
        module.err_scale,
        _reconstructor(module),
        (int(module.n_metal), int(module.n_age)),
        noise_channels=(int(module.i_flux), int(module.i_error), int(module.i_mask)),
    )
    wrapped.model_floor = float(module.model_floor)  # what chi2_floor (and so poor_fit) was calibrated with
    for name in _EDGE_BUFFERS:
        setattr(wrapped, name, getattr(module, name).clone())
    return wrapped


def reexport_bundle(src: str | Path, dst: Path, why: str) -> dict[str, Any]:
    """Write ``dst/model.pt`` and ``dst/manifest.json``: the bundle ``src`` (a folder, or a packaged
    model's name), verified as a run verifies it, re-exported (see the module's docstring); the
    manifest is ``src``'s with the new file's SHA-256, the software that wrote it and a ``reexported``
    record (the old SHA-256 and software, when, ``why``). Returns the new manifest."""
    dst = Path(dst)
    source = load_manifest(src)  # refuses a model file that does not match its SHA-256 (or none recorded)
    if source.estimator != "torchscript" or source.file is None:
        raise ModelError(f"{src}: only TorchScript bundles can be re-exported, not {source.estimator!r}")
    manifest = json.loads(source.path.read_text())
    wrapped = rewrap(torch.jit.load(str(source.file), map_location="cpu"))
    dst.mkdir(parents=True, exist_ok=True)
    new_file = dst / MODEL_FILE
    torch.jit.script(wrapped).save(str(new_file))
    record = {
        "from_sha256": manifest["sha256"],
        "from_software": manifest.get("software"),
        "date": time.strftime("%Y-%m-%d"),
        "why": why,
    }
    manifest = {
        **manifest,
        "file": MODEL_FILE,
        "sha256": sha256_of(new_file),
        "software": f"survey-proc {__version__}, torch {torch.__version__}",
        "reexported": [*manifest.get("reexported", []), record],
    }
    write_manifest_like(dst / MANIFEST_NAME, manifest, like=source.path)
    log.info("re-exported %s -> %s (sha256 %s)", src, dst, manifest["sha256"][:12])
    return manifest
