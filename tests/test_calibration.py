"""Calibration after training (survey_proc.training): uncertainty scale and novelty statistics."""

from __future__ import annotations

import numpy as np
import pytest

from survey_proc.training import Calibration, error_scale, novelty_stats


def test_error_scale_makes_the_one_sigma_interval_hold_68_percent():
    rng = np.random.default_rng(0)
    target = rng.normal(0, 1, (20000, 2))
    mean = target + rng.normal(0, [1.0, 3.0], (20000, 2))  # predicted sigma 1 (log_var 0): right, then 3x too small
    scale = error_scale(mean, np.zeros_like(mean), target)
    assert scale == pytest.approx([1.0, 3.0], rel=0.03)
    assert np.mean(np.abs(mean - target) <= scale) == pytest.approx(0.6827, abs=0.01)


def test_novelty_threshold_is_the_quantile_of_validation_scores():
    rng = np.random.default_rng(1)
    ref, val = rng.normal(0, 1, (5000, 4)), rng.normal(0, 1, (5000, 4))
    mean, prec, threshold = novelty_stats(ref, val, 0.99)
    assert mean == pytest.approx(np.zeros(4), abs=0.05) and prec.shape == (4, 4)
    far = rng.normal(0, 1, (1000, 4)) + 5.0
    d = far - mean
    scores = np.sqrt(np.einsum("ij,jk,ik->i", d, prec, d) / 4)
    assert 1.0 < threshold < 2.5 and (scores > threshold).all()  # shifted inputs are all flagged
    cal = Calibration(np.ones(2), mean, prec, threshold)
    assert [t.shape for t in cal.tensors()] == [(4,), (4, 4), (2,)]
