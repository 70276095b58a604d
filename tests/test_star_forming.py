"""An image model's ``star_forming`` option: the SFR learnt only where stars form, a probability of
star formation beside it (a hurdle model), and how that probability is scored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from survey_proc.synth import SFR_SCORED_FROM
from survey_proc.training._phot_trainer import masked_nll
from survey_proc.training._star_forming import (
    PROBABILITY,
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
    assert "0.000316 Msun/yr/kpc2 or more" in out[PROBABILITY]["long_name"]  # Sigma_SFR >= the floor


def test_star_forming_needs_an_image_model_with_the_sfr_label():
    from survey_proc.training import PhotTrainConfig

    with pytest.raises(ValueError, match="star_forming needs kind: image and log_sfr_surface_density"):
        PhotTrainConfig.from_dict({"kind": "sed", "star_forming": True})
    with pytest.raises(ValueError, match="among the labels"):
        PhotTrainConfig.from_dict({"kind": "image", "labels": ["log_mass_surface_density"], "star_forming": True})


def test_error_scale_of_few_pixels_skips_the_hidden_sfr():
    from survey_proc.training._phot_trainer import masked_error_scale

    rng = np.random.default_rng(2)
    mean, log_var = rng.normal(size=(50, 2)), np.zeros((50, 2))
    target = mean + rng.normal(size=(50, 2))
    target[::2, 1] = np.nan  # quiescent pixels: their SFR hidden
    scale = masked_error_scale(mean, log_var, target, np.zeros((50, 2), bool))  # too few selected: fall back
    assert np.isfinite(scale).all() and (scale > 0).all()


def test_packaged_configs_digest_as_their_bundles_recorded():
    """Options added after a bundle was trained leave its digest (and a checkpoint's resume) alone."""
    import json

    from survey_proc.estimators import PACKAGED
    from survey_proc.training import PhotTrainConfig

    for name in ("narrowband", "ugriz-maps"):
        training = json.loads((PACKAGED / name / "manifest.json").read_text())["training"]
        assert PhotTrainConfig.from_dict(training["config"]).digest() == training["config_digest"], name


def test_accuracy_against_truth_compares_the_conditional_sfr_where_stars_form():
    import xarray as xr

    from survey_proc.analysis import accuracy_vs_truth

    truth_sfr = np.array([[-3.5, -3.5], [-2.0, -1.0]])  # two quiescent pixels at the floor
    maps = xr.Dataset(
        {
            "log_sfr_surface_density": (("y", "x"), np.array([[-2.5, -2.5], [-2.0, -1.0]])),
            "flag": (("y", "x"), np.zeros((2, 2), np.int32)),
        }
    )
    truth = xr.Dataset({"log_sfr_surface_density": (("y", "x"), truth_sfr)})
    plain = accuracy_vs_truth(maps, truth, ["log_sfr_surface_density"]).properties["log_sfr_surface_density"]
    maps["star_forming_probability"] = (("y", "x"), np.array([[0.1, 0.1], [0.9, 0.9]]))
    hurdle = accuracy_vs_truth(maps, truth, ["log_sfr_surface_density"]).properties["log_sfr_surface_density"]
    assert plain.n == 4 and plain.bias > 0  # the rate-if-forming, against the floor: a false bias
    assert hurdle.n == 2 and hurdle.bias == 0.0
