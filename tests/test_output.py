"""Where survey-proc writes (issue 16, items 1 and 2): only its own stores, never over an input, whole
stores renamed into place once complete, setup that recovers, one writer per output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import crop_minicube

from survey_proc.cli import main
from survey_proc.engine import RunConfig, run
from survey_proc.stores import (
    OutputPathError,
    StoreLockedError,
    create_or_resume,
    is_survey_proc_store,
    lazy_full,
    lock_file,
    locked,
    make_regions,
    pending_regions,
    release_store,
    run_signature,
    staging_path,
    with_region_arrays,
)
from survey_proc.synth import MockConfig, MockRegions, write_mock


def _template() -> xr.Dataset:
    ds = xr.Dataset({"a": (("y", "x"), lazy_full((4, 4), np.float32, np.nan))})
    ds["a"].encoding["chunks"] = (2, 2)
    return with_region_arrays(ds, {"y": 4, "x": 4}, {"y": 2, "x": 2})


# -- 1. output paths ---------------------------------------------------------------------------------


def test_mock_refuses_a_folder_that_is_not_a_store(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("years of work")
    assert main(["mock", str(precious), "--nx", "4", "--ny", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is not a survey-proc store (a folder of 1 entry)" in err and "choose another output path" in err
    assert (precious / "data.txt").read_text() == "years of work"


def test_ingest_refuses_the_folder_that_holds_its_input(tmp_path, monkeypatch, capsys):
    crop_minicube(tmp_path / "X.fits", slice(0, 4), slice(0, 4))
    (tmp_path / "notes.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", "X.fits", ".", "--redshift", "0.086", "--quiet"]) == 2
    assert "the output . holds the input X.fits" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.fits", "notes.txt"]


def test_run_refuses_to_write_over_its_input_cube(cube_copy, tmp_path):
    before = xr.open_zarr(cube_copy).flux.values
    for out in (cube_copy, cube_copy / "maps.zarr"):
        with pytest.raises(OutputPathError, match="destroy the input"):
            run(RunConfig(cube=str(cube_copy), out=str(out), overwrite=True, cluster="none", progress=False))
    np.testing.assert_array_equal(xr.open_zarr(cube_copy).flux.values, before)


def test_a_failed_write_leaves_the_previous_store_and_resumes(tmp_path, ssp_lib, monkeypatch):
    """Whole stores are written beside the output and renamed into place only when complete."""
    out = tmp_path / "m.zarr"
    write_mock(out, MockConfig(nx=8, ny=8, seed=1, chunk=4), ssp_lib)
    first = xr.open_zarr(out).flux.values
    calls = []
    real = MockRegions.__call__

    def fail_third(self, region):
        calls.append(region.key)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(self, region)

    monkeypatch.setattr(MockRegions, "__call__", fail_third)
    cfg = MockConfig(nx=8, ny=8, seed=2, chunk=4)
    with pytest.raises(RuntimeError, match="disk full"):
        write_mock(out, cfg, ssp_lib, threads=1)
    np.testing.assert_array_equal(xr.open_zarr(out).flux.values, first)  # untouched
    assert staging_path(out).is_dir()  # kept, with its 2 finished regions
    monkeypatch.setattr(MockRegions, "__call__", real)
    again = write_mock(out, cfg, ssp_lib, threads=1)
    assert again.regions_resumed == 2 and not staging_path(out).exists()
    write_mock(tmp_path / "whole.zarr", cfg, ssp_lib)
    np.testing.assert_array_equal(xr.open_zarr(out).flux.values, xr.open_zarr(tmp_path / "whole.zarr").flux.values)
    assert not lock_file(out).exists()


def test_stores_written_before_the_marker_are_still_ours(tmp_path):
    legacy = tmp_path / "old.zarr"
    xr.Dataset({"flux": ("y", np.zeros(3))}, attrs={"software": "survey-proc 0.9.0"}).to_zarr(
        legacy, zarr_format=3, consolidated=False
    )
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"flux": ("y", np.zeros(3))}).to_zarr(foreign, zarr_format=3, consolidated=False)
    assert is_survey_proc_store(legacy) and not is_survey_proc_store(foreign)
    assert create_or_resume(legacy, _template(), "sig", overwrite=True) is False  # replaced
    with pytest.raises(OutputPathError, match="--overwrite or not"):
        create_or_resume(foreign, _template(), "sig", overwrite=True)


# -- 2. setup and locks ------------------------------------------------------------------------------


def test_a_store_whose_setup_was_cut_short_is_set_up_again(tmp_path):
    out = tmp_path / "s.zarr"
    signature = run_signature({"run": 1})
    create_or_resume(out, _template(), signature)
    shutil.rmtree(out / "region_done")  # what a full disk during setup left before: signature, no arrays
    assert create_or_resume(out, _template(), signature) is False  # set up again, not resumed
    regions = make_regions({"y": 4, "x": 4}, {"y": 2, "x": 2})
    assert pending_regions(out, regions) == regions
    # cut short before the signature (marker only): recognised as ours and set up again
    zarr.open_group(str(out), mode="r+").attrs.pop("run_signature")
    assert create_or_resume(out, _template(), signature) is False


def test_a_maps_store_cut_short_in_setup_is_redone_by_the_next_run(mock16, tmp_path):
    out = tmp_path / "m.zarr"
    run(RunConfig(cube=str(mock16), out=str(out), cluster="none", progress=False))
    shutil.rmtree(out / "ood_score")
    summary = run(RunConfig(cube=str(mock16), out=str(out), cluster="none", progress=False))
    assert summary.regions_run == summary.regions and summary.verified


def _holder(out) -> subprocess.Popen:
    """Another process holding the lock of ``out``."""
    code = (
        "import sys, time\nfrom survey_proc.stores import acquire_lock\n"
        f"acquire_lock({str(out)!r})\nprint('held', flush=True)\ntime.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path, mock16, caplog):
    out = tmp_path / "m.zarr"
    holder = _holder(out)
    try:
        with pytest.raises(StoreLockedError, match=rf"pid {holder.pid} on {os.uname().nodename}, since .*delete"):
            create_or_resume(out, _template(), "sig")
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            run(RunConfig(cube=str(mock16), out=str(out), cluster="none", progress=False))
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert create_or_resume(out, _template(), "sig") is False  # the holder is gone: its lock is stale
    assert f"pid {holder.pid}" in caplog.text and "is gone" in caplog.text
    with locked(out):  # this process holds it already: taken again, released once
        pass
    assert lock_file(out).exists()
    release_store(out)
    assert not lock_file(out).exists()


def test_the_lock_is_released_after_a_run_and_on_errors(mock16, tmp_path):
    out = tmp_path / "m.zarr"
    run(RunConfig(cube=str(mock16), out=str(out), cluster="none", progress=False))
    assert not lock_file(out).exists()
    with pytest.raises(Exception, match="holds maps of another run"):
        run(RunConfig(cube=str(mock16), out=str(out), cluster="none", progress=False, min_snr=9.0))
    assert not lock_file(out).exists()
    t0 = time.perf_counter()
    with locked(out):
        assert lock_file(out).exists()
    assert not lock_file(out).exists() and time.perf_counter() - t0 < 5
