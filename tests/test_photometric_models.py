"""The packaged photometric bundles through `survey-proc run`: accuracy on small mocks, seamless tiling,
and the engine's input-kind checks (all declared by the manifests, no kind branch in the engine)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import robust_sigma

from survey_proc.engine import RunConfig, halo_window, run
from survey_proc.errors import CubeError, ModelError
from survey_proc.ssp import load_filters
from survey_proc.stores import Region
from survey_proc.synth import GalaxyParams, MockConfig, write_mock_photometry


@pytest.fixture(scope="module")
def jpas_mock(tmp_path_factory, ssp_lib):
    path = tmp_path_factory.mktemp("jpas") / "p.zarr"
    write_mock_photometry(
        path, MockConfig(nx=24, ny=24, seed=11, snr=8.0, chunk=12, redshift=0.012), load_filters("jpas36"), ssp_lib
    )
    return path


def _ugriz_mock(path, ssp_lib, chunk):
    cfg = MockConfig(
        nx=48,
        ny=48,
        seed=5,
        snr=3.0,
        chunk=chunk,
        redshift=0.015,
        pixel_scale_arcsec=0.396,
        psf_fwhm_pixels=2.5,
        peak_flux=1000.0,
        galaxy=GalaxyParams(disc_log_age=9.7),
    )
    write_mock_photometry(path, cfg, load_filters("sdss"), ssp_lib)
    return path


@pytest.fixture(scope="module")
def ugriz_runs(tmp_path_factory, ssp_lib):
    """The same galaxy stored in 16-pixel chunks (9 tiles + halo) and in one 48-pixel chunk, both run."""
    root = tmp_path_factory.mktemp("ugriz")
    out = {}
    for chunk in (16, 48):
        cube = _ugriz_mock(root / f"u{chunk}.zarr", ssp_lib, chunk)
        summary = run(
            RunConfig(
                cube=str(cube), out=str(root / f"u{chunk}.maps.zarr"), model="ugriz-maps", workers=2, progress=False
            )
        )
        out[chunk] = (summary, xr.open_zarr(root / f"u{chunk}.maps.zarr"), xr.open_zarr(cube, group="truth"))
    return out


def test_narrowband_bundle_through_the_engine(jpas_mock, tmp_path):
    summary = run(
        RunConfig(cube=str(jpas_mock), out=str(tmp_path / "m.zarr"), model="narrowband", workers=2, progress=False)
    )
    assert summary.verified and summary.spectra == 576 and summary.regions == 4 and summary.workers == 2
    maps, truth = xr.open_zarr(tmp_path / "m.zarr"), xr.open_zarr(jpas_mock, group="truth")
    assert maps.attrs["model_name"] == "narrowband" and maps.log_age.dims == ("y", "x")
    good = maps.flag.values == 0
    assert good.mean() > 0.7
    for name, bound in {"log_age": 0.25, "metallicity": 0.25}.items():
        d = (maps[name].values - truth[name].values)[good]
        assert robust_sigma(d) < bound and abs(np.median(d)) < bound, name
        assert np.all(maps[f"{name}_err"].values[good] > 0)


def test_image_bundle_through_the_engine(ugriz_runs):
    summary, maps, truth = ugriz_runs[16]
    assert summary.verified and summary.regions == 9 and summary.spectra == 48 * 48
    good = maps.flag.values == 0
    assert good.mean() > 0.5
    # the shipped bundle: biases -0.01 / -0.03 / -0.035, scatter 0.046 / 0.072 / 0.061 dex (an older one: [M/H] -0.25)
    bounds = {"log_mass_surface_density": 0.1, "log_age": 0.15, "metallicity": 0.15}
    for name, bound in bounds.items():
        d = (maps[name].values - truth[name].values)[good]
        assert robust_sigma(d) < bound and abs(np.median(d)) < bound, name
    # the SFR map is the rate where stars form; the probability beside it says where (AUC 0.74 at S/N 3)
    from survey_proc.synth import star_forming
    from survey_proc.training._metrics import roc_auc

    forming = star_forming(truth["log_sfr_surface_density"].values)[good]
    p = maps["star_forming_probability"].values[good]
    assert 0.2 < forming.mean() < 0.8 and roc_auc(p, forming) > 0.65, roc_auc(p, forming)


def test_tiled_run_equals_untiled_run(ugriz_runs):
    """9 tiles of 16 px read with their halo give the same maps as one 48 px tile, seams included."""
    tiled, whole = ugriz_runs[16][1], ugriz_runs[48][1]
    for name in (
        "log_mass_surface_density",
        "log_age",
        "metallicity",
        "log_age_err",
        "ood_score",
        "star_forming_probability",
    ):
        np.testing.assert_allclose(tiled[name].values, whole[name].values, atol=2e-4, rtol=0, err_msg=name)
    np.testing.assert_array_equal(tiled.flag.values, whole.flag.values)


def test_halo_window_grows_and_clips():
    region = Region((1, 0), (("y", 16, 32), ("x", 0, 16)))
    read, core = halo_window(region, 24, {"y": 40, "x": 48})
    assert read == (slice(0, 40), slice(0, 40)) and core == (slice(16, 32), slice(0, 16))
    assert halo_window(region, 0, {"y": 40, "x": 48}) == ((slice(16, 32), slice(0, 16)), (slice(0, 16), slice(0, 16)))


def test_engine_refuses_stores_the_manifest_does_not_declare(jpas_mock, mock16, tmp_path, ssp_lib):
    with pytest.raises(CubeError, match="photometric store"):  # a cube given to the per-pixel SED model
        run(
            RunConfig(
                cube=str(mock16), out=str(tmp_path / "a.zarr"), model="narrowband", cluster="none", progress=False
            )
        )
    with pytest.raises(CubeError, match=r"lacks band\(s\) u, g, r, i, z"):  # J-PAS bands given to the ugriz model
        run(
            RunConfig(
                cube=str(jpas_mock), out=str(tmp_path / "b.zarr"), model="ugriz-maps", cluster="none", progress=False
            )
        )
    img = _ugriz_mock(tmp_path / "u.zarr", ssp_lib, 48)
    zarr.open_group(str(img), mode="r+").attrs["pixel_scale_arcsec"] = 0.2
    with pytest.raises(CubeError, match=r"0\.2 arcsec pixels but model ugriz-maps was trained on 0\.396"):
        run(RunConfig(cube=str(img), out=str(tmp_path / "c.zarr"), model="ugriz-maps", cluster="none", progress=False))


def test_unknown_input_kind_is_a_model_error(jpas_mock, tmp_path):
    from survey_proc.estimators import resolve_model

    bundle = tmp_path / "bundle"
    shutil.copytree(resolve_model("narrowband").parent, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["input"]["kind"] = "hologram"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="unknown input kind 'hologram'"):
        run(
            RunConfig(
                cube=str(jpas_mock), out=str(tmp_path / "m.zarr"), model=str(bundle), cluster="none", progress=False
            )
        )


def test_object_catalogue_of_band_fluxes_gives_the_same_estimates(jpas_mock, tmp_path):
    """An (object, band) store of the same fluxes: the per-pixel model gives the same numbers per object."""
    img = xr.open_zarr(jpas_mock)
    n = img.sizes["y"] * img.sizes["x"]
    cat = xr.Dataset(
        {v: (("object", "band"), img[v].values.reshape(n, -1), img[v].attrs) for v in ("flux", "var", "mask")},
        coords={
            "band": img.band.values.astype(object),
            "pivot_wave": ("band", img.pivot_wave.values),
            "filter_wave": img.filter_wave.values,
        },
        attrs=dict(img.attrs),
    )
    cat["filter_response"] = img["filter_response"].load()
    cat["redshift"] = (("object",), np.full(n, img.attrs["redshift"]))
    cat.to_zarr(
        tmp_path / "cat.zarr",
        zarr_format=3,
        consolidated=False,
        encoding={v: {"chunks": (100, img.sizes["band"])} for v in ("flux", "var", "mask")},
    )
    run(
        RunConfig(
            cube=str(tmp_path / "cat.zarr"),
            out=str(tmp_path / "cat.maps.zarr"),
            model="narrowband",
            cluster="none",
            progress=False,
        )
    )
    run(
        RunConfig(
            cube=str(jpas_mock), out=str(tmp_path / "img.maps.zarr"), model="narrowband", cluster="none", progress=False
        )
    )
    a, b = xr.open_zarr(tmp_path / "cat.maps.zarr"), xr.open_zarr(tmp_path / "img.maps.zarr")
    assert a.log_age.dims == ("object",) and a.sizes["object"] == n
    np.testing.assert_allclose(a.log_age.values, b.log_age.values.ravel(), atol=1e-5)
    np.testing.assert_array_equal(a.flag.values, b.flag.values.ravel())


@pytest.mark.parametrize("kind", ["sed", "image"])
def test_photometric_trainers_train_export_and_run_through_the_engine(kind, jpas_mock, ssp_lib, tmp_path):
    """`survey-proc train` for both photometric kinds at toy size: galaxies drawn, trained, calibrated,
    exported as TorchScript, scored on test galaxies, and the bundle runs through the engine unchanged."""
    from survey_proc.training import PhotTrainConfig, train_photometric

    if kind == "sed":
        cfg = PhotTrainConfig.from_dict(
            {
                "kind": "sed",
                "name": "toy-narrowband",
                "labels": ["log_age", "metallicity"],
                "galaxies": {"n_galaxies": 20, "size": 12, "filters": "jpas36", "snr_range": [5.0, 20.0], "seed": 3},
                "val_fraction": 0.2,
                "test_fraction": 0.2,
                "epochs": 2,
                "batch_size": 256,
                "threads": 1,
            }
        )
        cube = jpas_mock
    else:
        cfg = PhotTrainConfig.from_dict(
            {
                "kind": "image",
                "name": "toy-ugriz",
                "labels": ["log_mass_surface_density", "log_sfr_surface_density", "log_age", "metallicity"],
                "galaxies": {
                    "n_galaxies": 12,
                    "size": 32,
                    "filters": "sdss",
                    "snr_range": [1.0, 6.0],
                    "pixel_scale_arcsec": 0.396,
                    "psf_fwhm_range": [2.0, 3.0],
                    "seed": 3,
                },
                "arch_kwargs": {"widths": [4, 8, 8]},
                "star_forming": True,  # the SFR where stars form, and star_forming_probability beside it
                "val_fraction": 0.2,
                "test_fraction": 0.2,
                "epochs": 2,
                "batch_size": 4,
                "threads": 1,
            }
        )
        cube = _ugriz_mock(tmp_path / "u.zarr", ssp_lib, 16)
    bundle = train_photometric(cfg, tmp_path / "run")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["input"]["kind"] == kind
    assert manifest["metrics"]["held_out"] and (tmp_path / "run" / "loss_curve.png").exists()
    summary = run(RunConfig(cube=str(cube), out=str(tmp_path / "m.zarr"), model=str(bundle), workers=2, progress=False))
    assert summary.verified
    maps = xr.open_zarr(tmp_path / "m.zarr")
    good = maps.flag.values == 0
    assert good.mean() > 0.3
    for name in cfg.labels:
        assert np.isfinite(maps[name].values[good]).all() and (maps[f"{name}_err"].values[good] > 0).all()
    if kind == "image":  # a probability map, no error, named for what it means
        p = maps["star_forming_probability"]
        assert "star_forming_probability_err" not in maps and "probability" in p.attrs["long_name"]
        assert ((p.values[good] >= 0) & (p.values[good] <= 1)).all() and p.values[good].std() > 0
        assert "if the pixel forms stars" in maps["log_sfr_surface_density"].attrs["long_name"]
