"""``survey-proc ingest`` of the FITS data models besides MUSE: MaNGA LOGCUBE (made from real MaNGA
spectra), CALIFA, PHANGS-MUSE without DQ, and a generic cube; files built with astropy (fits_models)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from conftest import crop_minicube
from fits_models import NX, NY, SIGMA_TO_FWHM, califa_cube, generic_cube, manga_logcube, real_spectra, sky_of

from survey_proc.cli import main
from survey_proc.errors import CubeError
from survey_proc.stores import MANGA_BAD_BITS, SPAXEL_LSF, IngestOptions, ingest_fits, open_cube


@pytest.fixture(scope="module")
def spectra():
    return real_spectra()


@pytest.fixture(scope="module")
def manga(tmp_path_factory, spectra):
    return manga_logcube(tmp_path_factory.mktemp("manga") / "manga-0000-0000-LOGCUBE.fits", spectra)


def _cube(hdu) -> np.ndarray:
    """A FITS (wave, y, x) image as the store's (y, x, wave)."""
    return np.transpose(np.asarray(hdu.data), (1, 2, 0))


def test_manga_logcube_of_real_spectra_round_trips(manga, tmp_path):
    info = ingest_fits(manga, tmp_path / "m.zarr", redshift=0.03)
    assert info.format == "MaNGA LOGCUBE" and info.extensions == "FLUX, IVAR, MASK, WAVE, LSFPOST" and info.sky
    ds = open_cube(tmp_path / "m.zarr")
    with fits.open(manga) as hdul:
        flux, ivar, bits = _cube(hdul["FLUX"]), _cube(hdul["IVAR"]), _cube(hdul["MASK"])
        np.testing.assert_array_equal(ds.flux.values, flux)
        with np.errstate(divide="ignore"):
            np.testing.assert_array_equal(ds["var"].values, np.where(ivar > 0, np.float32(1) / ivar, np.nan))
        np.testing.assert_array_equal(ds.mask.values, ((bits & MANGA_BAD_BITS) != 0) | ~(ivar > 0))
        np.testing.assert_array_equal(ds.wave.values, hdul["WAVE"].data)
        sigma, lsf_bad = _cube(hdul["LSFPOST"]).astype(float), ((bits & MANGA_BAD_BITS) != 0)
    assert ds.wave.attrs["medium"] == "vacuum" and ds.flux.attrs["units"] == "1E-17 erg/s/cm^2/Ang/spaxel"
    # the engine reads one resolution per wavelength: the median over the spaxels with data
    fwhm = np.where(lsf_bad | ~(sigma > 0), np.nan, sigma * SIGMA_TO_FWHM).reshape(-1, sigma.shape[-1])
    covered = np.isfinite(fwhm).any(axis=0)
    np.testing.assert_allclose(ds.lsf_fwhm.values[covered], np.nanmedian(fwhm[:, covered], axis=0), rtol=1e-6)
    assert 0 < ds.attrs["lsf_spread_p95"] <= ds.attrs["lsf_spread_max"] and "95th percentile" in ds.attrs["lsf"]
    ra, dec = sky_of(manga, "FLUX")
    np.testing.assert_array_equal(ds.ra.values, ra)
    np.testing.assert_array_equal(ds.dec.values, dec)
    assert "RA---TAN" in ds.attrs["wcs_header"]
    assert ds.attrs["pixel_scale_arcsec"] == pytest.approx(0.5, abs=1e-4)  # MaNGA's 0.5" spaxels, from the WCS
    assert ds.attrs["ebv_mw"] == 0.0235  # the DRP's EBVGAL: survey-proc run undoes it


def test_manga_per_spaxel_resolution_is_kept_on_request(manga, tmp_path):
    ingest_fits(manga, tmp_path / "m.zarr", redshift=0.03, options=IngestOptions(lsf_per_spaxel=True))
    ds = open_cube(tmp_path / "m.zarr")
    with fits.open(manga) as hdul:
        sigma = _cube(hdul["LSFPOST"]).astype(np.float64)
    kept = ds[SPAXEL_LSF].values
    assert ds[SPAXEL_LSF].dims == ("y", "x", "wave") and np.isfinite(kept).all()
    good = sigma > 0
    np.testing.assert_allclose(kept[good], (sigma * SIGMA_TO_FWHM)[good].astype(np.float32))


