"""The differentiable reconstructor (torch) agrees with the NumPy synthesiser; chi2 is honest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from survey_proc.ssp import muse_lsf_fwhm
from survey_proc.synth import Synthesiser, sample_training_mixtures
from survey_proc.training import Reconstructor, muse_rest_4750_7100_input, reduced_chi2


def test_reconstructor_matches_the_synthesiser(ssp_lib):
    spec = muse_rest_4750_7100_input()
    z = 0.05
    synth = Synthesiser(ssp_lib, spec.wave * (1 + z), z, muse_lsf_fwhm, max_velocity=1500.0)
    recon = Reconstructor.from_synthesiser(synth, spec.wave)
    rng = np.random.default_rng(0)
    w = sample_training_mixtures(rng, ssp_lib, 6)
    av, v, sig = rng.uniform(0, 1.5, 6), rng.uniform(-200, 200, 6), rng.uniform(40, 250, 6)
    expected = synth.observe(w, av, v, sig)  # observed grid = model grid x (1+z)
    got = recon(
        torch.tensor(w.reshape(6, -1), dtype=torch.float32),
        torch.tensor(av, dtype=torch.float32),
        torch.tensor(v, dtype=torch.float32),
        torch.tensor(sig, dtype=torch.float32),
    ).numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-4 * np.abs(expected).max())
    # sensitivity: a different dispersion changes the spectrum measurably
    other = recon(
        torch.tensor(w.reshape(6, -1), dtype=torch.float32),
        torch.tensor(av, dtype=torch.float32),
        torch.tensor(v, dtype=torch.float32),
        torch.tensor(sig + 80, dtype=torch.float32),
    ).numpy()
    assert np.abs(other - expected).max() > 0.01 * np.abs(expected).max()


def test_reduced_chi2_is_one_for_pure_noise_and_scale_free():
    rng = np.random.default_rng(1)
    model = 1.0 + 0.2 * np.sin(np.linspace(0, 20, 2000))[None, :].repeat(50, 0)
    err = np.full_like(model, 0.02)
    flux = 3.0 * model + rng.normal(0, 1, model.shape) * err  # any overall scale is fitted
    mask = np.zeros_like(model)
    mask[:, 100:200] = 1.0
    flux[:, 100:200] = 50.0  # masked pixels do not count
    x = torch.tensor(np.stack([flux, err, mask], axis=1), dtype=torch.float32)
    chi2, fitted = reduced_chi2(x, torch.tensor(model, dtype=torch.float32))
    assert float(chi2.mean()) == pytest.approx(1.0, abs=0.05)
    np.testing.assert_allclose(fitted.numpy()[:, 0] / model[:, 0], 3.0, rtol=1e-3)
