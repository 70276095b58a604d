"""SDSS-like spectra catalogues: real FITS ingest, catalogue validation, observed-frame preprocessing,
and the shipped sdss-cnn bundle through the engine on held-out synthetic spectra."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import robust_sigma

from survey_proc.errors import CubeError
from survey_proc.preprocess import prepare
from survey_proc.ssp import air_to_vacuum, sdss_lsf_fwhm, vacuum_to_air
from survey_proc.stores import (
    create_catalogue_store,
    ingest_sdss_spectra,
    open_spectral_store,
    sdss_spectra,
    write_region,
)
from survey_proc.training import (
    CALZETTI_RV,
    INSTRUMENTS,
    TrainsetConfig,
    observe_noisy,
    sdss_observed_input,
    synthesise,
)


@pytest.fixture(scope="module")
def real_files() -> list[Path]:
    return sdss_spectra()


@pytest.fixture(scope="module")
def real_store(real_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdss") / "sdss.zarr"
    ingest_sdss_spectra(real_files, out, chunk=2)
    return out


def _fits_columns(path: Path) -> dict[str, np.ndarray]:
    from astropy.io import fits

    with fits.open(path) as hdul:
        table = hdul["COADD"] if "COADD" in hdul else hdul[1]
        d = table.data
        names = [c.lower() for c in d.columns.names]
        wave = 10.0 ** np.asarray(d["loglam"], np.float64) if "loglam" in names else np.asarray(d["wavelength"])
        ivar = np.asarray(d["ivar"] if "ivar" in names else d["inverse_variance"], np.float64)
        z = float(hdul["SPECOBJ"].data["Z"][0]) if "SPECOBJ" in hdul else float(table.header["Z"])
        wdisp = np.asarray(d["wdisp"], np.float64) if "wdisp" in names else None
        return {
            "wave": wave,
            "flux": np.asarray(d["flux"], np.float64),
            "ivar": ivar,
            "and_mask": np.asarray(d["and_mask"]),
            "z": z,
            "wdisp": wdisp,
        }


def test_ingest_round_trips_the_real_sdss_files(real_files, real_store):
    ds = open_spectral_store(real_store)
    assert ds.flux.dims == ("object", "wave") and ds.sizes["object"] == 3
    assert ds.wave.attrs["medium"] == "vacuum" and ds.wave.attrs["frame"] == "observed"
    wave = ds.wave.values
    for i, path in enumerate(real_files):
        cols = _fits_columns(path)
        i0 = int(np.argmin(np.abs(wave - cols["wave"][0])))
        sl = slice(i0, i0 + cols["wave"].size)
        np.testing.assert_allclose(wave[sl], cols["wave"], rtol=3e-7)  # DR12 loglam is float32
        np.testing.assert_array_equal(ds.flux.values[i, sl], cols["flux"].astype(np.float32))
        good = cols["ivar"] > 0
        np.testing.assert_allclose(ds["var"].values[i, sl][good], 1.0 / cols["ivar"][good], rtol=1e-6)
        expected_mask = ~good | (cols["and_mask"] != 0)
        np.testing.assert_array_equal(ds["mask"].values[i, sl], expected_mask)
        # pixels the spectrum does not cover are masked
        assert ds["mask"].values[i, :i0].all() and ds["mask"].values[i, sl.stop :].all()
        assert ds.redshift.values[i] == pytest.approx(cols["z"], rel=1e-6)
    assert list(ds.object_name.values) == ["0945-52652-0470", "2488-54149-0001", "0522-52024-0396"]
    # the instrumental FWHM: the DR12 file's wdisp where it covers, near the SDSS curve everywhere
    lsf = ds.lsf_fwhm.values
    assert np.all((lsf > 1.8) & (lsf < 3.6))
    np.testing.assert_allclose(lsf, sdss_lsf_fwhm(wave), rtol=0.12)


def test_ingest_refuses_bad_files(tmp_path, real_files):
    from astropy.io import fits

    not_sdss = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(not_sdss)
    with pytest.raises(CubeError, match="no SDSS spectrum table"):
        ingest_sdss_spectra([not_sdss], tmp_path / "a.zarr")
    # a spectrum whose redshift is missing needs --redshift
    with fits.open(real_files[0]) as hdul:
        hdr = hdul[1].header.copy()
        del hdr["Z"]
        no_z = tmp_path / "noz.fits"
        fits.HDUList([hdul[0].copy(), fits.BinTableHDU(hdul[1].data, hdr)]).writeto(no_z)
        # and one resampled off the SDSS log-lambda grid
        data = hdul[1].data.copy()
        data["wavelength"] = np.linspace(data["wavelength"][0], data["wavelength"][-1], len(data))
        off_grid = tmp_path / "offgrid.fits"
        fits.HDUList([hdul[0].copy(), fits.BinTableHDU(data, hdul[1].header)]).writeto(off_grid)
    with pytest.raises(CubeError, match="no redshift in the file"):
        ingest_sdss_spectra([no_z], tmp_path / "b.zarr")
    info = ingest_sdss_spectra([no_z], tmp_path / "c.zarr", redshift=0.0037)
    assert info.redshift == (0.0037, 0.0037)
    with pytest.raises(CubeError, match="not on the SDSS log10 grid"):
        ingest_sdss_spectra([off_grid], tmp_path / "d.zarr")
    with pytest.raises(CubeError, match="no such FITS file"):
        ingest_sdss_spectra([tmp_path / "missing.fits"], tmp_path / "e.zarr")


def test_catalogue_validation_names_each_problem(real_store, tmp_path):
    bad = tmp_path / "bad.zarr"
    shutil.copytree(real_store, bad)
    grp = zarr.open_group(str(bad), mode="r+")
    z = grp["redshift"]
    z[1] = np.nan
    z[2] = 12.0
    with pytest.raises(CubeError) as err:
        open_spectral_store(bad)
    text = str(err.value)
    assert "'redshift' is NaN or infinite for 1 of 3 objects (first: object 1)" in text
    assert "outside the plausible range [-0.01, 10) for 1 objects (first: object 2, z = 12)" in text
    open_spectral_store(bad, require_redshift=False, check_data=False)  # structure alone is fine

    shutil.rmtree(bad / "redshift")
    with pytest.raises(CubeError, match=r"variable 'redshift' \(one per object"):
        open_spectral_store(bad)

    ds = xr.open_zarr(real_store)
    wrong = ds.assign(redshift=(("wave",), np.zeros(ds.sizes["wave"])))
    from survey_proc.stores import validate_spectral_store

    with pytest.raises(CubeError, match=r"'redshift' has dims \('wave',\), expected \('object',\)"):
        validate_spectral_store(wrong, "wrong")


def test_vacuum_air_conversion_matches_sdss_convention():
    # H-alpha: 6564.61 A in vacuum, 6562.80 A in air (SDSS line list); the round trip is exact
    assert vacuum_to_air(np.array([6564.61]))[0] == pytest.approx(6562.80, abs=0.01)
    w = np.linspace(3800, 9200, 50)
    np.testing.assert_allclose(air_to_vacuum(vacuum_to_air(w)), w, atol=1e-6)


@pytest.mark.parametrize("z", [0.02, 0.12, 0.27])
def test_observed_frame_preprocessing_keeps_features_at_their_observed_wavelength(z):
    """An emission line at rest-frame vacuum H-alpha lands at 6564.61 (1+z) on the model grid, the
    flux is normalised to 1 at 4950-5050 A, and nothing is de-redshifted."""
    spec = sdss_observed_input()
    loglam = np.arange(3.5793, 3.9647, 1e-4)  # the SDSS grid
    wave = 10**loglam
    centre = 6564.61 * (1 + z) if 6564.61 * (1 + z) < 8890 else 4862.68 * (1 + z)  # H-beta beyond H-alpha's reach
    flux = 3.0 + 50.0 * np.exp(-0.5 * ((wave - centre) / 2.0) ** 2)
    x = prepare(flux[None], np.full((1, wave.size), 0.01), np.zeros((1, wave.size), bool), wave, np.array([z]), spec).x
    assert x.shape == (1, 3, 5101)
    peak = spec.wave[np.argmax(x[0, 0])]
    assert abs(peak - centre) <= 1.0
    norm = (spec.wave >= 4950) & (spec.wave <= 5050)
    assert np.median(x[0, 0, norm]) == pytest.approx(1.0, abs=1e-3) or abs(centre - 5000) < 60


def test_training_spectra_put_lines_at_observed_vacuum_wavelengths(ssp_lib):
    """Synthesised SDSS spectra (E-MILES and lines in air) sit on the vacuum grid the data use: the
    H-alpha line of a star-forming spectrum peaks at 6564.61 (1+z) vacuum, and labels follow."""
    spec = sdss_observed_input()
    cfg = TrainsetConfig(
        n=8,
        batch=8,
        seed=11,
        instrument="sdss",
        labels=("log_age", "metallicity", "ebv", "sigma"),
        redshift_range=(0.05, 0.2),
        emission_fraction=1.0,
        max_halpha_ew=200.0,
        line_set="optical",
        snr_range=(300, 300),
        av_range=(0.0, 0.0),
        velocity_range_kms=(0, 0),
    )
    data = synthesise(cfg, ssp_lib, spec)
    inst = INSTRUMENTS["sdss"]
    wave = inst.wave[data.wave_index[0] : data.wave_index[0] + data.flux.shape[1]]  # vacuum
    halpha = 6564.61 * (1 + data.redshift[0])
    near = np.abs(wave - halpha) < 8
    cont = np.median(data.flux[:, np.abs(wave - halpha - 40) < 10], axis=1, keepdims=True)
    line = np.clip(data.flux[:, near] - cont, 0, None)
    centroids = (line * wave[near]).sum(axis=1) / line.sum(axis=1)
    # air positions would be 1.9 A bluer; gas velocities scatter by 30 km/s (0.7 A) per spectrum
    assert abs(np.median(centroids) - halpha) < 0.8
    assert np.all(data.labels[:, 2] == 0.0)  # E(B-V) = A_V / 4.05 = 0
    assert CALZETTI_RV == 4.05
    noisy, var, _mask = observe_noisy(data, np.random.default_rng(0), cfg)
    assert noisy.shape == data.flux.shape and np.all(var > 0)


# --- the shipped model --------------------------------------------------------------------------


def _synthetic_catalogue(path: Path, n: int, seed: int, ssp_lib) -> np.ndarray:
    """A catalogue store of n held-out synthetic SDSS spectra (seed never used in training); returns labels."""
    from survey_proc.estimators import load_manifest
    from survey_proc.training import trainset_of

    manifest = load_manifest("sdss-cnn")
    ts = dataclasses.replace(trainset_of(manifest.raw), n=n, seed=seed, batch=16, noiseless_fraction=0.0)
    spec = manifest.input
    data = synthesise(ts, ssp_lib, spec)
    flux, var, mask = observe_noisy(data, np.random.default_rng(seed), ts)
    full = INSTRUMENTS[ts.instrument].wave
    i0 = int(data.wave_index.min())
    assert np.all(data.wave_index == i0)  # observed frame: one grid for every redshift
    wave = full[i0 : i0 + flux.shape[1]]
    create_catalogue_store(
        path,
        n=n,
        wave=wave,
        flux_units="1",
        attrs={"source": "test"},
        chunk=n // 2,
        medium="vacuum",
        object_vars={"redshift": (data.redshift, {"units": "1"})},
    )
    write_region(
        path, {"object": slice(0, n)}, {"flux": flux, "var": var, "mask": mask, "lsf_fwhm": sdss_lsf_fwhm(wave)}
    )
    return data.labels


def test_sdss_bundle_runs_through_the_engine_and_is_accurate(tmp_path, ssp_lib):
    from survey_proc.engine import RunConfig, run

    cat = tmp_path / "cat.zarr"
    labels = _synthetic_catalogue(cat, 96, 31337, ssp_lib)
    out = tmp_path / "maps.zarr"
    summary = run(RunConfig(cube=str(cat), out=str(out), model="sdss-cnn", workers=2, progress=False))
    assert summary.verified and summary.spectra == 96 and summary.regions == 2
    maps = xr.open_zarr(out)
    assert maps.log_age.dims == ("object",) and maps.ebv.attrs["units"] == "mag"
    good = (maps.flag.values & 0b110011) == 0  # fitted
    assert good.mean() > 0.95
    bounds = {"log_age": (0, 0.35), "metallicity": (1, 0.4), "ebv": (2, 0.06), "sigma": (3, 60.0)}
    for name, (col, bound) in bounds.items():
        d = maps[name].values[good] - labels[good, col]
        assert robust_sigma(d) < bound, f"{name}: robust scatter {robust_sigma(d):.3f} >= {bound}"
        assert abs(np.median(d)) < bound / 2, f"{name}: bias {np.median(d):.3f}"


def test_sdss_bundle_on_the_real_spectra(real_store, tmp_path):
    from survey_proc.engine import RunConfig, run

    out = tmp_path / "real.maps.zarr"
    summary = run(RunConfig(cube=str(real_store), out=str(out), model="sdss-cnn", cluster="none", progress=False))
    maps = xr.open_zarr(out)
    assert summary.fitted == 3
    for name in ("log_age", "metallicity", "ebv", "sigma"):
        assert np.isfinite(maps[name].values).all() and (maps[f"{name}_err"].values > 0).all()
    # every object keeps the position of its spectrum (issue 19: the maps' ra/dec were NaN)
    cube = xr.open_zarr(real_store)
    assert np.isfinite(maps.ra.values).all() and np.isfinite(maps.dec.values).all()
    np.testing.assert_array_equal(maps.ra.values, cube.ra.values)
    np.testing.assert_array_equal(maps.dec.values, cube.dec.values)
    # exported, a catalogue's maps are one table with a row per object and its position
    from astropy.io import fits

    from survey_proc.analysis import plot_maps
    from survey_proc.stores import export_maps_fits

    info = export_maps_fits(out, tmp_path / "real.maps.fits")
    assert info.extensions == ["MAPS"] and not info.wcs
    with fits.open(tmp_path / "real.maps.fits") as hdul:
        table = hdul["MAPS"].data
        np.testing.assert_array_equal(table["RA"], maps.ra.values)
        np.testing.assert_array_equal(table["LOG_AGE"], maps.log_age.values)
        assert hdul["MAPS"].columns["SIGMA"].unit == "km/s" and hdul[0].header["MODELID"] == maps.attrs["model_id"]
    assert plot_maps(out).stat().st_size > 10_000  # objects drawn on the sky


def test_engine_reads_wavelengths_in_the_models_medium(real_store):
    """SDSS data are vacuum; a model declaring air (E-MILES, pPXF) gets air wavelengths."""
    from survey_proc.engine import read_feature_axis
    from survey_proc.estimators import resolve_model

    vac = xr.open_zarr(real_store).wave.values
    same, _ = read_feature_axis(str(real_store), str(resolve_model("sdss-cnn")))  # a vacuum model
    air, lsf = read_feature_axis(str(real_store), str(resolve_model("ppxf")))  # an air one
    np.testing.assert_array_equal(same, vac)
    np.testing.assert_allclose(air, vacuum_to_air(vac))
    assert np.all((vac - air > 1.0) & (vac - air < 2.6)) and lsf.shape == vac.shape


def test_window_normalisation_is_declared_and_checked():
    spec = sdss_observed_input()
    manifest = spec.to_manifest()
    assert manifest["normalise"] == "window" and manifest["normalise_window"] == [4950.0, 5050.0]
    from survey_proc.preprocess import InputSpec

    assert InputSpec.from_manifest(manifest) == spec
    wave = np.arange(3700.0, 9000.0, 1.0)
    flux = np.ones((1, wave.size))
    with pytest.raises(ValueError, match="needs normalise_window"):
        prepare(flux, flux, flux == 0, wave, 0.1, dataclasses.replace(spec, normalise_window=None))
    with pytest.raises(ValueError, match=r"unknown normalisation 'peak' \(known: median, window\)"):
        prepare(flux, flux, flux == 0, wave, 0.1, dataclasses.replace(spec, normalise="peak"))
    # a spectrum whose 5000 A window is all masked is not fitted (no_data), not divided by NaN
    mask = (wave > 4940) & (wave < 5060)
    prep = prepare(flux, flux, mask[None], wave, 0.1, spec)
    assert prep.flags[0] & 1 and np.isfinite(prep.x).all()


def test_photometry_of_the_real_catalogue_keeps_each_redshift_for_the_narrowband_model(real_store, tmp_path):
    """``survey-proc photometry`` of a spectra catalogue carries its per-object redshift, so a model that
    reads the redshift runs on the photometry without ``--redshift`` and sees each object's own."""
    from survey_proc.cli import main
    from survey_proc.stores import open_photometry_store

    phot, maps = tmp_path / "sdss-jpas36.zarr", tmp_path / "maps.zarr"
    assert main(["photometry", str(real_store), str(phot), "--filters", "jpas36", "--cluster", "none", "--quiet"]) == 0
    ds = open_photometry_store(phot, require_redshift=True)
    assert "redshift" not in ds.attrs  # the catalogue has no one redshift ...
    np.testing.assert_array_equal(ds["redshift"].values, xr.open_zarr(real_store)["redshift"].values)  # ... but each
    argv = ["run", "--cube", str(phot), "--out", str(maps), "--model", "narrowband", "--cluster", "none", "--quiet"]
    assert main(argv) == 0
    out = xr.open_zarr(maps)
    assert out.sizes["object"] == ds.sizes["object"] and np.isfinite(out.log_age.values).all()
    n = ds.sizes["object"]
    bad = xr.open_zarr(phot).drop_vars("redshift")
    bad["redshift"] = ("object", np.full(n, np.nan))
    with pytest.raises(CubeError, match=rf"not a valid photometric store:\n.*'redshift' is NaN or infinite for {n} of"):
        open_photometry_store(_rewrite(bad, tmp_path / "bad.zarr"), require_redshift=True)


def _rewrite(ds: xr.Dataset, path: Path) -> Path:
    for v in ds.variables.values():
        v.encoding.clear()
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return path
