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
    # within 0.2 % nearly everywhere; up to 1 % where the LOSVD meets a step (the Calzetti curve's at
    # 6300 A, applied after the LOSVD) or a sharp line core (the velocity read by linear interpolation)
    rel = np.abs(got - expected) / np.abs(expected)
    assert np.quantile(rel, 0.999) < 2e-3
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-4 * np.abs(expected).max())
    # sensitivity: a different dispersion changes the spectrum measurably
    other = recon(
        torch.tensor(w.reshape(6, -1), dtype=torch.float32),
        torch.tensor(av, dtype=torch.float32),
        torch.tensor(v, dtype=torch.float32),
        torch.tensor(sig + 80, dtype=torch.float32),
    ).numpy()
    assert np.abs(other - expected).max() > 0.01 * np.abs(expected).max()


def test_reconstructor_matches_the_narrowest_lines_to_one_percent(ssp_lib):
    """4750-8800 A at the training set's lowest dispersions: the Ca triplet's and H-alpha's cores are
    where the rebuild's linear read of a shifted spectrum departs most from the synthesiser's."""
    from survey_proc.training import muse_rest_4750_8800_input

    spec = muse_rest_4750_8800_input()
    z = 0.03
    synth = Synthesiser(ssp_lib, spec.wave * (1 + z), z, muse_lsf_fwhm, max_velocity=1500.0)
    recon = Reconstructor.from_synthesiser(synth, spec.wave)
    rng = np.random.default_rng(5)
    n = 200
    w = sample_training_mixtures(rng, ssp_lib, n)
    av, v, sig = np.zeros(n), rng.uniform(-300, 300, n), rng.uniform(30, 60, n)
    expected = synth.observe(w, av, v, sig)
    got = recon(*(torch.tensor(a, dtype=torch.float32) for a in (w.reshape(n, -1), av, v, sig))).numpy()
    rel = np.abs(got - expected) / np.abs(expected)
    assert np.quantile(rel, 0.999) < 2e-3 and rel.max() < 1e-2
    assert rel.max() > 1e-4  # not the synthesiser's own form: it does differ a little


def test_reconstructor_refuses_a_grid_beyond_its_templates_and_survives_a_nan_velocity(ssp_lib):
    spec = muse_rest_4750_7100_input()
    synth = Synthesiser(ssp_lib, spec.wave, 0.0, muse_lsf_fwhm, max_velocity=1500.0)
    with pytest.raises(ValueError, match="beyond the templates"):
        Reconstructor.from_synthesiser(synth, spec.wave + 60.0)  # past the red margin
    recon = Reconstructor.from_synthesiser(synth, spec.wave)
    w = torch.tensor(sample_training_mixtures(np.random.default_rng(3), ssp_lib, 2).reshape(2, -1), dtype=torch.float32)
    out = recon(w, torch.zeros(2), torch.tensor([float("nan"), 50.0]), torch.tensor([80.0, 80.0]))
    assert torch.isfinite(out).all()


def test_reconstructor_shifts_redward_and_clamps_sigma(ssp_lib):
    spec = muse_rest_4750_7100_input()
    synth = Synthesiser(ssp_lib, spec.wave, 0.0, muse_lsf_fwhm, max_velocity=1500.0)
    recon = Reconstructor.from_synthesiser(synth, spec.wave)
    w = torch.tensor(sample_training_mixtures(np.random.default_rng(2), ssp_lib, 1).reshape(1, -1), dtype=torch.float32)
    zero = torch.zeros(1)

    def rebuilt(v: float, sig: float) -> np.ndarray:
        return recon(w, zero, torch.tensor([v]), torch.tensor([sig]))[0].numpy()

    # H-alpha absorption (6563 A) moves to 6563 (1 + v/c) for v = +200 km/s
    near = (spec.wave > 6520) & (spec.wave < 6620)
    line = spec.wave[near][np.argmin(rebuilt(200.0, 60.0)[near])]
    assert line == pytest.approx(6562.8 * (1 + 200.0 / 299792.458), abs=1.3)
    # sigma beyond SIGMA_MAX is rebuilt at SIGMA_MAX (that nothing wraps around: the tests below)
    np.testing.assert_allclose(rebuilt(0.0, 5000.0), rebuilt(0.0, Reconstructor.SIGMA_MAX), rtol=1e-5)


