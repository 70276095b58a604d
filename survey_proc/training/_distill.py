"""Knowledge distillation: a network also learns to reproduce a trained bundle's outputs.

With ``distill_from`` (a bundle's name or path) and ``distill_loss`` > 0, each training batch goes
through the teacher's network as well (the same inputs: the epoch's fresh noise, bad patches and other
libraries), and the loss gains ``distill_loss`` x :func:`distillation_loss`: the mean squared difference of the
student's standardised label means from the teacher's, plus the Kullback-Leibler divergence of the
student's light-fraction grid from the teacher's where both have one. The truths' terms stay, so
the network learns from both; its uncertainties are still fitted against the truths alone.

The teacher's means are carried through physical units into the student's standardisation, so teacher
and student may have been trained on different sets; they must share the input (wavelength grid,
channels, frame) and the labels, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from survey_proc.estimators import load_manifest
from survey_proc.preprocess import InputSpec


@dataclass
class TeacherOutputs:
    """What the teacher says of a batch: label means standardised as the student's labels (n, nlabel) and
    its light-fraction grid (n, ngrid), or an empty (n, 0) where it has none."""

    mean: torch.Tensor
    weights: torch.Tensor


class Teacher:
    """A bundle's network, frozen, predicting for the student's batches (:meth:`__call__`)."""

    def __init__(
        self,
        source: str,
        spec: InputSpec,
        labels: list[str],
        label_mean: np.ndarray,
        label_std: np.ndarray,
        device: torch.device,
        grid_shape: tuple[int, int] = (0, 0),
    ) -> None:
        manifest = load_manifest(source)
        _check_input(source, manifest.input, spec)
        module = torch.jit.load(str(manifest.file), map_location=device)
        names = list(module.names)
        if names != list(labels):
            raise ValueError(f"distill_from {source}: its labels {names} are not this model's {list(labels)}")
        theirs = (int(getattr(module, "n_metal", 0)), int(getattr(module, "n_age", 0)))
        if all(grid_shape) and all(theirs) and theirs != tuple(grid_shape):
            raise ValueError(
                f"distill_from {source}: its light-fraction grid (metal x age) is {theirs}, "
                f"this model's {tuple(grid_shape)}"
            )
        self.net = module.net.eval()
        # teacher standardised -> physical -> student standardised: one scale and one offset per label
        t_mean, t_std = module.label_mean.to(device), module.label_std.to(device)
        s_mean = torch.as_tensor(label_mean, dtype=torch.float32, device=device)
        s_std = torch.as_tensor(label_std, dtype=torch.float32, device=device)
        self.scale = t_std / s_std
        self.offset = (t_mean - s_mean) / s_std

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> TeacherOutputs:
        mean, _, _, weights = self.net(x)
        return TeacherOutputs(mean.float() * self.scale + self.offset, weights.float())


#: what the network sees of its input: the teacher's must be the same
_INPUT_FIELDS = (
    "kind",
    "wave_start",
    "wave_stop",
    "wave_step",
    "velscale",
    "frame",
    "medium",
    "channels",
    "normalise",
    "normalise_window",
)


def _check_input(source: str, theirs: InputSpec, ours: InputSpec) -> None:
    """A clear error where the teacher reads another input than the student."""
    pairs = {f: (getattr(theirs, f, None), getattr(ours, f, None)) for f in _INPUT_FIELDS}
    said = ", ".join(f"{f} {a!r} (this model: {b!r})" for f, (a, b) in pairs.items() if a != b)
    if said:
        raise ValueError(f"distill_from {source}: its input differs from this model's: {said}")


def distillation_loss(mean: torch.Tensor, weights: torch.Tensor, teacher: TeacherOutputs) -> torch.Tensor:
    """Mean squared difference of the standardised label means from the teacher's, plus the
    Kullback-Leibler divergence of the light-fraction grid from the teacher's (where both predict
    one); 0 where the student says what the teacher says."""
    loss = ((mean - teacher.mean) ** 2).mean()
    if weights.shape[1] and teacher.weights.shape[1] == weights.shape[1]:
        t = teacher.weights
        loss = loss + (t * (torch.log(t + 1e-8) - torch.log(weights + 1e-8))).sum(dim=1).mean()
    return loss
