"""What is on disk (issue 16, items 3 and 4): ``validate`` and ``run`` check the data, not only the
metadata, and a run's signature covers the content of its input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from survey_proc.cli import main
from survey_proc.engine import RunConfig, run
from survey_proc.errors import CubeError
from survey_proc.stores import (
    consolidate,
    content_fingerprint,
    data_problems,
    missing_chunks,
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


# -- 4. the content of the input in the run signature -----------------------------------------------


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
