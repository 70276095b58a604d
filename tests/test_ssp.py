"""SSP library and the instrument/physics functions (pure NumPy, no Dask)."""

from __future__ import annotations

import numpy as np
import pytest

from survey_proc import ssp
from survey_proc.errors import DataUnavailableError


def test_library_grid_and_tables(ssp_lib):
    assert ssp_lib.flux.shape[:2] == (6, 25)
    assert ssp_lib.n_templates == 150
    np.testing.assert_allclose(ssp_lib.metal, [-1.71, -1.31, -0.71, -0.40, 0.0, 0.22])
    np.testing.assert_allclose(10 ** ssp_lib.log_age[[0, -1]] / 1e9, [0.0631, 15.8489], rtol=1e-3)
    assert ssp_lib.step == pytest.approx(0.9)
    assert ssp_lib.wave[0] <= 2600 and ssp_lib.wave[-1] >= 10400
    # stellar + remnant mass per unit initial mass: below 1, decreasing with age
    assert np.all((ssp_lib.mass > 0.4) & (ssp_lib.mass < 1.0))
    assert np.all(np.diff(ssp_lib.mass, axis=1) < 0.01)
    # old populations are fainter per unit mass in the optical than young ones
    light = ssp_lib.light_in_window()
    assert np.all(light[:, 0] > 10 * light[:, -1])
    assert "sha256" in ssp_lib.provenance or "cache" in ssp_lib.provenance


def test_supplied_folder_with_missing_files_says_how(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DataUnavailableError, match=r"expected 150.*SURVEY_PROC_SSP_DIR"):
        ssp.load_ssp_library(tmp_path)
    with pytest.raises(DataUnavailableError, match="does not exist"):
        ssp.load_ssp_library(tmp_path / "absent")


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