def test_manga_without_a_per_spaxel_lsf_uses_specres(manga, tmp_path):
    older = tmp_path / "older-LOGCUBE.fits"
    with fits.open(manga) as hdul:
        fits.HDUList([h.copy() for h in hdul if h.name != "LSFPOST"]).writeto(older)
        wave, specres = hdul["WAVE"].data, hdul["SPECRES"].data
    info = ingest_fits(older, tmp_path / "m.zarr", redshift=0.03)
    assert "SPECRES" in info.extensions and "R = lambda / FWHM" in info.lsf
    np.testing.assert_allclose(open_cube(tmp_path / "m.zarr").lsf_fwhm.values, wave / specres)


@pytest.mark.parametrize(("name", "fwhm"), [("TEST.V500.rscube.fits", 6.0), ("TEST.V1200.rscube.fits", 2.3)])
def test_califa_cube(spectra, tmp_path, name, fwhm):
    path = califa_cube(tmp_path / name, spectra)
    info = ingest_fits(path, tmp_path / "c.zarr", redshift=0.03)
    assert info.format == f"CALIFA {name.split('.')[1]}" and info.extensions == "PRIMARY, ERROR, BADPIX"
    ds = open_cube(tmp_path / "c.zarr")
    with fits.open(path) as hdul:
        data, error, badpix = _cube(hdul[0]), _cube(hdul["ERROR"]), _cube(hdul["BADPIX"])
        hdr = hdul[0].header
    np.testing.assert_array_equal(ds.flux.values, data)
    np.testing.assert_array_equal(ds["var"].values, np.square(error))
    np.testing.assert_array_equal(ds.mask.values, (badpix != 0) | ~(np.square(error) > 0))
    np.testing.assert_allclose(ds.wave.values, hdr["CRVAL3"] + hdr["CDELT3"] * np.arange(hdr["NAXIS3"]))
    assert ds.wave.attrs["medium"] == "air" and np.all(ds.lsf_fwhm.values == fwhm)
    ra, dec = sky_of(path)
    np.testing.assert_array_equal(ds.ra.values, ra)
    np.testing.assert_array_equal(ds.dec.values, dec)


def test_generic_cube_with_an_error_extension_and_nm(spectra, tmp_path):
    path = generic_cube(tmp_path / "g.fits", spectra)
    info = ingest_fits(path, tmp_path / "g.zarr", redshift=0.03)
    assert info.format == "generic" and info.extensions == "PRIMARY, UNC, LSF_FWHM"
    ds = open_cube(tmp_path / "g.zarr")
    with fits.open(path) as hdul:
        error, hdr, fwhm = _cube(hdul["UNC"]), hdul[0].header, hdul["LSF_FWHM"].data
    np.testing.assert_array_equal(ds["var"].values, np.square(error))
    np.testing.assert_allclose(ds.wave.values, 10 * (hdr["CRVAL3"] + hdr["CD3_3"] * np.arange(hdr["NAXIS3"])))
    assert ds.wave.attrs["medium"] == "vacuum" and np.array_equal(ds.lsf_fwhm.values, fwhm)
    assert ds.ra.shape == (NY, NX) and np.isfinite(ds.ra.values).all()


def test_generic_cube_the_options_name_what_detection_cannot(spectra, tmp_path, capsys):
    """An uncertainty extension with an unknown name, no resolution, a spectral axis without a medium."""
    src = generic_cube(tmp_path / "g.fits", spectra)
    odd = tmp_path / "odd.fits"
    with fits.open(src) as hdul:
        header = hdul[0].header.copy()
        del header["CTYPE3"], header["CUNIT3"], header["CD3_3"]
        header["CDELT3"] = 12.5  # a bare linear axis in Angstrom
        header["CRVAL3"] = 4000.0
        fits.HDUList(
            [
                fits.PrimaryHDU(hdul[0].data, header=header),
                fits.ImageHDU(np.square(hdul["UNC"].data), name="NOISEVAR"),
            ]
        ).writeto(odd)
    out = str(tmp_path / "o.zarr")
    assert main(["ingest", str(odd), out]) == 2
    assert "no variance extension" in capsys.readouterr().err
    assert main(["ingest", str(odd), out, "--error-ext", "NOISEVAR"]) == 2
    assert "give --error-kind variance|ivar|error" in capsys.readouterr().err
    argv = ["ingest", str(odd), out, "--error-ext", "NOISEVAR", "--error-kind", "variance"]
    assert main(argv) == 2
    assert "give --medium air|vacuum" in capsys.readouterr().err
    assert main([*argv, "--medium", "vacuum"]) == 2
    assert "does not say its instrumental resolution; give it with --lsf-fwhm" in capsys.readouterr().err
    assert main([*argv, "--medium", "vacuum", "--lsf-fwhm", "2.5", "--redshift", "0.03", "--quiet"]) == 0
    assert "(generic: PRIMARY, NOISEVAR)" in capsys.readouterr().out
    ds = open_cube(out)
    assert ds.wave.attrs["medium"] == "vacuum" and float(ds.wave[1] - ds.wave[0]) == 12.5
    with pytest.raises(CubeError, match="--error-ext ABSENT: no such extension; found: PRIMARY, NOISEVAR"):
        ingest_fits(odd, tmp_path / "x.zarr", options=IngestOptions(error_ext="ABSENT"))


