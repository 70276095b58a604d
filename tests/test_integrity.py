"""What is on disk (issue 16, items 3 and 4): ``validate`` and ``run`` check the data, not only the
metadata, and a run's signature covers the content of its input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import crop_minicube

from survey_proc.cli import main
from survey_proc.engine import RunConfig, run
from survey_proc.errors import CubeError, SurveyProcError
from survey_proc.stores import (
    consolidate,
    content_fingerprint,
    data_problems,
    ingest_muse_fits,
    missing_chunks,
    staging_path,
)


def _legacy(cube) -> None:
    """Make ``cube`` look like a store written before the region bookkeeping (or by another tool)."""
    for name in ("region_done", "region_spectra", "region_checksum"):
        shutil.rmtree(cube / name)
    grp = zarr.open_group(str(cube), mode="r+")
    for key in ("survey_proc_store", "run_signature", "content_fingerprint"):
        grp.attrs.pop(key)
    consolidate(cube)


# -- 3. damaged or incomplete inputs -----------------------------------------------------------------


def test_validate_and_run_report_a_deleted_chunk(cube_copy, tmp_path, capsys):
    (cube_copy / "flux" / "c" / "1" / "0" / "0").unlink()
    assert missing_chunks(zarr.open_group(str(cube_copy))["flux"]) == [(1, 0, 0)]
    assert main(["validate", str(cube_copy)]) == 2
    err = capsys.readouterr().err
    assert "variable 'flux': 1 of 4 chunks are missing from the store (y 8:16, x 0:8)" in err
    assert "they would read as nan" in err
    with pytest.raises(CubeError, match=r"1 of 4 chunks are missing from the store \(y 8:16, x 0:8\)"):
        run(RunConfig(cube=str(cube_copy), out=str(tmp_path / "m.zarr"), cluster="none", progress=False))


def test_a_chunk_deleted_from_a_store_without_bookkeeping_is_found(cube_copy, capsys):
    _legacy(cube_copy)
    assert data_problems(cube_copy) == []
    assert main(["validate", str(cube_copy)]) == 0  # pre-change stores stay valid
    (cube_copy / "var" / "c" / "0" / "1" / "0").unlink()
    assert main(["validate", str(cube_copy)]) == 2
    assert (
        "variable 'var': 1 of 4 chunks are missing from the store although 'flux' has them" in capsys.readouterr().err
    )


def test_a_store_whose_markers_say_incomplete_is_invalid_and_refused(cube_copy, tmp_path, capsys):
    grp = zarr.open_group(str(cube_copy), mode="r+")
    grp["region_done"][1, 0] = 0
    assert main(["validate", str(cube_copy)]) == 2
    message = "the store is incomplete: 1 of 4 regions were never finished"
    assert message in capsys.readouterr().err
    out = tmp_path / "m.zarr"
    assert main(["run", "--cube", str(cube_copy), "--out", str(out), "--cluster", "none", "--quiet"]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_a_failed_ingest_leaves_nothing_at_the_path(tmp_path):
    fits_path = crop_minicube(tmp_path / "c.fits")
    cut = tmp_path / "cut.fits"
    cut.write_bytes(fits_path.read_bytes()[: fits_path.stat().st_size * 2 // 3])  # a download cut short
    out = tmp_path / "c.zarr"
    with pytest.raises(CubeError, match="truncated or damaged"):
        ingest_muse_fits(cut, out, redshift=0.086, chunk=4)
    assert not out.exists() and not staging_path(out).exists()


# -- 4. the content of the input in the run signature -----------------------------------------------


def test_a_cube_ingested_again_with_other_data_is_run_again(tmp_path):
    fits_path, cube, maps = tmp_path / "c.fits", tmp_path / "c.zarr", tmp_path / "c.maps.zarr"
    crop_minicube(fits_path, slice(0, 8), slice(0, 8))
    ingest_muse_fits(fits_path, cube, redshift=0.086, chunk=4)
    first = run(RunConfig(cube=str(cube), out=str(maps), cluster="none", progress=False))
    v1, snr1 = content_fingerprint(cube), xr.open_zarr(maps).snr.values
    assert xr.open_zarr(maps).attrs["input_fingerprint"] == v1
    crop_minicube(fits_path, slice(16, 24), slice(16, 24))  # v2: the same file name, other spaxels
    ingest_muse_fits(fits_path, cube, redshift=0.086, chunk=4)
    assert content_fingerprint(cube) != v1
    with pytest.raises(SurveyProcError, match=r"maps made from other content of this cube.*--overwrite"):
        run(RunConfig(cube=str(cube), out=str(maps), cluster="none", progress=False))
    second = run(RunConfig(cube=str(cube), out=str(maps), cluster="none", progress=False, overwrite=True))
    assert second.regions_run == first.regions_run == 4
    assert not np.array_equal(xr.open_zarr(maps).snr.values, snr1, equal_nan=True)


def test_foreign_stores_are_fingerprinted_from_their_chunks_and_still_run(cube_copy, tmp_path):
    _legacy(cube_copy)  # a cube store from before this change
    before = content_fingerprint(cube_copy)
    summary = run(RunConfig(cube=str(cube_copy), out=str(tmp_path / "m.zarr"), cluster="none", progress=False))
    assert summary.regions_run == 4 and summary.verified
    grp = zarr.open_group(str(cube_copy), mode="r+")
    grp["flux"][0, 0, :] = grp["flux"][0, 0, :] * np.float32(2)  # the content changes in place
    assert content_fingerprint(cube_copy) != before
    again = run(
        RunConfig(cube=str(cube_copy), out=str(tmp_path / "m.zarr"), cluster="none", progress=False, overwrite=True)
    )
    assert again.regions_run == 4


def test_copies_made_with_xarray_stay_valid(tmp_path):
    """xarray leaves out chunks equal to the fill value (an all-good mask): the recorded CRC-32 still
    holds, so the copy is valid; a subset keeps bookkeeping that no longer fits and is checked as
    stores without it are."""
    cube = tmp_path / "c.zarr"
    ingest_muse_fits(crop_minicube(tmp_path / "c.fits"), cube, redshift=0.086, chunk=4)
    assert not missing_chunks(zarr.open_group(str(cube))["mask"])  # survey-proc stores every chunk
    ds = xr.open_zarr(cube)
    ds.to_zarr(tmp_path / "copy.zarr", zarr_format=3, consolidated=False)
    assert missing_chunks(zarr.open_group(str(tmp_path / "copy.zarr"))["mask"])  # all-good chunks left out
    assert data_problems(tmp_path / "copy.zarr") == []
    ds.isel(y=slice(0, 6)).to_zarr(tmp_path / "part.zarr", zarr_format=3, consolidated=False)
    assert data_problems(tmp_path / "part.zarr") == []
    assert content_fingerprint(tmp_path / "part.zarr") != content_fingerprint(cube)
