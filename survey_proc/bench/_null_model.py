"""A bundle with a model's manifest whose TorchScript returns zeros: what the engine alone costs.

Run through the engine like the real model, it measures reading, preprocessing, writing,
scheduling and verification with (almost) no estimator cost: the ceiling of the engine's
throughput on a machine, and so the cost budget left for a model.

(No ``from __future__ import annotations``: TorchScript reads the annotations of ``NullModel``.)
"""

import json
from pathlib import Path

import torch

from survey_proc.estimators import load_manifest
from survey_proc.fetch import sha256_of


class NullModel(torch.nn.Module):
    """Zeros of the declared shape for every output the manifest names."""

    names: list[str]
    shapes: list[list[int]]

    def __init__(self, names: list[str], shapes: list[list[int]]) -> None:
        super().__init__()
        self.names = names
        self.shapes = shapes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i in range(len(self.names)):
            out[self.names[i]] = torch.zeros([x.shape[0]] + self.shapes[i])
        return out


def null_bundle(model: str | Path, folder: Path) -> Path:
    """Write the null bundle of ``model`` (a bundle path or packaged name) into ``folder``."""
    manifest = load_manifest(model)
    shapes: dict[str, list[int]] = {}
    for o in manifest.outputs:
        shape = [len(o.coords[d]) for d in o.dims]
        shapes[o.name] = shape
        if o.error:
            shapes[f"{o.name}_err"] = shape
    for _, rule in manifest.flag_rules:
        shapes[rule["output"]] = []
    folder.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(NullModel(list(shapes), list(shapes.values())))
    scripted.save(str(folder / "model.pt"))
    raw = dict(manifest.raw) | {
        "name": f"{manifest.name}-null",
        "estimator": "torchscript",
        "file": "model.pt",
        "sha256": sha256_of(folder / "model.pt"),
        "description": f"zeros in the shape of {manifest.name}'s outputs (engine cost only)",
    }
    (folder / "manifest.json").write_text(json.dumps(raw, indent=1))
    return folder
