"""`survey-proc resample`: flux-conserving rebinning and Gaussian PSF matching with exact variances,
and a mock at the default 0.2" pixels made runnable by the image model."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from survey_proc.cli import main
from survey_proc.errors import OptionError
from survey_proc.resample import FWHM_SIGMA, Resampling, matching_sigma, overlap_matrix, resample_store


def test_overlap_matrix_shares_every_pixel_and_centres_the_grid():
    r = overlap_matrix(40, 0.2, 0.396)
    assert r.shape == (20, 40)
    np.testing.assert_allclose(r.sum(axis=0)[1:-1], 1.0)  # every inner input pixel shared out whole
    np.testing.assert_allclose(r.sum(axis=1), 0.396 / 0.2)  # each output covers 1.98 input pixels
    np.testing.assert_allclose(r, r[::-1, ::-1])  # centred: symmetric under reversal
    np.testing.assert_array_equal(overlap_matrix(8, 0.5, 1.0), np.kron(np.eye(4), [[1.0, 1.0]]))  # 2x2 binning


def test_flux_is_conserved_without_and_with_psf_matching():
    rng = np.random.default_rng(1)
    img = np.zeros((60, 60, 2))
    img[20:40, 22:38] = rng.random((20, 16, 2)) * 50  # well inside: nothing leaks out of the edges
    var, mask = np.ones_like(img), np.zeros(img.shape, bool)
    for psf_in, psf_out in ((0.0, 0.0), (0.4, 1.0)):
        op = Resampling.between((60, 60), 0.2, 0.396, psf_in, psf_out)
        flux, _, out_mask = op.apply(img, var, mask)
        assert flux.shape == (30, 30, 2) and not out_mask.any()
        np.testing.assert_allclose(flux.sum(axis=(0, 1)), img.sum(axis=(0, 1)), rtol=1e-5)


def test_psf_matching_reaches_the_target_seeing():
    """A point source at 0.1" pixels with no seeing comes out with the target's Gaussian width (pixel
    top-hat included), measured from its second moment."""
    img = np.zeros((201, 201, 1))
    img[100, 100] = 1.0
    op = Resampling.between((201, 201), 0.1, 0.1, 0.0, 1.2)
    flux, _, _ = op.apply(img, np.ones_like(img), np.zeros(img.shape, bool))
    y = (np.arange(201) - 100) * 0.1
    prof = flux[:, :, 0].sum(axis=1)
    sigma = np.sqrt((prof * y**2).sum() / prof.sum())
    np.testing.assert_allclose(np.sqrt(sigma**2 + 0.1**2 / 12), 1.2 / FWHM_SIGMA, rtol=1e-3)
    with pytest.raises(ValueError, match="cannot be sharpened"):
        matching_sigma(1.5, 1.0, 0.396)


def test_variance_is_propagated_exactly():
    rng = np.random.default_rng(2)
    n = 30
    var = np.full((n, n, 1), 4.0)
    mask = np.zeros((n, n, 1), bool)
    op = Resampling.between((n, n), 0.2, 0.396, 0.5, 1.0)
    _, v, _ = op.apply(np.zeros((n, n, 1)), var, mask)
    draws = np.stack([op.apply(rng.normal(0, 2, (n, n, 1)), var, mask)[0] for _ in range(600)])
    np.testing.assert_allclose(draws[:, 3:12, 3:12].var(axis=0).mean(), v[3:12, 3:12].mean(), rtol=0.06)


def test_masked_pixels_carry_no_weight():
    n = 20
    img = np.full((n, n, 1), 3.0)
    mask = np.zeros(img.shape, bool)
    mask[5:7, 5:7] = True  # one input pixel of each of four output pixels
    img[mask] = 1e6  # whatever a masked pixel holds is not used
    mask[14:, 14:] = True  # a fully masked corner stays masked
    flux, _, out_mask = Resampling.between((n, n), 0.2, 0.4, 0.0, 0.0).apply(img, np.ones_like(img), mask)
    np.testing.assert_allclose(flux[:6, :6], 12.0)  # 3 x the area ratio 4, the masked pixels filled
    assert out_mask[8:, 8:].all() and not out_mask[:6, :6].any() and np.isnan(flux[out_mask]).all()


def test_resample_makes_a_default_scale_mock_runnable_by_the_image_model(tmp_path, capsys):
    mock, out = tmp_path / "m.zarr", tmp_path / "r.zarr"
    assert main(["mock", "--photometry", "sdss", "--nx", "40", "--ny", "40", "--psf-fwhm", "2", str(mock)]) == 0
    assert main(["run", "--cube", str(mock), "--model", "ugriz-maps", "--cluster", "none"]) == 2
    assert "survey-proc resample" in capsys.readouterr().err  # the refusal says how
    assert main(["resample", str(mock), str(out), "--quiet"]) == 0
    assert 'of 0.2" (seeing 0.4") -> 20 x 20 of 0.396"' in capsys.readouterr().out
    ds, src = xr.open_zarr(out), xr.open_zarr(mock)
    assert ds.attrs["pixel_scale_arcsec"] == 0.396 and ds.attrs["psf_fwhm_arcsec"] == pytest.approx(0.99, abs=0.02)
    total = np.nansum(ds.flux.values, axis=(0, 1)) / np.nansum(src.flux.values, axis=(0, 1))
    assert np.all(np.abs(total - 1) < 0.06)  # less what the 1" seeing spreads beyond the 8" field
    assert main(["run", "--cube", str(out), "--model", "ugriz-maps", "--cluster", "none", "--quiet"]) == 0
    maps = xr.open_zarr(tmp_path / "r.maps.zarr")
    assert maps.log_mass_surface_density.shape == (20, 20) and (maps.flag.values == 0).mean() > 0.5


def test_resample_needs_the_input_seeing(tmp_path):
    from survey_proc.ssp import load_filters
    from survey_proc.synth import MockConfig, write_mock_photometry

    mock = tmp_path / "m.zarr"
    write_mock_photometry(mock, MockConfig(nx=8, ny=8, chunk=8), load_filters("sdss"))
    import zarr

    del zarr.open_group(str(mock), mode="r+").attrs["psf_fwhm_arcsec"]
    with pytest.raises(OptionError, match="--input-psf"):
        resample_store(mock, tmp_path / "r.zarr", pixel_scale=0.396, psf_fwhm=1.0)
    info = resample_store(mock, tmp_path / "r.zarr", pixel_scale=0.396, psf_fwhm=1.0, input_psf_fwhm=0.5)
    assert info.shape_out == (4, 4) and info.psf_in == 0.5