def test_the_widest_dispersion_at_the_largest_shift_does_not_wrap_around():
    """The FFT is padded by 6 SIGMA_MAX on one side only: on a grid whose FFT has no room beyond that
    padding, the rebuild at that dispersion and the largest shift either way equals a direct
    (non-circular) convolution of the zero-padded mixture."""
    velscale, margin = 25.0, 70
    pad = int(np.ceil(6 * Reconstructor.SIGMA_MAX / velscale))
    nlog = 5120 - pad  # fft_length(nlog + pad) is nlog + pad itself
    rng = np.random.default_rng(4)
    grid = np.arange(nlog)
    templates = 1.0 + 0.3 * np.sin(grid[None, :] / rng.uniform(5, 50, (4, 1))) + rng.uniform(0, 0.2, (4, nlog))
    index = np.arange(margin, nlog - margin - 1)
    recon = Reconstructor(
        torch.tensor(templates), torch.zeros(nlog), velscale, torch.tensor(index), torch.full((index.size,), 0.25)
    )
    assert recon.nfft == nlog + pad
    w = rng.dirichlet(np.ones(4))[None, :]
    mix = (w @ templates)[0]
    s = Reconstructor.SIGMA_MAX / velscale
    t = np.arange(-int(8 * s), int(8 * s) + 1)
    kernel = np.exp(-0.5 * (t / s) ** 2)
    conv = np.convolve(mix, kernel / kernel.sum(), mode="same")  # zeros beyond the templates
    for shift in (-recon.shift_max, recon.shift_max):
        got = recon(
            torch.tensor(w, dtype=torch.float32),
            torch.zeros(1),
            torch.tensor([shift * velscale], dtype=torch.float32),
            torch.tensor([5000.0]),  # clamped to SIGMA_MAX
        )[0].numpy()
        expected = np.interp(index + 0.25 - shift, grid, conv)
        np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_the_fft_leaves_room_for_six_sigma_max():
    """On a grid where one pixel less of padding would give a shorter FFT (4608 points), the FFT
    still leaves 6 SIGMA_MAX of zeros beyond the templates (the condition the test above relies on)."""
    velscale = 25.0
    pad = int(np.ceil(6 * Reconstructor.SIGMA_MAX / velscale))
    for nlog in (4609 - pad, 4962):  # the edge case; the MUSE rest 4750-7100 A grid
        index = np.arange(70, nlog - 71)
        recon = Reconstructor(
            torch.ones(2, nlog), torch.zeros(nlog), velscale, torch.tensor(index), torch.zeros(index.size)
        )
        assert recon.nfft - recon.nlog >= pad, (nlog, recon.nfft)


def test_the_rebuild_has_the_gradients_training_uses():
    """Autograd through the rebuild (weights, A_V, velocity, sigma: the training loss's path) against
    finite differences, in float64 on a small grid, away from the clamps and pixel boundaries."""
    rng = np.random.default_rng(6)
    nlog, velscale = 400, 60.0
    grid = np.arange(nlog)
    templates = 1.0 + 0.3 * np.sin(grid[None, :] / rng.uniform(3, 30, (3, 1)))
    index = np.arange(40, nlog - 41, 2)
    recon = Reconstructor(
        torch.tensor(templates),
        torch.linspace(1.5, 0.5, nlog),
        velscale,
        torch.tensor(index),
        torch.full((index.size,), 0.3),
    ).double()
    inputs = (
        torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64, requires_grad=True),
        torch.tensor([0.7], dtype=torch.float64, requires_grad=True),
        torch.tensor([100.0], dtype=torch.float64, requires_grad=True),  # 1.67 pixels: fr = 0.63
        torch.tensor([150.0], dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(recon, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


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


def test_fft_length_is_long_enough_and_of_a_fast_form():
    from survey_proc.training._arch import fft_length

    for n in (100, 4962 + 144, 4962 + 480, 5625, 7000, 8100, 8192, 8193, 12345):
        m = fft_length(n)
        odd = m
        while odd % 2 == 0:
            odd //= 2
        assert n <= m <= 2 ** int(np.ceil(np.log2(n))) and odd in (1, 3, 5, 9, 15), (n, m)
    assert fft_length(5442) == 6144  # not scipy's 5-smooth 5625 = 5^4 x 3^2, which MKL does 2x slower
    assert fft_length(4962 + 144) == 5120  # 4750-7100 A with 6 x 600 km/s of padding
