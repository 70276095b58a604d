"""An image model's ``star_forming`` option: the SFR learnt only where stars form, a probability of
star formation beside it (a hurdle model), and how that probability is scored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from survey_proc.training._phot_trainer import masked_nll
from survey_proc.training._star_forming import (
    PROBABILITY,
    SFR_SCORED_FROM,
    classification_scores,
    conditional_targets,
    masked_bce,
    output_entries,
)


def test_conditional_targets_hide_the_sfr_of_quiescent_pixels_and_add_whether_stars_form():
    names = ["log_mass_surface_density", "log_sfr_surface_density"]
    labels = np.zeros((2, 3, 3, 2), np.float32)
    labels[..., 1] = SFR_SCORED_FROM - 0.01  # quiescent everywhere ...
    labels[0, 1, 2, 1] = SFR_SCORED_FROM  # ... but for two pixels
    labels[1, 0, 0, 1] = -1.0
    y = np.random.default_rng(0).normal(size=(2, 2, 3, 3)).astype(np.float32)
    out = conditional_targets(y, labels, names)
    assert out.shape == (2, 3, 3, 3)
    forming = np.zeros((2, 3, 3), bool)
    forming[0, 1, 2] = forming[1, 0, 0] = True
    np.testing.assert_array_equal(out[:, 2], forming.astype(np.float32))
    np.testing.assert_array_equal(np.isfinite(out[:, 1]), forming)
    np.testing.assert_array_equal(out[:, 1][forming], y[:, 1][forming])
    np.testing.assert_array_equal(out[:, 0], y[:, 0])  # the other labels untouched


def test_masked_bce_ignores_held_out_pixels():
    logit = torch.tensor([[0.0, 2.0, -1.0, 5.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, float("nan"), 1.0]])
    loss = masked_bce(logit, target)
    loss.backward()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logit[:, [0, 1, 3]], target[:, [0, 1, 3]])
    assert float(loss) == pytest.approx(float(expected))
    assert float(logit.grad[0, 2]) == 0.0 and float(logit.grad.abs().sum()) > 0


def test_masked_nll_counts_a_pixel_with_a_hidden_label_once():
    mean, log_var = torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2)
    target = torch.ones(1, 2, 1, 2)
    target[0, 1, 0, 0] = float("nan")  # a quiescent pixel's SFR
    # three finite labels of 0.5 each over two pixels, not over the one pixel whose labels are all finite
    assert float(masked_nll(mean, log_var, target)) == pytest.approx(1.5 / 2)


def test_probability_is_scored_by_ranking_reliability_and_accuracy():
    rng = np.random.default_rng(1)
    truth = np.where(rng.random(4000) < 0.6, -1.5, SFR_SCORED_FROM - 1.0)
    forming = truth >= SFR_SCORED_FROM
    honest = np.clip(np.where(forming, 0.8, 0.2) + rng.normal(0, 0.05, truth.size), 0, 1)
    good, blind = classification_scores(honest, truth), classification_scores(np.full(truth.size, 0.6), truth)
    assert good["auc"] > 0.99 and blind["auc"] == pytest.approx(0.5)
    assert good["accuracy"] > 0.95 and good["brier"] < blind["brier"]
    assert good["star_forming_share"] == pytest.approx(forming.mean())
    for b in good["reliability"]:  # 80 % of the pixels said 0.8 form stars
        assert b["observed"] == pytest.approx(1.0 if b["lo"] >= 0.5 else 0.0)


def test_manifest_entries_say_what_the_sfr_and_the_probability_mean():
    out = output_entries(["log_mass_surface_density", "log_sfr_surface_density"])
    assert out[PROBABILITY]["error"] is False and out["log_sfr_surface_density"]["error"] is True
    assert "if the pixel forms stars" in out["log_sfr_surface_density"]["long_name"]
    assert "0.000632456" in out[PROBABILITY]["long_name"]
