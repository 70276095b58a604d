"""Synthetic photometry (AB fluxes, magnitudes, variance), photometric stores (filter sets: tests/ssp)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from survey_proc.engine import RunConfig, run
from survey_proc.errors import CubeError
from survey_proc.ssp import EMILES_FWHM, load_filters
from survey_proc.stores import OutputPathError, create_photometry_store, open_photometry_store
from survey_proc.synth import (
    C_ANGSTROM_S,
    MockConfig,
    PhotometrySynthesiser,
    Synthesiser,
    emission_line_spectra,
    library_observed_range,
    mock_band_fluxes,
    photometry_from_store,
    sample_training_mixtures,
    synthetic_photometry,
    write_mock,
    write_mock_photometry,
)

WAVE = np.arange(2800.0, 11500.0, 0.7)


def ph_done(path) -> bool:
    """Every region of a photometric store written and verified (4 regions of 4 x 4 pixels here)."""
    return bool(zarr.open_group(str(path), mode="r")["region_done"][...].all())


@pytest.mark.parametrize("name", ["jpas", "sdss"])
def test_flat_fnu_spectrum_has_the_same_ab_magnitude_in_every_band(name):
    fnu = 3631e-23 * 10 ** (-0.4 * 20.0)  # AB = 20
    flam = fnu * C_ANGSTROM_S / WAVE**2
    ph = synthetic_photometry(flam[None], None, None, WAVE, load_filters(name))
    mag, _ = ph.ab()
    np.testing.assert_allclose(mag, 20.0, atol=1e-6)
    assert not ph.mask.any()


def test_known_spectrum_matches_speclite():
    speclite = pytest.importorskip("speclite.filters")
    spec = 1e-17 * (WAVE / 5000) ** -1.5 * (1 + 0.3 * np.sin(WAVE / 300))  # erg/s/cm2/A
    ref = speclite.load_filters("sdss2010-*").get_ab_magnitudes(spec, WAVE)
    ph = synthetic_photometry(spec[None] / 1e-20, None, None, WAVE, load_filters("sdss"), flux_unit=1e-20)
    np.testing.assert_allclose(ph.ab()[0][0], [ref[b][0] for b in ref.colnames], atol=2e-3)


def test_variance_is_propagated():
    rng = np.random.default_rng(1)
    flux = np.full((4000, WAVE.size), 100.0)
    var = np.full_like(flux, 400.0) * (1 + (WAVE > 6000))
    noisy = flux + rng.standard_normal(flux.shape) * np.sqrt(var)
    ph = synthetic_photometry(noisy, var, None, WAVE, load_filters("sdss"), flux_unit=1e-20)
    measured = ph.flux.std(axis=0)
    np.testing.assert_allclose(measured, np.sqrt(ph.var[0]), rtol=0.06)
    _, mag_err = ph.ab()
    assert np.all(mag_err > 0)


def test_coverage_and_masks():
    wave = np.arange(3600.0, 9000.0, 1.0)
    flux = np.ones((2, wave.size))
    mask = np.zeros_like(flux, bool)
    mask[1, (wave > 6000) & (wave < 6400)] = True  # a big hole in r
    ph = synthetic_photometry(flux, flux * 0.01, mask, wave, load_filters("sdss"))
    assert ph.mask[:, 0].all() and ph.coverage[0] < 0.6  # u: the spectrum starts at 3600 A
    assert ph.mask[:, 4].all()  # z: ends at 9000 A
    assert not ph.mask[0, 1:4].any() and ph.mask[1, 2] and not ph.mask[1, 1]


def test_photometric_synthesiser_equals_integrated_spectra(ssp_lib):
    rng = np.random.default_rng(0)
    n, z = 12, 0.01
    w = sample_training_mixtures(rng, ssp_lib, n)
    av, vel = rng.uniform(0, 1.5, n), rng.uniform(-200, 200, n)
    ha = rng.uniform(0, 40, n) * 1000
    filters = load_filters("jpas36")
    fast = PhotometrySynthesiser(ssp_lib, filters, z).observe(w, av, 1000.0, ha, vel)
    lo, hi = library_observed_range(ssp_lib, z)
    wave = np.arange(max(lo, filters.support.min() - 5), min(hi, filters.support.max() + 5), 1.0)
    lsf = lambda x: np.full_like(np.asarray(x, float), EMILES_FWHM * (1 + z))  # noqa: E731
    spectra = Synthesiser(ssp_lib, wave, z, lsf).observe(w, av, vel, rng.uniform(50, 250, n), 1000.0)
    spectra += emission_line_spectra(wave, z, ha, vel, np.full(n, 30.0), av, lsf)
    slow = synthetic_photometry(spectra, None, None, wave, filters, flux_unit=1e-20)
    rel = np.abs(fast / slow.flux - 1)
    assert np.median(rel) < 2e-3 and rel.max() < 0.02


def test_photometry_store_validation(tmp_path):
    filters = load_filters("sdss")
    path = tmp_path / "p.zarr"
    create_photometry_store(path, spatial={"y": 4, "x": 5}, filters=filters, attrs={"redshift": 0.01}, chunk=4)
    grp = zarr.open_group(str(path), mode="r+")
    grp["flux"][...] = np.ones((4, 5, 5), np.float32)
    grp["var"][...] = np.ones((4, 5, 5), np.float32)
    ds = open_photometry_store(path)
    assert ds.flux.dims == ("y", "x", "band") and list(ds.band.values) == list("ugriz")
    assert ds.filter_response.dims == ("band", "filter_wave") and ds.pivot_wave.attrs["units"] == "Angstrom"
    bad = ds.drop_vars("filter_response")
    bad["flux"].attrs["units"] = "Jy"
    bad.to_zarr(tmp_path / "bad.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(CubeError) as err:
        open_photometry_store(tmp_path / "bad.zarr")
    assert "filter curves are missing" in str(err.value) and "expected 'nJy'" in str(err.value)


def test_photometry_of_a_wide_cube_matches_the_mock_photometry_of_the_same_galaxy(tmp_path, ssp_lib):
    """Cube -> `photometry` on a 2-worker LocalCluster equals the mock's direct photometry within noise."""
    cfg = MockConfig(nx=8, ny=8, seed=3, snr=20.0, chunk=4, wave_start=3650.0, wave_stop=7450.0)
    write_mock(tmp_path / "wide.zarr", cfg, ssp_lib)
    filters = load_filters("jpas36")
    with pytest.raises(OutputPathError, match="is the input"):  # never over its input
        photometry_from_store(tmp_path / "wide.zarr", filters, tmp_path / "wide.zarr", cluster="none")
    info = photometry_from_store(tmp_path / "wide.zarr", filters, tmp_path / "p.zarr", cluster="local", workers=2)
    assert info.spectra == 64 and info.truth and not info.bands_short_of_coverage
    assert ph_done(tmp_path / "p.zarr") and info.regions_resumed == 0
    ph = open_photometry_store(tmp_path / "p.zarr")
    assert ph.attrs["filter_set"] == "jpas36" and ph.flux.encoding["chunks"] == (4, 4, 36)
    _, flux, _, _ = mock_band_fluxes(cfg, ssp_lib, filters, noise=False)
    pull = (ph.flux.values - flux) / np.sqrt(ph["var"].values)
    assert abs(np.nanmedian(pull)) < 0.2 and 0.8 < np.nanstd(pull) < 1.3
    truth = xr.open_zarr(tmp_path / "p.zarr", group="truth")
    np.testing.assert_array_equal(
        truth.log_age.values, xr.open_zarr(tmp_path / "wide.zarr", group="truth").log_age.values
    )
    # the mock photometry of the same config: same truth, and the same noise level band by band
    write_mock_photometry(tmp_path / "direct.zarr", cfg, filters, ssp_lib)
    direct = xr.open_zarr(tmp_path / "direct.zarr", group="truth")
    np.testing.assert_array_equal(direct.log_age.values, truth.log_age.values)
    assert np.isfinite(direct.log_mass_surface_density.values).all()
    ratio = np.nanmedian(ph["var"].values / xr.open_zarr(tmp_path / "direct.zarr")["var"].values, axis=(0, 1))
    assert np.all((ratio > 0.9) & (ratio < 1.25))  # sky-line bands carry a little extra variance in the cube


