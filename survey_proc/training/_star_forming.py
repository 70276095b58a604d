"""Star-formation-rate maps that say where there is star formation (an image model's ``star_forming``).

A third of the pixels of the mock galaxies form no stars above the detection floor (quenched galaxies,
inter-arm regions) and their log Sigma_SFR truth sits at the floor. Fitted with one Gaussian per
pixel, a network asked for Sigma_SFR from ugriz puts pixels it cannot place between the floor and the
star-forming values: the star-forming pixels, the only ones scored, come out 0.19 dex low (the
per-pixel MLP of ``benchmarks.pixel_information``: -0.16 trained on every pixel, +0.03 trained on the
star-forming ones alone, the scatter the same). With ``star_forming`` the question is split in two, as
a hurdle model does: ``log_sfr_surface_density`` is learnt where the pixel forms stars
(:func:`survey_proc.synth.star_forming`: the pixels it is scored on) and is read as *the rate if the
pixel forms stars*; ``star_forming_probability`` (a logistic output, binary cross-entropy) says how
likely that is.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from survey_proc.stores import property_attrs
from survey_proc.synth import SFR_FLOOR, star_forming
from survey_proc.training._galaxies import SFR_LABEL
from survey_proc.training._metrics import roc_auc

#: the map of the probability that a pixel forms stars above the floor
PROBABILITY = "star_forming_probability"
#: probability bins of the reliability table
RELIABILITY_BINS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def output_entries(names: list[str]) -> dict[str, dict]:
    """The manifest's outputs of a ``star_forming`` model: the labels (the SFR density read as the rate
    where the pixel forms stars) and the probability, without an error."""
    out = {n: {**property_attrs(n), "error": True} for n in names}
    out[SFR_LABEL]["long_name"] = (
        "star-formation-rate surface density over the last 100 Myr, if the pixel forms stars above the "
        f"detection floor (see {PROBABILITY})"
    )
    floor = f"probability that the pixel forms stars at {SFR_FLOOR:.3g} Msun/yr/kpc2 or more (last 100 Myr)"
    out[PROBABILITY] = {**property_attrs(PROBABILITY, long_name=floor), "error": False}
    return out


def conditional_targets(y: np.ndarray, labels: np.ndarray, names: list[str]) -> np.ndarray:
    """(G, K + 1, H, W) training targets from standardised ``y`` (G, K, H, W) and the raw ``labels``
    (G, H, W, K): the SFR channel NaN where the pixel forms no stars, and a last channel that is 1 where
    it does, 0 where not."""
    k = names.index(SFR_LABEL)
    forming = star_forming(labels[..., k])
    out = np.concatenate([y, forming[:, None].astype(np.float32)], axis=1)
    out[:, k] = np.where(forming, out[:, k], np.float32(np.nan))
    return out


def masked_bce(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``logit`` against 0/1 ``target``, averaged over its finite entries."""
    ok = torch.isfinite(target)
    per = F.binary_cross_entropy_with_logits(logit, torch.where(ok, target, torch.zeros_like(target)), reduction="none")
    return torch.where(ok, per, torch.zeros_like(per)).sum() / ok.sum().clamp(min=1)


def classification_scores(probability: np.ndarray, truth_sfr: np.ndarray) -> dict:
    """How well ``probability`` tells star-forming pixels (:func:`~survey_proc.synth.star_forming`) from the
    rest: ROC AUC, Brier score, accuracy at 0.5, the shares predicted and true, and the observed share in
    each probability bin (reliability: it should fall inside the bin)."""
    p = np.asarray(probability, np.float64)
    ok = np.isfinite(p) & np.isfinite(truth_sfr)
    p, y = p[ok], star_forming(truth_sfr[ok])
    if p.size == 0:
        return {"n": 0}
    bins = np.digitize(p, RELIABILITY_BINS[1:-1])
    reliability = [
        {"lo": lo, "hi": hi, "n": int((bins == j).sum()), "observed": float(y[bins == j].mean())}
        for j, (lo, hi) in enumerate(itertools.pairwise(RELIABILITY_BINS))
        if (bins == j).any()
    ]
    return {
        "n": int(p.size),
        "star_forming_share": float(y.mean()),
        "mean_probability": float(p.mean()),
        "auc": roc_auc(p, y),
        "brier": float(np.mean((p - y) ** 2)),
        "accuracy": float(np.mean((p >= 0.5) == y)),
        "reliability": reliability,
    }
