"""Issue 19's acceptance: a MaNGA LOGCUBE made from real MaNGA spectra, a CALIFA cube and a generic cube
ingest with the plain command, run, and their maps carry the cube's sky coordinates at every spaxel;
``export`` writes a FITS file whose every image carries that WCS; ``plot`` draws them."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS
from fits_models import califa_cube, generic_cube, manga_logcube, real_spectra, sky_of

from survey_proc.cli import main
from survey_proc.stores import FLAG_DESCRIPTIONS, Flag

BUILDERS = {
    "manga-0000-0000-LOGCUBE.fits": (manga_logcube, "FLUX"),
    "TEST.V500.rscube.fits": (califa_cube, 0),
    "generic.fits": (generic_cube, 0),
}


@pytest.fixture(scope="module")
def spectra():
    return real_spectra()


@pytest.fixture(scope="module", params=list(BUILDERS))
def mapped(request, spectra, tmp_path_factory):
    """(the FITS file, the extension holding its WCS, the maps store): ingested and run with the plain commands."""
    folder = tmp_path_factory.mktemp("byo")
    build, ext = BUILDERS[request.param]
    path = build(folder / request.param, spectra)
    cube, maps = folder / "cube.zarr", folder / "cube.maps.zarr"
    assert main(["ingest", str(path), str(cube), "--redshift", "0.03", "--quiet"]) == 0
    assert main(["run", "--cube", str(cube), "--cluster", "none", "--quiet"]) == 0
    return path, ext, maps


def test_the_maps_carry_the_cubes_sky_coordinates(mapped):
    path, ext, maps_path = mapped
    maps = xr.open_zarr(maps_path)
    ra, dec = sky_of(path, ext)
    np.testing.assert_allclose(maps.ra.values, ra, rtol=0, atol=1e-12)
    np.testing.assert_allclose(maps.dec.values, dec, rtol=0, atol=1e-12)
    assert "RA---TAN" in maps.attrs["wcs_header"]
    assert maps.attrs["status"] == "complete" and np.isfinite(maps.log_age.values).sum() >= 6
    assert maps_path.with_suffix(".png").exists() and maps_path.with_suffix(".log").exists()


def test_export_writes_every_image_with_the_wcs(mapped, tmp_path):
    path, ext, maps_path = mapped
    out = tmp_path / "maps.fits"
    assert main(["export", str(maps_path), str(out)]) == 0
    maps = xr.open_zarr(maps_path)
    ra, dec = sky_of(path, ext)
    yy, xx = np.mgrid[0 : ra.shape[0], 0 : ra.shape[1]]
    with fits.open(out) as hdul:
        primary = hdul[0].header
        assert primary["ORIGIN"] == "survey-proc" and primary["MODELID"] == maps.attrs["model_id"]
        assert primary["REDSHIFT"] == 0.03 and primary["EXTNAMES"].split() == [h.name for h in hdul[1:]]
        images = hdul[1:]
        assert {"LOG_AGE", "LOG_AGE_ERR", "METALLICITY", "AV", "SIGMA", "SNR", "FLAG"} <= {h.name for h in images}
        for hdu in images:
            wra, wdec = WCS(hdu.header).pixel_to_world_values(xx, yy)
            np.testing.assert_allclose(wra, ra, rtol=0, atol=1e-10, err_msg=hdu.name)
            np.testing.assert_allclose(wdec, dec, rtol=0, atol=1e-10, err_msg=hdu.name)
            name = hdu.name.lower()
            np.testing.assert_array_equal(hdu.data, maps[name].values, err_msg=hdu.name)
            assert hdu.header["BUNIT"] == ("" if name == "flag" else maps[name].attrs["units"])
        assert hdul["LOG_AGE"].header["ERRDATA"] == "LOG_AGE_ERR" and hdul["LOG_AGE"].header["QUALDATA"] == "FLAG"
        for flag in Flag:
            card = hdul["FLAG"].header.cards[f"BIT{int(flag).bit_length() - 1}"]
            assert card.value == flag.name and card.comment == FLAG_DESCRIPTIONS[flag]
    assert main(["export", str(maps_path), str(out)]) == 2  # an existing file needs --overwrite
    assert main(["export", str(maps_path), str(out), "--overwrite"]) == 0


def test_plot_writes_the_figure(mapped, tmp_path, capsys):
    _, _, maps_path = mapped
    out = tmp_path / "quick.png"
    assert main(["plot", str(maps_path), "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000 and f"quick-look figure: {out}" in capsys.readouterr().out
