"""Voronoi binning: the co-adding numerics, the catalogue of bins, a run over it and its pixel maps."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

from survey_proc.binning import (
    BinConfig,
    bin_cube,
    coadd,
    finish_bins,
    order_bins_by_chunk,
    voronoi_bins,
)
from survey_proc.errors import CubeError
from survey_proc.stores import Flag, OutputPathError, open_spectral_store


def test_coadd_sums_good_pixels_and_scales_for_bad_ones():
    rng = np.random.default_rng(1)
    flux = rng.normal(10, 1, (5, 6)).astype(np.float32)
    var = rng.uniform(0.5, 2, (5, 6)).astype(np.float32)
    mask = np.zeros((5, 6), bool)
    mask[0, 2] = True  # one bad pixel in bin 7 (spectra 0, 1, 2)
    flux[1, 3] = np.nan  # and a NaN
    mask[0:3, 5] = [True, True, False]  # two of three bad at wavelength 5: masked in the bin
    labels = np.array([7, 7, 7, 2, 2])
    got_labels, s, v, n = coadd(flux, var, mask, labels)
    assert got_labels.tolist() == [2, 7]
    np.testing.assert_allclose(s[0], flux[3:5].sum(0), rtol=1e-6)
    np.testing.assert_allclose(v[0], var[3:5].sum(0), rtol=1e-6)
    assert n[1].tolist() == [3, 3, 2, 2, 3, 1]
    f, e, bad = finish_bins(s, v, n, np.array([2, 3]))
    # where one of 3 spaxels is bad, the 2 good ones are scaled to 3 spaxels' worth
    np.testing.assert_allclose(f[1, 2], (flux[1, 2] + flux[2, 2]) * 1.5, rtol=1e-6)
    np.testing.assert_allclose(e[1, 2], (var[1, 2] + var[2, 2]) * 1.5**2, rtol=1e-6)
    np.testing.assert_allclose(f[1, 0], flux[0:3, 0].sum(), rtol=1e-6)
    assert bad.tolist() == [[False] * 6, [False] * 5 + [True]] and np.isnan(f[1, 5])


def test_bins_are_numbered_in_the_order_they_complete():
    # 4x4 map, chunks of 2x2; bin 0 spans chunks 0 and 3, bin 1 lies in chunk 1, bin 2 in chunk 2
    bin_id = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, -1, 0, 0]])
    new, last = order_bins_by_chunk(bin_id, 2, 2)
    assert last.tolist() == [1, 2, 3]  # non-decreasing: finished after chunks 1, 2, 3
    assert new[0, 2] == 0 and new[2, 0] == 1 and new[0, 0] == 2 and new[3, 1] == -1
    assert (np.unique(new[new >= 0], return_counts=True)[1] == [4, 3, 8]).all()


def test_voronoi_bins_reach_the_target():
    pytest.importorskip("vorbin")  # the [binning] extra (installed by .ci/run)
    yy, xx = np.indices((20, 20))
    signal = 100.0 * np.exp(-np.hypot(yy - 10, xx - 10) / 4)
    noise = np.full_like(signal, 10.0)
    bin_id = voronoi_bins(signal, noise, target_snr=20.0, min_snr=0.5)
    inside = bin_id >= 0
    assert (~inside).sum() == ((signal / noise) < 0.5).sum()
    ids = bin_id[inside]
    snr = np.bincount(ids, signal[inside]) / np.sqrt(np.bincount(ids, noise[inside] ** 2))
    assert np.median(snr) > 0.8 * 20 and bin_id.max() + 1 < inside.sum() / 2
    # every spaxel above the target: each is its own bin; too little S/N overall: a clear error
    assert voronoi_bins(signal + 1e4, noise, 20.0, 0.5).max() + 1 == 400
    with pytest.raises(CubeError, match="below the target 1e\\+06"):
        voronoi_bins(signal, noise, 1e6, 0.5)


@pytest.fixture(scope="module")
def binned(mock16, tmp_path_factory):
    pytest.importorskip("vorbin")
    out = tmp_path_factory.mktemp("bins") / "c.bins.zarr"
    info = bin_cube(mock16, out, BinConfig(target_snr=30.0, min_snr=8.0, objects_per_chunk=16))
    return out, info


def test_binned_catalogue_follows_the_schema(binned, mock16):
    out, info = binned
    cat = open_spectral_store(out)
    assert cat["flux"].dims == ("object", "wave") and cat.sizes["object"] == info.bins
    assert 4 <= info.bins < 200 and info.left_out > 0  # the faint outskirts are below S/N 8
    bin_id = cat.bin_id.values
    assert bin_id.shape == (16, 16) and bin_id.max() + 1 == info.bins
    assert (np.bincount(bin_id[bin_id >= 0]) == cat.bin_npix.values).all()
    assert json.loads(cat.attrs["binning"])["target_snr"] == 30.0
    assert (cat.redshift.values == xr.open_zarr(mock16).attrs["redshift"]).all()
    # the co-added spectrum of the largest bin is the sum of its spaxels (where all are good)
    cube = xr.open_zarr(mock16)
    b = int(np.argmax(cat.bin_npix.values))
    members = np.argwhere(bin_id == b)
    flux = np.stack([cube.flux.values[y, x] for y, x in members])
    var = np.stack([cube["var"].values[y, x] for y, x in members])
    mask = np.stack([cube["mask"].values[y, x] for y, x in members]) | ~np.isfinite(flux)
    clean = ~mask.any(0)
    np.testing.assert_allclose(cat.flux.values[b][clean], flux.sum(0)[clean], rtol=1e-5)
    np.testing.assert_allclose(cat["var"].values[b][clean], var.sum(0)[clean], rtol=1e-5)


def test_bins_committed_region_by_region_equal_one_region(binned, mock16, tmp_path):
    """Bins are committed (and verified) as each chunk of bins completes; the chunking changes nothing."""
    out, info = binned
    small = tmp_path / "b5.zarr"
    bin_cube(mock16, small, BinConfig(target_snr=30.0, min_snr=8.0, objects_per_chunk=5))
    a, b = xr.open_zarr(out), xr.open_zarr(small)
    assert b.region_done.size == -(-info.bins // 5) and b.region_done.values.all()
    for name in ("flux", "var", "mask", "bin_id", "bin_snr"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    with pytest.raises(OutputPathError, match="is the input"):
        bin_cube(mock16, mock16, BinConfig(overwrite=True))


def test_run_over_bins_writes_maps_on_the_pixel_grid(binned, run_model, tmp_path):
    from survey_proc.engine import RunConfig, run

    out, info = binned
    maps_path = tmp_path / "bins.maps.zarr"
    summary = run(RunConfig(cube=str(out), out=str(maps_path), model=run_model, workers=2, progress=False))
    assert summary.spectra == info.bins and summary.verified and summary.pixel_maps == "pixels"
    per_bin = xr.open_zarr(maps_path)
    pixels = xr.open_zarr(maps_path, group="pixels")
    bin_id = pixels.bin_id.values
    assert per_bin.log_age.dims == ("object",) and pixels.log_age.dims == ("y", "x")
    # the S/N the engine measures on the co-added spectra is the binning target
    fitted = per_bin.flag.values == 0
    assert np.median(per_bin.snr.values[fitted]) == pytest.approx(30.0, rel=0.25)
    # every binned spaxel carries its bin's values; the others are flagged not_binned, NaN
    inside = bin_id >= 0
    for name in ("log_age", "metallicity", "av", "snr", "flag"):
        np.testing.assert_array_equal(pixels[name].values[inside], per_bin[name].values[bin_id[inside]])
    assert (pixels.flag.values[~inside] & Flag.NOT_BINNED).all()
    assert np.isnan(pixels.log_age.values[~inside]).all()
    # exported, the maps are those on the pixel grid, with the bin of each spaxel
    from astropy.io import fits

    from survey_proc.stores import export_maps_fits

    export_maps_fits(maps_path, tmp_path / "bins.fits")
    with fits.open(tmp_path / "bins.fits") as hdul:
        np.testing.assert_array_equal(hdul["BIN_ID"].data, bin_id)
        np.testing.assert_array_equal(hdul["LOG_AGE"].data, pixels.log_age.values)
        assert hdul["FLAG"].data.shape == (16, 16)


def test_bins_none_of_whose_redshifts_the_model_covers_are_refused_with_the_models_that_do(binned, tmp_path):
    """Objects carry their own redshifts: a model is refused before any work when it covers none of them
    (the error names the packaged models of its kind that do), and runs, flagging per spectrum, when it
    covers some."""
    from survey_proc.engine import RunConfig, run

    out, info = binned
    far = tmp_path / "far.bins.zarr"
    shutil.copytree(out, far)
    z = np.full(info.bins, 0.09)  # the default reads rest 4750-8800 A: the mock's 9350 A reach z = 0.062
    zarr.open_group(str(far), mode="r+")["redshift"][:] = z
    with pytest.raises(CubeError, match=r"at z=0.09, but model \S+ needs 4750-8800 A.*muse-7100 \(4750-7100 A"):
        run(RunConfig(cube=str(far), out=str(tmp_path / "m.zarr"), model="default", cluster="none", progress=False))
    z[0] = 0.0  # one object the model covers: it runs, and the others are flagged out_of_range
    zarr.open_group(str(far), mode="r+")["redshift"][:] = z
    summary = run(
        RunConfig(cube=str(far), out=str(tmp_path / "m.zarr"), model="default", cluster="none", progress=False)
    )
    flags = xr.open_zarr(tmp_path / "m.zarr").flag.values
    assert summary.spectra == info.bins and summary.fitted == 1 and flags[0] & Flag.OUT_OF_RANGE == 0
    assert (flags[1:] & Flag.OUT_OF_RANGE != 0).all()


def test_coverage_is_judged_at_every_objects_redshift_exactly():
    """A catalogue of 100,000 redshifts of which three (at z = 0.03) let the default model's range be
    covered is accepted, as those three alone are; the share covered is counted exactly, not rounded."""
    from survey_proc.errors import CoverageError
    from survey_proc.estimators import load_manifest

    spec = load_manifest("default").input
    wave = 4750.0 + 1.25 * np.arange(3681)
    z = np.concatenate([np.linspace(0.1, 0.5, 99_997), [0.03, 0.0301, 0.0302]])
    flux = np.zeros((z.size, 2), np.float32)  # only the wavelength ends and the redshifts matter here
    ds = xr.Dataset({"flux": (("object", "wave"), flux), "redshift": ("object", z)}, coords={"wave": wave[[0, -1]]})
    spec.check_store(ds, 0.0, "catalogue", "default")
    with pytest.raises(CoverageError, match=r"at z=0.1-0.5 \(its objects' redshifts\)"):
        spec.check_store(ds.isel(object=slice(0, 99_997)), 0.0, "catalogue", "default")
    exact = ((spec.wave * 1.0301 >= wave[0]) & (spec.wave * 1.0301 <= wave[-1])).mean()
    assert spec.coverage(wave[0], wave[-1], np.array([0.0301]))[0] == pytest.approx(exact, abs=1e-12)


def test_cli_bin_writes_catalogue_and_figure(mock16, tmp_path, capsys):
    pytest.importorskip("vorbin")
    from survey_proc.cli import main

    out = tmp_path / "b.zarr"
    assert main(["bin", str(mock16), str(out), "--target-snr", "25", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "256 spaxels ->" in text and f"survey-proc run --cube {out}" in text
    assert (tmp_path / "b.bins.png").stat().st_size > 5000
    assert main(["bin", str(mock16), str(out), "--quiet"]) == 2  # exists: refused without --overwrite
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_correlated_spaxels_make_bins_noisier_and_larger(cube_copy, tmp_path):
    """With --covariance-alpha the noise of a bin of N spaxels is (1 + alpha log10 N) times that of
    independent ones: the same target S/N needs larger bins, and each bin's variance carries the factor."""
    import json

    import xarray as xr

    from survey_proc.binning import BinConfig, bin_cube, covariance_factor

    plain = bin_cube(cube_copy, tmp_path / "plain.zarr", BinConfig(target_snr=30.0, min_snr=3.0))
    corr = bin_cube(cube_copy, tmp_path / "corr.zarr", BinConfig(target_snr=30.0, min_snr=3.0, covariance_alpha=1.07))
    assert corr.bins < plain.bins
    cat = xr.open_zarr(tmp_path / "corr.zarr")
    assert json.loads(cat.attrs["binning"])["covariance_alpha"] == 1.07
    assert float(covariance_factor(100, 1.07)) == pytest.approx(3.14)
