"""Ingest of the real MUSE minicube shipped in the mpdaf==3.6 wheel (fetched from the registry)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from survey_proc.errors import CubeError
from survey_proc.stores import MINICUBE_REDSHIFT, ingest_muse_fits, muse_minicube, open_cube


@pytest.fixture(scope="module")
def minicube(tmp_path_factory):
    fits_path = muse_minicube()
    out = tmp_path_factory.mktemp("ingest") / "mini.zarr"
    info = ingest_muse_fits(fits_path, out, redshift=MINICUBE_REDSHIFT, chunk=16)
    return fits_path, out, info


def test_round_trip_equals_the_fits_values(minicube):
    fits_path, out, _info = minicube
    ds = open_cube(out)
    assert dict(ds.flux.sizes) == {"y": 40, "x": 40, "wave": 3681}
    with fits.open(fits_path) as hdul:
        data, stat, dq = hdul["DATA"].data, hdul["STAT"].data, hdul["DQ"].data
        np.testing.assert_array_equal(ds.flux.values, np.transpose(data, (1, 2, 0)))
        np.testing.assert_array_equal(ds["var"].values, np.transpose(stat, (1, 2, 0)))
        expected_mask = (np.transpose(dq, (1, 2, 0)) != 0) | ~np.isfinite(ds.flux.values) | ~(ds["var"].values > 0)
        np.testing.assert_array_equal(ds.mask.values, expected_mask)
        hdr = hdul["DATA"].header
        assert float(ds.wave[0]) == pytest.approx(hdr["CRVAL3"])
        assert float(ds.wave[1] - ds.wave[0]) == pytest.approx(hdr["CD3_3"])
    assert ds.wave.attrs["medium"] == "air"  # CTYPE3 = AWAV
    assert ds.flux.attrs["units"] == "10**(-20)*erg/s/cm**2/Angstrom"
    assert ds.attrs["instrument"] == "MUSE" and ds.attrs["redshift"] == MINICUBE_REDSHIFT
    assert ds.ra.shape == (40, 40) and 63.3 < float(ds.ra.mean()) < 63.4
    assert "RA---TAN" in ds.attrs["wcs_header"]
    assert ds.attrs["pixel_scale_arcsec"] == pytest.approx(0.2, abs=1e-4)  # MUSE WFM, from the WCS
    assert ds["lsf_fwhm"].values[0] == pytest.approx(3.0, abs=0.01)
    assert ds.mask.values.sum() >= 5  # the DQ extension flags 5 pixels


def test_missing_extension_is_explained(tmp_path):
    path = tmp_path / "nostat.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((5, 3, 3), np.float32), name="DATA")]).writeto(path)
    with pytest.raises(
        CubeError,
        match=r"no variance extension \(looked for STAT, VAR, VARIANCE, IVAR, .*\); found: PRIMARY, DATA; "
        r"name it with --error-ext NAME --error-kind variance\|ivar\|error",
    ):
        ingest_muse_fits(path, tmp_path / "out.zarr")
    with pytest.raises(CubeError, match="no such FITS file"):
        ingest_muse_fits(tmp_path / "absent.fits", tmp_path / "out.zarr")


def test_run_over_the_real_cube_flags_what_it_cannot_fit(minicube, tmp_path):
    from survey_proc.engine import RunConfig, run

    _, cube, _ = minicube
    summary = run(RunConfig(cube=str(cube), out=str(tmp_path / "maps.zarr"), cluster="none", progress=False))
    maps = xr.open_zarr(tmp_path / "maps.zarr")
    assert summary.spectra == 1600 and summary.verified
    flag = maps.flag.values
    # a 900 s exposure of a z=0.086 galaxy: most spaxels are below S/N 5 per A and flagged low_snr
    snr = maps.snr.values
    assert np.all((flag & 4 != 0) == (snr < 5.0))
    good = flag == 0
    assert np.all(np.isfinite(maps.log_age.values[good]))
    assert 9.0 < np.median(maps.log_age.values[good]) < 10.3  # a brightest cluster galaxy is old
    assert summary.flag_counts["low_snr"] > 0
    # beyond the default's range it runs on the fallback, which rebuilds its spectra; of the spaxels
    # above S/N 5 nearly all are unflagged, their rebuilt spectra match, and their A_V is where pPXF puts
    # the Voronoi bins (1.9-2.6 mag: benchmarks/results/real.md), above the former fallback's edge of 1.5
    assert maps.attrs["model_manifest"].endswith("muse-mix-recon-k5-distil/manifest.json")
    bright = snr >= 5.0
    assert bright.sum() >= 20 and good[bright].mean() >= 0.9
    assert 0.7 < np.median(maps.chi2.values[good]) < 1.5
    assert 1.7 < np.median(maps.av.values[good]) < 2.7
