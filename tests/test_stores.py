"""Cube-store schema: each way of being wrong gets a message naming the problem."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from survey_proc.errors import CubeError
from survey_proc.stores import create_cube_store, open_cube, wave_attrs, write_region


def _cube(nx=4, ny=3, nw=50, **overrides) -> xr.Dataset:
    rng = np.random.default_rng(0)
    wave = np.linspace(4800.0, 5400.0, nw)
    ds = xr.Dataset(
        {
            "flux": (("y", "x", "wave"), rng.random((ny, nx, nw)).astype(np.float32), {"units": "1e-20 erg/s/cm2/A"}),
            "var": (("y", "x", "wave"), np.full((ny, nx, nw), 0.01, np.float32), {"units": "(1e-20 erg/s/cm2/A)**2"}),
            "mask": (("y", "x", "wave"), np.zeros((ny, nx, nw), bool)),
        },
        coords={"wave": ("wave", wave, wave_attrs())},
        attrs={"redshift": 0.01, "lsf_fwhm": 2.5},
    )
    return ds


def _write(ds: xr.Dataset, path, chunks=None):
    enc = {v: {"chunks": chunks or (2, 2, ds.sizes["wave"])} for v in ("flux", "var", "mask") if v in ds}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=enc)
    return path


def test_a_good_cube_opens(tmp_path):
    ds = open_cube(_write(_cube(), tmp_path / "ok.zarr"))
    assert ds["flux"].dims == ("y", "x", "wave")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ds: ds.drop_vars("var"), r"variable 'var' \(variance of flux\) is missing; found: flux, mask"),
        (lambda ds: ds.drop_vars("mask"), r"variable 'mask' \(bad-pixel mask\) is missing"),
        (
            lambda ds: ds.transpose("wave", "y", "x"),
            r"'flux' has dims \('wave', 'y', 'x'\), expected \('y', 'x', 'wave'\)",
        ),
        (
            lambda ds: ds.assign_coords(wave=("wave", ds.wave.values[::-1], wave_attrs())),
            r"'wave' is not strictly increasing \(at index 0",
        ),
        (lambda ds: ds.assign(flux=ds.flux * np.nan), r"'flux' is NaN \(or infinite\) everywhere"),
        (lambda ds: ds.assign(flux=ds.flux.assign_attrs(units="")), r"'flux' has no 'units' attribute"),
        (
            lambda ds: ds.assign_coords(
                wave=("wave", ds.wave.values, {"units": "nm", "frame": "observed", "medium": "air"})
            ),
            r"'wave' has units 'nm', expected 'Angstrom'",
        ),
        (
            lambda ds: ds.assign_coords(wave=("wave", ds.wave.values, {"units": "Angstrom", "medium": "air"})),
            r"'wave' has frame None, expected one of \('observed', 'rest'\)",
        ),
        (lambda ds: ds.drop_attrs().assign(flux=ds.flux, var=ds["var"]), r"'redshift' is missing"),
    ],
)
def test_bad_cubes_are_explained(tmp_path, change, message):
    bad = change(_cube())
    path = tmp_path / "bad.zarr"
    enc = {
        v: {"chunks": tuple(min(2, s) if d != "wave" else s for d, s in zip(bad[v].dims, bad[v].shape))}
        for v in ("flux", "var", "mask")
        if v in bad
    }
    bad.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=enc)
    with pytest.raises(CubeError, match=message):
        open_cube(path)


def test_spectral_axis_split_across_chunks_is_refused(tmp_path):
    path = _write(_cube(nw=50), tmp_path / "split.zarr", chunks=(2, 2, 20))
    with pytest.raises(CubeError, match=r"spectral axis of 'flux' is split across chunks \(20 of 50"):
        open_cube(path)


def test_not_a_store_and_missing_path(tmp_path):
    with pytest.raises(CubeError, match="no such file"):
        open_cube(tmp_path / "absent.zarr")
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(CubeError, match="not a readable Zarr store"):
        open_cube(tmp_path / "junk.zarr")


def test_create_then_write_regions(tmp_path):
    path = tmp_path / "c.zarr"
    wave = np.linspace(4750, 9350, 40)
    create_cube_store(
        path, ny=5, nx=6, wave=wave, flux_units="1e-20 erg/s/cm2/A", attrs={"redshift": 0.0, "lsf_fwhm": 2.5}, chunk=4
    )
    flux = np.arange(5 * 6 * 40, dtype=np.float32).reshape(5, 6, 40)
    for y0 in (0, 4):
        sl = slice(y0, min(y0 + 4, 5))
        write_region(path, {"y": sl}, {"flux": flux[sl], "var": np.ones_like(flux[sl]), "mask": flux[sl] > 1e9})
    ds = open_cube(path)
    np.testing.assert_array_equal(ds.flux.values, flux)
    assert zarr.open_group(str(path))["flux"].chunks == (4, 4, 40)
