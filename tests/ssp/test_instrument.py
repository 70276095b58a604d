"""Instrument and physics applied to spectra: LSFs, air/vacuum, convolution, LOSVD, dust, grids."""

from __future__ import annotations

import numpy as np
import pytest

from survey_proc import ssp


def test_muse_lsf_matches_bacon2017():
    np.testing.assert_allclose(ssp.muse_lsf_fwhm(np.array([4750.0, 7000.0, 9350.0])), [3.000, 2.482, 2.578], atol=2e-3)


def _measured_sigma(x, y):
    y = y / y.sum()
    mu = (x * y).sum()
    return np.sqrt(((x - mu) ** 2 * y).sum())


def test_variable_gaussian_convolution_gives_requested_width():
    n = 801
    flux = np.zeros((2, n))
    flux[:, 200] = 1.0
    flux[:, 600] = 1.0
    sigma = np.where(np.arange(n) < 400, 1.5, 4.0)
    out = ssp.convolve_variable_gaussian(flux, sigma)
    x = np.arange(n)
    assert _measured_sigma(x[150:250], out[0, 150:250]) == pytest.approx(1.5 * np.sqrt(1 + 1 / (12 * 1.5**2)), rel=0.02)
    assert _measured_sigma(x[550:650], out[0, 550:650]) == pytest.approx(4.0, rel=0.02)
    np.testing.assert_allclose(out.sum(axis=1), 2.0, rtol=1e-6)


def test_match_lsf_degrades_to_the_target_resolution():
    wave = np.arange(5000.0, 5200.0, 0.5)
    flux = np.exp(-0.5 * ((wave - 5100.0) / (2.0 / 2.3548)) ** 2)  # FWHM 2 A line
    out = ssp.match_lsf(wave, flux, 2.0, 5.0)
    fwhm = 2.3548 * _measured_sigma(wave, out)
    assert fwhm == pytest.approx(5.0, rel=0.03)


def test_losvd_shift_and_broadening():
    velscale = 20.0
    n = 1000
    flux = np.zeros((1, n), np.float64)
    flux[0, 500] = 1.0
    out = ssp.losvd_convolve(flux, velscale, np.array([200.0]), np.array([100.0]))[0]
    x = np.arange(n) * velscale
    mu = (x * out).sum() / out.sum()
    assert mu - 500 * velscale == pytest.approx(200.0, abs=1.0)
    assert _measured_sigma(x, out) == pytest.approx(100.0, rel=0.01)
    assert out.sum() == pytest.approx(1.0, rel=1e-6)


def test_dust_uses_the_extinction_package():
    import extinction

    wave = np.array([4000.0, 5500.0, 7000.0])
    expected = 10 ** (-0.4 * extinction.calzetti00(wave, 1.2, 4.05))
    np.testing.assert_allclose(ssp.attenuate(wave, np.ones(3), 1.2), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown dust law"):
        ssp.attenuation_curve(wave, "made-up")


def test_log_grid_and_resample():
    grid = ssp.log_wave_grid(4000.0, 5000.0, 30.0)
    assert np.allclose(np.diff(np.log(grid)), 30.0 / ssp.C_KMS)
    wave = np.linspace(3000.0, 6000.0, 100)
    out = ssp.resample(wave, 2 * wave[None, :], np.array([2900.0, 4500.0]))
    assert np.isnan(out[0, 0]) and out[0, 1] == pytest.approx(9000.0)


def test_sdss_lsf_from_the_knots_and_from_wdisp():
    knots, fwhm = np.array(ssp.SDSS_LSF_KNOTS[0]), np.array(ssp.SDSS_LSF_KNOTS[1])
    np.testing.assert_allclose(ssp.sdss_lsf_fwhm(knots), fwhm)
    assert ssp.sdss_lsf_fwhm(np.array([3000.0]))[0] == fwhm[0]  # held flat beyond the knots
    wave = np.linspace(5000.0, 5010.0, 11)  # 1 A pixels
    np.testing.assert_allclose(ssp.wdisp_to_fwhm(wave, np.ones(11)), 2.3548, rtol=1e-4)


def test_air_and_vacuum_wavelengths():
    air = ssp.vacuum_to_air(np.array([1500.0, 6564.61]))
    assert air[0] == 1500.0  # below 2000 A: unchanged
    assert air[1] == pytest.approx(6562.80, abs=0.01)  # H-alpha
    np.testing.assert_allclose(ssp.air_to_vacuum(air), [1500.0, 6564.61], atol=1e-3)
    np.testing.assert_array_equal(ssp.to_medium(air, "air", "air"), air)
    np.testing.assert_allclose(ssp.to_medium(air, "air", "vacuum"), ssp.air_to_vacuum(air))
    with pytest.raises(ValueError, match="unknown wavelength medium"):
        ssp.to_medium(air, "air", "water")


def test_pixel_gaussian_weights_are_normalised():
    w = ssp.gaussian_pixel_weights(np.array([0.0, 0.5, 2.0]), 6)
    assert w.shape == (3, 13)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert w[0, 6] == pytest.approx(1.0)  # sigma 0: a delta
    np.testing.assert_allclose(w, w[:, ::-1])  # symmetric


def test_every_named_dust_law_dims_the_blue_more():
    wave = np.array([4000.0, 5500.0, 8000.0])
    for law in ("calzetti00", "ccm89", "odonnell94", "fitzpatrick99"):
        k = ssp.attenuation_curve(wave, law)
        assert k[0] > k[1] > k[2] and k[1] == pytest.approx(1.0, abs=0.1)  # A_V at V
    flux = np.ones((2, 3), np.float32)
    out = ssp.attenuate(wave, flux, np.array([0.0, 1.0]))
    assert out.dtype == np.float32 and np.all(out[0] == 1.0) and np.all(out[1] < 1.0)
