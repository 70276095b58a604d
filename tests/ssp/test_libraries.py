"""SSP libraries other than E-MILES: conversion from the sdss-mangadap wheel's formats, the real
libraries, names, and the rule that evaluation libraries never feed training, calibration or tuning."""

from __future__ import annotations

import dataclasses
import gzip
import io
import zipfile

import numpy as np
import pytest
from astropy.io import fits

from survey_proc import ssp
from survey_proc.errors import DataUnavailableError, OptionError

TEMPLATES = "mangadap/data/spectral_templates/"


def _fits_bytes(flux: np.ndarray, crval: float, cdelt: float, log10: bool = False, sres=None) -> bytes:
    hdu = fits.PrimaryHDU(np.asarray(flux, np.float64))
    hdu.header.update({"CRVAL1": crval, "CDELT1": cdelt, "CRPIX1": 1})
    if log10:
        hdu.header["CTYPE1"] = "WAVE-LOG"
    extra = [fits.ImageHDU(np.asarray(sres, np.float64), name="SRES")] if sres is not None else []
    hdus = fits.HDUList([hdu, *extra])
    buf = io.BytesIO()
    hdus.writeto(buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def reference() -> ssp.SSPLibrary:
    """A small stand-in for E-MILES (the masses and light per unit mass the conversion borrows)."""
    log_age, metal = np.array([8.0, 9.0, 10.0]), np.array([-0.5, 0.0, 0.2])
    wave = np.arange(3000.0, 10000.0, 1.0)
    light = np.array([[1e-3, 1e-4, 1e-5]] * 3) * np.array([[1.0], [0.9], [0.8]])
    flux = np.broadcast_to(light[..., None], (3, 3, wave.size)).astype(np.float32)
    mass = np.array([[0.9, 0.8, 0.7]] * 3)
    return ssp.SSPLibrary(wave, np.ascontiguousarray(flux), log_age, metal, mass)


def _m11_member(age: str, z: str) -> str:
    return f"{TEMPLATES}m11_miles/M11_MILES_res2.54_imf_ss_age_{age}_z_{z}.fits"


@pytest.fixture(scope="module")
def fake_wheel(tmp_path_factory) -> str:
    """A zip with the wheel's layout: an M11-MILES set with an age at one metallicity only and a
    non-positive edge, and MaStar-like normalised log-lambda vacuum spectra with an SRES extension."""
    path = tmp_path_factory.mktemp("wheel") / "fake.whl"
    n = 4000
    with zipfile.ZipFile(path, "w") as zf:
        for age in ("1.0000000", "10.000000"):
            for z in ("0.01", "0.02"):
                flux = np.full(n, 3.828e29 if age.startswith("1.") else 3.828e28)
                flux[:10] = -1.0  # outside the usable range (3550-7400 A)
                zf.writestr(_m11_member(age, z), _fits_bytes(flux, 3500.0, 0.9))
        zf.writestr(_m11_member("0.0065000000", "0.02"), _fits_bytes(np.ones(n), 3500.0, 0.9))
        zf.writestr(f"{TEMPLATES}m11_miles/README", "not a spectrum")
        loglam = 3.56 + 1e-4 * np.arange(4500)
        for age in ("00.003", "01.000", "09.000"):
            for z in ("-0.33", "+0.00"):
                flux = np.ones(loglam.size)
                flux[np.argmin(np.abs(10**loglam - 6564.6))] = 0.5  # H-alpha at its vacuum wavelength
                data = _fits_bytes(flux, 3.56, 1e-4, log10=True, sres=np.full(loglam.size, 2000.0))
                zf.writestr(f"{TEMPLATES}mastar_ssp_v1.0/MaStar-SSP-A{age}-Z{z}.fits.gz", gzip.compress(data))
    return str(path)


def test_m11_files_become_a_full_grid_in_lsun_per_msun(fake_wheel, reference):
    lib = ssp.convert_wheel_library(fake_wheel, ssp.WHEEL_LIBRARIES["m11-miles"], (2500.0, 10500.0), reference)
    np.testing.assert_allclose(lib.metal, [np.log10(0.5), 0.0], atol=1e-4)  # Z = 0.01, 0.02
    np.testing.assert_allclose(10**lib.log_age / 1e9, [1.0, 10.0])
    assert lib.provenance["left_out"] == ["[M/H]=+0.00 age=0.0065 Gyr"]  # at one metallicity only
    assert lib.wave[0] >= 3550.0 and lib.wave[-1] <= 7400.0 and lib.step == pytest.approx(0.9)
    np.testing.assert_allclose(lib.flux[:, 0], 1e-4, rtol=1e-5)  # erg/s/A per M_sun -> L_sun/A per M_sun
    assert lib.fwhm == 2.54 and lib.name == "m11-miles" and lib.flux.dtype == np.float32
    # masses from the reference's grid: bilinear in [M/H] and log age, clipped at its edges
    np.testing.assert_allclose(lib.mass, [[0.8, 0.7], [0.8, 0.7]])
    assert "Salpeter" in lib.provenance["mass"] and "approximation" not in lib.provenance["mass"]


def test_mastar_is_rescaled_moved_to_air_and_keeps_its_resolution(fake_wheel, reference):
    spec = ssp.WHEEL_LIBRARIES["mastar"]
    lib = ssp.convert_wheel_library(fake_wheel, spec, (2500.0, 10500.0), reference)
    np.testing.assert_allclose(10**lib.log_age / 1e9, [1.0, 9.0], rtol=1e-6)  # 3 Myr is under min_age_gyr
    assert lib.step == pytest.approx(0.5) and np.all(np.diff(lib.wave) > 0)
    # normalised spectra get the reference's light per unit mass at their age and [M/H]
    light = lib.light_in_window()
    expected = 10 ** np.interp(np.log10(9e9), reference.log_age, np.log10([1e-3, 1e-4, 1e-5]))
    assert light[1, 1] == pytest.approx(0.9 * expected, rel=1e-4)  # [M/H] = 0: the reference's 0.9 row
    # the vacuum line lands at its air wavelength; the FWHM is lambda / R
    assert lib.wave[np.argmin(lib.flux[1, 0])] == pytest.approx(6562.8, abs=0.6)
    assert np.ndim(lib.fwhm) == 1 and lib.fwhm.shape == lib.wave.shape
    np.testing.assert_allclose(lib.fwhm, lib.wave / 2000.0, rtol=1e-3)
    cropped = lib.crop(5000.0, 6000.0)
    assert cropped.fwhm.shape == cropped.wave.shape and cropped.name == "mastar"


def test_a_library_with_bad_flux_or_no_files_is_refused(tmp_path, reference):
    path = tmp_path / "bad.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for age in ("1.0000000", "10.000000"):
            for z in ("0.01", "0.02"):
                flux = np.ones(4000)
                flux[2000] = np.nan
                zf.writestr(_m11_member(age, z), _fits_bytes(flux, 3500.0, 0.9))
    with pytest.raises(DataUnavailableError, match="non-finite"):
        ssp.convert_wheel_library(path, ssp.WHEEL_LIBRARIES["m11-miles"], (2500.0, 10500.0), reference)
    with pytest.raises(DataUnavailableError, match="no BC03"):
        ssp.convert_wheel_library(path, ssp.WHEEL_LIBRARIES["bc03"], (2500.0, 10500.0), reference)


def test_roles_split_calibration_from_evaluation():
    assert ssp.library_names()[0] == "emiles" and set(ssp.library_names()) == set(ssp.SSP_LIBRARIES)
    assert set(ssp.library_names(ssp.EVALUATION)) == {"miuscat", "bc03"}
    assert set(ssp.library_names(ssp.CALIBRATION)) == {
        "emiles",
        "m11-miles",
        "m11-stelib",
        "m11-elodie",
        "m11-marcs",
        "mastar",
        "bpass",
    }
    assert set(ssp.WHEEL_LIBRARIES) == set(ssp.SSP_LIBRARIES) - {"emiles"}


@pytest.mark.parametrize("use", ["training", "calibration", "tuning"])
def test_evaluation_libraries_are_refused_for_training_calibration_and_tuning(ssp_lib, use, monkeypatch):
    bc03 = dataclasses.replace(ssp_lib, name="bc03", role="evaluation")
    with pytest.raises(ssp.LibraryRoleError, match=r"'bc03' is reserved for independent evaluation.*" + use):
        ssp.require_use(bc03, use)
    # a copy relabelled as a calibration library does not get through: the registry knows its name
    with pytest.raises(ssp.LibraryRoleError):
        ssp.require_use(dataclasses.replace(bc03, role="calibration"), use)
    assert ssp.require_use(bc03, "evaluation") is bc03
    assert ssp.require_use(ssp_lib, use) is ssp_lib

    # refused by name before anything is fetched or converted
    def no_fetch(name):
        raise AssertionError(f"{name} was loaded")

    monkeypatch.setattr("survey_proc.ssp._registry.load_wheel_library", no_fetch)
    with pytest.raises(ssp.LibraryRoleError, match="miuscat"):
        ssp.load_ssp_library("miuscat", use=use)


def test_training_and_calibration_entry_points_refuse_an_evaluation_library(ssp_lib, tmp_path):
    from survey_proc.training import GalaxySetConfig, TrainsetConfig, input_preset, write_trainset
    from survey_proc.training._calibration import fit_edge_tables
    from survey_proc.training._galaxies import synthesise_galaxies

    miuscat = dataclasses.replace(ssp_lib, name="miuscat", role="evaluation")
    spec = input_preset("muse-rest-4750-8800")
    with pytest.raises(ssp.LibraryRoleError, match="training"):
        write_trainset(TrainsetConfig(n=10, batch=10), miuscat, spec, tmp_path / "set.zarr")
    assert not (tmp_path / "set.zarr").exists()
    with pytest.raises(ssp.LibraryRoleError, match="calibration"):
        fit_edge_tables(None, TrainsetConfig(), miuscat, spec, n_calib=10, seed=0, min_snr=5.0)
    with pytest.raises(ssp.LibraryRoleError, match="training"):
        synthesise_galaxies(GalaxySetConfig(n_galaxies=1), miuscat, ("log_age",))


def test_names_and_paths(tmp_path):
    with pytest.raises(OptionError, match="unknown SSP library 'nope'; known: emiles, m11-miles"):
        ssp.load_ssp_library("nope")
    with pytest.raises(OptionError, match="E-MILES files by hand"):
        ssp.load_ssp_library("bpass", ssp_dir=tmp_path)
    with pytest.raises(DataUnavailableError, match="expected 150"):  # a folder, as before libraries had names
        ssp.load_ssp_library(str(tmp_path))


# --- the real libraries of the pinned wheel (fetched once per machine) ------------------------------


@pytest.fixture(scope="session")
def wheel_libraries() -> dict[str, ssp.SSPLibrary]:
    try:
        return {name: ssp.load_ssp_library(name) for name in ssp.WHEEL_LIBRARIES}
    except DataUnavailableError as exc:  # no registry and no cached wheel
        pytest.skip(str(exc))


GRIDS = {  # (nmetal, nage, rest air range that must be covered, fwhm at 5500 A)
    "m11-miles": (3, 25, (3560, 7390), 2.54),
    "m11-stelib": (3, 22, (3210, 7890), 3.40),
    "m11-elodie": (3, 25, (3910, 6790), 0.55),
    "m11-marcs": (2, 9, (3010, 10400), 2.73),
    "mastar": (6, 6, (3630, 10340), 2.98),
    "bpass": (3, 24, (3610, 10390), 1.0),
    "miuscat": (4, 50, (3490, 9420), 2.51),
    "bc03": (4, 10, (3330, 9290), 2.30),
}


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_real_library(wheel_libraries, ssp_lib, name):
    lib = wheel_libraries[name]
    nmetal, nage, (lo, hi), fwhm = GRIDS[name]
    assert lib.flux.shape[:2] == (nmetal, nage) and lib.mass.shape == (nmetal, nage)
    assert lib.wave[0] <= lo and lib.wave[-1] >= hi
    assert np.all(np.diff(lib.wave) > 0) and np.allclose(np.diff(lib.wave), lib.step, atol=1e-6)
    assert np.all(np.isfinite(lib.flux)) and np.all(lib.flux > 0)
    assert np.interp(5500.0, lib.wave, np.broadcast_to(lib.fwhm, lib.wave.shape)) == pytest.approx(fwhm, rel=0.05)
    assert np.all((lib.mass > 0.6) & (lib.mass < 0.9))
    assert lib.name == name and lib.role == ssp.SSP_LIBRARIES[name].role
    assert "sdss-mangadap==4.5.0" in lib.provenance["source"] and len(lib.provenance["sha256"]) == 64
    # light per unit mass within a factor 2 of E-MILES' for old solar populations (same units)
    j, i = np.argmin(np.abs(lib.log_age - 10.0)), np.argmin(np.abs(lib.metal))
    je, ie = np.argmin(np.abs(ssp_lib.log_age - lib.log_age[j])), np.argmin(np.abs(ssp_lib.metal - lib.metal[i]))
    ratio = lib.light_in_window()[i, j] / ssp_lib.light_in_window()[ie, je]
    assert 0.5 < ratio < 2.0, ratio
