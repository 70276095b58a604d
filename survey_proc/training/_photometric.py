"""Photometric models trained on mock galaxies: per-pixel SED CNN and image-to-image U-Net.

``kind: sed`` — the narrow-band per-pixel model after Liew-Cain et al. (2021): a 1-D CNN over the
J-PAS-like band fluxes of one pixel predicting light-weighted log age and [M/H]. Its held-out
metrics are reported on the paper's two splits: **Set A**, pixels held out at random from the
training galaxies (neighbours of training pixels, same galaxies: optimistic), and **Set B**, whole
galaxies never seen in training — the honest one for new data.

``kind: image`` — a PICASSSO-like model after Buck & Wolf (2021): a small U-Net from ugriz image
tiles to maps of stellar-mass and star-formation-rate surface density, log age and [M/H]; a share of
the training galaxies' pixels is left out of its loss, so it too has a Set A. The engine runs it tile by tile
with a halo of ``halo_pixels`` (at least its receptive-field radius, a multiple of its down-sampling
factor) so tiled maps equal untiled ones in every core pixel.

Both use fresh noise every epoch, Gaussian negative-log-likelihood heads (per-pixel uncertainties,
calibrated on validation galaxies), a feature-space novelty score, and export a TorchScript bundle
whose manifest declares the input kind; Set A and Set B metrics are computed with the exported file
through the engine's own preprocessing (:mod:`survey_proc.training._phot_evaluate`, also
``survey-proc evaluate`` at a chosen depth).

The trainers: :class:`~survey_proc.training._sed.SEDTrainer` and
:class:`~survey_proc.training._image.ImageTrainer`, both a
:class:`~survey_proc.training._phot_trainer.PhotometricTrainer` on the shared epoch loop
(:mod:`survey_proc.training._fit`); the networks are in :mod:`survey_proc.training._phot_arch`.
"""

from __future__ import annotations

import os
from pathlib import Path

from survey_proc.training._image import ImageTrainer
from survey_proc.training._phot_trainer import PhotometricTrainer, PhotTrainConfig
from survey_proc.training._sed import SEDTrainer

#: the trainer of each ``kind``
PHOTOMETRIC_TRAINERS: dict[str, type[PhotometricTrainer]] = {"sed": SEDTrainer, "image": ImageTrainer}


def train_photometric(cfg: PhotTrainConfig, out_dir: str | os.PathLike) -> Path:
    """Synthesise the galaxies, train the model of ``cfg.kind``, export the bundle into ``out_dir/bundle``.

    ``out_dir`` also receives ``checkpoint.pt`` (resume), ``metrics.json``, ``loss_curve.png`` and a PNG of
    held-out predictions against the truth.
    """
    return PHOTOMETRIC_TRAINERS[cfg.kind](cfg, out_dir).run()