def test_missing_blue_bands_are_named_with_the_models_that_fit_the_rest(tmp_path, ssp_lib):
    """Photometry of a MUSE-range cube through the 54 J-PAS bands: the 11 bluest are empty, so the
    36-band model would flag every pixel; the error names them and says what fits the rest."""
    write_mock(tmp_path / "c.zarr", MockConfig(nx=4, ny=4, chunk=4), ssp_lib)
    info = photometry_from_store(tmp_path / "c.zarr", load_filters("jpas"), tmp_path / "p.zarr", cluster="none")
    assert info.bands_short_of_coverage == [f"J{3785 + 100 * k}" for k in range(11)]
    with pytest.raises(CubeError) as err:
        run(RunConfig(cube=str(tmp_path / "p.zarr"), out=str(tmp_path / "m.zarr"), model="narrowband", cluster="none"))
    message = str(err.value)
    assert "11 of the 36 bands model narrowband reads are empty everywhere" in message
    assert "J3785, J3885" in message and "J4785" in message and "43 bands (J4885-J9085)" in message
    assert "no packaged model reads only those: train one on them" in message


def test_photometry_refuses_a_cube_that_is_not_flux_calibrated(tmp_path, ssp_lib):
    """Band fluxes need a flux density per Angstrom: a cube in counts is refused with the reason, a
    surface brightness (per arcsec^2) is turned into flux per pixel with the pixel's area."""
    write_mock(tmp_path / "c.zarr", MockConfig(nx=4, ny=4, chunk=4), ssp_lib)
    filters = load_filters("sdss")
    photometry_from_store(tmp_path / "c.zarr", filters, tmp_path / "p.zarr", cluster="none")
    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="r+")
    units = group["flux"].attrs["units"]
    group["flux"].attrs["units"] = "count"
    with pytest.raises(CubeError, match="flux units 'count' are not a flux density per Angstrom"):
        photometry_from_store(tmp_path / "c.zarr", filters, tmp_path / "q.zarr", cluster="none")
    scale = float(group.attrs["pixel_scale_arcsec"])
    group["flux"].attrs["units"] = f"{units}/arcsec2"
    photometry_from_store(tmp_path / "c.zarr", filters, tmp_path / "s.zarr", cluster="none")
    a = open_photometry_store(tmp_path / "p.zarr")["flux"].values
    b = open_photometry_store(tmp_path / "s.zarr")["flux"].values
    np.testing.assert_allclose(b, a * scale**2, rtol=1e-4)