def test_phangs_muse_cube_without_dq(tmp_path):
    muse = crop_minicube(tmp_path / "muse.fits", slice(0, 4), slice(0, 4))
    phangs = tmp_path / "NGC0000_DATACUBE_copt.fits"
    with fits.open(muse) as hdul:
        fits.HDUList([h.copy() for h in hdul if h.name != "DQ"]).writeto(phangs)
    info = ingest_fits(phangs, tmp_path / "p.zarr", redshift=0.086)
    assert info.format == "MUSE (no DQ)" and info.extensions == "DATA, STAT"
    ds = open_cube(tmp_path / "p.zarr")
    assert "Bacon" in ds.attrs["lsf"] and ds.mask.values.sum() == (~(ds["var"].values > 0)).sum()


def test_run_on_a_fits_file_points_to_ingest(manga, capsys):
    assert main(["run", "--cube", str(manga), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is a FITS file, not a Zarr store: ingest it first" in err
    assert f"survey-proc ingest {manga} manga-0000-0000-LOGCUBE.zarr" in err


def test_real_manga_spectra_ingest_as_a_catalogue(tmp_path):
    """The MaNGA test spectra are also a generic FITS image of spectra (WAVE, FLUX, IVAR, MASK, SRES, Z)."""
    from survey_proc.stores import manga_spectra

    assert main(["ingest-spectra", str(manga_spectra()), str(tmp_path / "s.zarr"), "--quiet"]) == 0
    ds = xr.open_zarr(tmp_path / "s.zarr")
    with fits.open(manga_spectra()) as hdul:
        np.testing.assert_array_equal(ds.flux.values, hdul["FLUX"].data)
        np.testing.assert_array_equal(ds.redshift.values, hdul["Z"].data)
        sres, wave, bits = hdul["SRES"].data, hdul["WAVE"].data, hdul["MASK"].data
    np.testing.assert_array_equal(ds.mask.values[5], np.ones(wave.size, bool))  # the dead spaxel: DONOTUSE
    assert ds.wave.attrs["medium"] == "vacuum" and ds.attrs["format"] == "FITS images of spectra (MaNGA DRP)"
    good = (sres > 0) & ((bits & MANGA_BAD_BITS) == 0)
    covered = good.any(axis=0)
    expected = [np.mean(wave[j] / sres[good[:, j], j]) for j in np.flatnonzero(covered)]
    np.testing.assert_allclose(ds.lsf_fwhm.values[covered], expected, rtol=1e-6)


def test_a_table_of_spectra_with_array_columns(tmp_path):
    """One row per spectrum: WAVE, FLUX, IVAR arrays and scalar Z, RA, DEC; the medium in the header."""
    from survey_proc.stores import manga_spectra

    with fits.open(manga_spectra()) as hdul:
        wave, flux, ivar = hdul["WAVE"].data, hdul["FLUX"].data[:4], hdul["IVAR"].data[:4]
        z = hdul["Z"].data[:4]
    n, nw = flux.shape
    cols = [
        fits.Column("WAVE", f"{nw}D", array=np.tile(wave, (n, 1))),
        fits.Column("FLUX", f"{nw}E", array=flux),
        fits.Column("IVAR", f"{nw}E", array=ivar),
        fits.Column("Z", "D", array=z),
        fits.Column("RA", "D", array=np.arange(n) + 10.0),
        fits.Column("DEC", "D", array=np.arange(n) - 5.0),
    ]
    table = fits.BinTableHDU.from_columns(cols, header=fits.Header({"AIRORVAC": "vac", "BUNIT": "1e-17 erg/s/cm2/A"}))
    path = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    assert main(["ingest-spectra", str(path), str(tmp_path / "t.zarr"), "--lsf-fwhm", "2.7", "--quiet"]) == 0
    ds = xr.open_zarr(tmp_path / "t.zarr")
    np.testing.assert_array_equal(ds.flux.values, flux)
    np.testing.assert_array_equal(ds.ra.values, np.arange(n) + 10.0)
    assert ds.attrs["format"] == "FITS table of spectra" and ds.wave.attrs["medium"] == "vacuum"
    assert np.all(ds.lsf_fwhm.values == 2.7)
