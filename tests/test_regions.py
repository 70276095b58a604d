"""The region-by-region write path of every store: create or resume, commit a region, verify."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from survey_proc.errors import CubeError
from survey_proc.stores import (
    OutputPathError,
    Region,
    RegionWriteError,
    commit_region,
    create_or_resume,
    is_done,
    lazy_full,
    make_regions,
    pending_regions,
    read_arrays,
    region_checksum,
    region_record,
    remove_partial_writes,
    run_signature,
    verify_regions,
    with_region_arrays,
)

SIZES = {"y": 5, "x": 6}
CHUNKS = {"y": 2, "x": 3}
NAMES = ["a", "b"]


def _template(chunks=CHUNKS) -> xr.Dataset:
    """A store of ``a(y, x)`` and ``b(y, x, band)``, chunked over y and x only."""
    ds = xr.Dataset(
        {
            "a": (("y", "x"), lazy_full((5, 6), np.float32, np.nan), {"long_name": "a"}),
            "b": (("y", "x", "band"), lazy_full((5, 6, 2), np.int16, -1), {"long_name": "b"}),
        },
        coords={"band": ("band", [4770.0, 6231.0])},
    )
    ds["a"].encoding["chunks"] = (2, 3)
    ds["b"].encoding["chunks"] = (2, 3, 2)
    return with_region_arrays(ds, SIZES, chunks)


def _arrays(region: Region) -> dict[str, np.ndarray]:
    (_, y0, y1), (_, x0, x1) = region.slices
    yy, xx = np.mgrid[y0:y1, x0:x1]
    a = (10 * yy + xx).astype(np.float32)
    return {"a": a, "b": np.stack([a, -a], axis=-1).astype(np.int16)}


def _filled(path, chunks=CHUNKS) -> tuple[list[Region], dict[str, int]]:
    create_or_resume(path, _template(chunks), run_signature({"test": 1}))
    regions = make_regions(SIZES, chunks)
    return regions, {r.key: commit_region(path, r, _arrays(r)) for r in regions}


def test_regions_cover_the_store_in_blocks_of_whole_chunks():
    regions = make_regions(SIZES, CHUNKS)
    assert [r.key for r in regions[:3]] == ["region-0-0", "region-0-1", "region-1-0"]
    assert sum(r.size for r in regions) == 30 and len(regions) == 6
    last = regions[-1]
    assert last.slices == (("y", 4, 5), ("x", 3, 6)) and last.size == 3
    assert last.block == (slice(4, 5), slice(3, 6)) and last.marker == (slice(2, 3), slice(1, 2))
    assert last.selection() == {"y": slice(4, 5), "x": slice(3, 6)}


def test_a_new_store_is_created_the_same_run_resumed_another_refused(tmp_path):
    out = tmp_path / "s.zarr"
    signature = run_signature({"input": "cube.zarr", "options": [1, 2]})
    assert signature == run_signature({"options": [1, 2], "input": "cube.zarr"})  # key order does not count
    assert create_or_resume(out, _template(), signature) is False
    grp = zarr.open_group(str(out), mode="r")
    assert grp.attrs["run_signature"] == signature
    assert grp["region_done"].shape == (3, 2) and grp["region_done"].chunks == (1, 1)
    assert grp["a"].chunks == (2, 3) and np.isnan(grp["a"][...]).all()  # metadata only
    assert create_or_resume(out, _template(), signature) is True
    with pytest.raises(CubeError, match=r"holds maps of another run \(different input or filters"):
        create_or_resume(out, _template(), "other", identity="input or filters")
    with pytest.raises(CubeError, match=r"holds a survey-proc maps store, not photometry; pass --overwrite"):
        create_or_resume(out, _template(), "other", what="photometry")
    assert create_or_resume(out, _template(), "other", overwrite=True) is False
    assert grp.attrs["survey_proc_store"] == "maps"

    plain = tmp_path / "plain.zarr"
    xr.Dataset({"a": ("y", np.zeros(3))}).to_zarr(plain, zarr_format=3, consolidated=False)
    with pytest.raises(OutputPathError, match=r"is not a survey-proc store \(a Zarr store another tool wrote"):
        create_or_resume(plain, _template(), signature, overwrite=True)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("not a store")
    with pytest.raises(OutputPathError, match=r"is not a survey-proc store \(a folder of 1 entry\)"):
        create_or_resume(tmp_path / "folder", _template(), signature, overwrite=True)
    assert (tmp_path / "folder" / "x.txt").read_text() == "not a store"


def test_committed_regions_are_complete_marked_and_counted(tmp_path):
    out = tmp_path / "s.zarr"
    create_or_resume(out, _template(), run_signature({}))
    regions = make_regions(SIZES, CHUNKS)
    first = regions[1]
    crc = commit_region(out, first, _arrays(first))
    assert crc == region_checksum(_arrays(first))
    grp = zarr.open_group(str(out), mode="r")
    assert is_done(grp, first) and not is_done(grp, regions[0])
    assert region_record(grp, first) == (first.size, crc)
    assert pending_regions(out, regions) == [r for r in regions if r is not first]
    got = read_arrays(out, ["a", "b", "absent"], first.block)
    np.testing.assert_array_equal(got["a"], _arrays(first)["a"])
    np.testing.assert_array_equal(got["b"], _arrays(first)["b"])
    assert got["absent"] is None


def test_a_region_that_does_not_read_back_as_written_stays_unmarked(tmp_path):
    out = tmp_path / "s.zarr"
    create_or_resume(out, _template(), run_signature({}))
    region = make_regions(SIZES, CHUNKS)[0]
    arrays = _arrays(region)
    with pytest.raises(RegionWriteError, match=r"read back at \[0:2, 0:3\] differ from those written"):
        # what a store that loses or alters writes looks like: the CRC-32 of other values
        commit_region(out, region, arrays, checksum=region_checksum(arrays) ^ 1)
    grp = zarr.open_group(str(out), mode="r")
    assert not is_done(grp, region) and pending_regions(out, [region]) == [region]


@pytest.mark.parametrize("rows", [False, True], ids=["chunk-regions", "row-regions"])
def test_verification_names_regions_changed_unmarked_or_miscounted(tmp_path, rows):
    """Regions of single chunks, or (as an ingest copying blocks of rows) regions spanning every
    chunk of their rows; the bookkeeping follows the regions, not the chunks."""
    out = tmp_path / "s.zarr"
    chunks = {"y": 2, "x": 6} if rows else CHUNKS
    regions, written = _filled(out, chunks)
    assert verify_regions(out, regions, NAMES) == []
    assert verify_regions(out, regions, NAMES, written=written) == []
    # regions this run wrote are checked against the CRC-32 their writers read back, not re-read
    lied = {**written, regions[0].key: written[regions[0].key] ^ 1}
    assert verify_regions(out, regions, NAMES, written=lied) == [
        f"{regions[0].key}: recorded CRC-32 differs from the one its task wrote and read back"
    ]
    grp = zarr.open_group(str(out), mode="r+")
    first, second, last = regions[0], regions[1], regions[-1]
    grp["a"][0, 1] = 99.0  # a value changed after its region was committed
    grp["region_done"][second.index] = 0
    grp["region_spectra"][last.index] = 1
    assert verify_regions(out, regions, NAMES) == [
        f"{first.key}: CRC-32 of the stored outputs differs from the one written",
        f"{second.key}: not marked done",
        f"{last.key}: 1 spectra recorded, {last.size} expected",
    ]


def test_temporaries_of_cut_short_writes_are_removed(tmp_path):
    out = tmp_path / "s.zarr"
    _filled(out)
    (out / "a" / "c" / "0.0123abcd.partial").write_bytes(b"cut short")
    assert remove_partial_writes(out) == 1
    assert not list(out.rglob("*.partial")) and remove_partial_writes(out) == 0
