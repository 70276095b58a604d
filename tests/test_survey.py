"""Survey scale on real LocalClusters: many cubes on one client, reruns, bad cubes, a worker killed mid-run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from conftest import is_chunk_key, write_small_mock

from survey_proc.engine import RunConfig, SurveyError, read_survey, run, run_many


@pytest.fixture(scope="module")
def three_cubes(tmp_path_factory, ssp_lib) -> Path:
    """Three 12x12 mocks (chunks of 8: four regions each); the third has no redshift attribute."""
    folder = tmp_path_factory.mktemp("survey")
    for i, seed in enumerate((21, 22, 23)):
        write_small_mock(folder / "cubes" / f"gal{i}.zarr", seed, redshift=0.008 + 0.004 * i)
    grp = zarr.open_group(str(folder / "cubes" / "gal2.zarr"), mode="r+")
    del grp.attrs["redshift"]  # this cube's redshift comes from the survey file only
    return folder


def _survey_file(folder: Path, cubes: list, name: str = "survey.yaml", **top) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"cubes": cubes, **top}))
    return path


def _done_markers(out: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(out), mode="r")["region_done"][...])


def test_survey_of_three_cubes_end_to_end(three_cubes, run_model, tmp_path):
    survey = _survey_file(
        three_cubes,
        ["cubes/gal[01].zarr", {"cube": "cubes/gal2.zarr", "redshift": 0.016}],
        out_dir=str(tmp_path / "maps"),
    )
    configs = read_survey(survey, RunConfig(cube="", model=run_model, workers=2, progress=False))
    assert [Path(rc.cube).name for rc in configs] == ["gal0.zarr", "gal1.zarr", "gal2.zarr"]
    assert [rc.redshift for rc in configs] == [None, None, 0.016]

    outcomes = run_many(configs)
    assert [o.status for o in outcomes] == ["done"] * 3, [o.reason for o in outcomes]
    for o, z in zip(outcomes, (0.008, 0.012, 0.016)):
        s = o.summary
        assert Path(o.out).parent == tmp_path / "maps"
        assert s.spectra == 144 and s.regions == 4 and s.regions_run == 4 and s.verified
        assert 0.0 <= s.flagged_fraction < 0.5
        maps = xr.open_zarr(o.out)
        assert maps.attrs["status"] == "complete" and maps.attrs["redshift"] == pytest.approx(z)
        assert maps.region_done.values.all() and int(maps.region_spectra.values.sum()) == 144
        assert np.isfinite(maps.log_age.values).mean() > 0.8
    # the cubes ran on one shared client, together: their busy intervals overlap
    spans = [(o.summary.started, o.summary.finished) for o in outcomes]
    assert max(a for a, _ in spans) < min(b for _, b in spans), spans

    # a rerun skips finished cubes: nothing is recomputed, no cluster is needed
    again = run_many(configs)
    assert [o.status for o in again] == ["already done"] * 3
    assert all(o.summary.regions_run == 0 and o.summary.verified for o in again)

    # an interrupted survey (two regions of gal1 lost) resumes only what is missing
    out1 = Path(outcomes[1].out)
    grp = zarr.open_group(str(out1), mode="r+")
    grp["region_done"][0:1, 1:2] = np.zeros((1, 1), np.uint8)
    grp["region_done"][1:2, 0:1] = np.zeros((1, 1), np.uint8)
    before = {p: p.stat().st_mtime_ns for p in (out1 / "log_age" / "c").rglob("*") if p.is_file()}
    resumed = run_many(configs)
    assert [o.status for o in resumed] == ["already done", "done", "already done"]
    assert resumed[1].summary.regions_run == 2 and resumed[1].summary.regions_skipped == 2
    assert _done_markers(out1).all()
    untouched = [p for p in before if p.relative_to(out1 / "log_age" / "c").parts in (("0", "0"), ("1", "1"))]
    assert len(untouched) == 2 and all(p.stat().st_mtime_ns == before[p] for p in untouched)


def test_survey_file_errors_name_the_problem(tmp_path):
    base = RunConfig(cube="")
    with pytest.raises(SurveyError, match=r"survey\.yaml, cube entry 2: unknown key\(s\) redshfit"):
        read_survey(_survey_file(tmp_path, ["a.zarr", {"cube": "b.zarr", "redshfit": 0.1}]), base)
    with pytest.raises(SurveyError, match=r"cube entry 1: 'redshift' must be a float, found 'high'"):
        read_survey(_survey_file(tmp_path, [{"cube": "a.zarr", "redshift": "high"}]), base)
    with pytest.raises(SurveyError, match="non-empty 'cubes' list"):
        read_survey(_survey_file(tmp_path, []), base)
    # a glob matching nothing stays in the list, to fail (with its reason) when the survey runs
    configs = read_survey(_survey_file(tmp_path, ["nothing-*.zarr"]), base)
    assert len(configs) == 1 and configs[0].cube.endswith("nothing-*.zarr")
    from survey_proc.errors import SurveyProcError

    with pytest.raises(SurveyProcError, match="would both write"):
        run_many(
            [
                RunConfig(cube=str(tmp_path / "a.zarr"), out=str(tmp_path / "m.zarr")),
                RunConfig(cube=str(tmp_path / "b.zarr"), out=str(tmp_path / "m.zarr")),
            ]
        )


def _corrupt_chunk(cube: Path, key: tuple[int, int, int]) -> None:
    chunk = cube / "flux" / "c" / "/".join(str(k) for k in key)
    assert chunk.is_file(), chunk
    chunk.write_bytes(b"\x00garbage, not a compressed chunk" * 8)


def test_maps_are_named_by_kind_beside_the_cube_or_in_out_dir(tmp_path):
    """Without ``out``: ``<cube>.maps.zarr`` (``--method ppxf``: ``<cube>.ppxf.zarr``) beside the cube or
    in ``out_dir``; an ``out`` given is kept as it is."""
    from survey_proc.engine import configs_for, default_output

    base = RunConfig(cube="")
    entries = [{"cube": "a/c1.zarr"}, {"cube": "a/c2.zarr", "out": "mine.maps.zarr"}]
    assert [rc.out for rc in configs_for(entries, base)] == ["a/c1.maps.zarr", "mine.maps.zarr"]
    assert [rc.out for rc in configs_for(entries, base, kind="ppxf")] == ["a/c1.ppxf.zarr", "mine.maps.zarr"]
    assert configs_for(entries[:1], base, out_dir=tmp_path, kind="ppxf")[0].out == str(tmp_path / "c1.ppxf.zarr")
    assert default_output("x/cube", "ppxf") == Path("x/cube.ppxf.zarr")
    survey = _survey_file(tmp_path, ["c3.zarr"])
    assert read_survey(survey, base, kind="ppxf")[0].out == str(tmp_path / "c3.ppxf.zarr")


def test_bad_cubes_in_a_survey_fail_alone(three_cubes, run_model, tmp_path):
    """A missing cube, one with unreadable metadata and one with a corrupt chunk fail; the rest completes."""
    cubes = tmp_path / "cubes"
    shutil.copytree(three_cubes / "cubes" / "gal0.zarr", cubes / "good.zarr")
    shutil.copytree(three_cubes / "cubes" / "gal1.zarr", cubes / "badchunk.zarr")
    _corrupt_chunk(cubes / "badchunk.zarr", (1, 1, 0))  # region 1-1; region 0-0 (read by validation) is fine
    shutil.copytree(three_cubes / "cubes" / "gal0.zarr", cubes / "badmeta.zarr")
    (cubes / "badmeta.zarr" / "zarr.json").write_text("{ this is not json")
    survey = _survey_file(
        tmp_path, ["cubes/good.zarr", "cubes/missing.zarr", "cubes/badmeta.zarr", "cubes/badchunk.zarr"]
    )
    env = {**os.environ, "DASK_SURVEY_PROC__RUN__RETRIES": "1"}
    cmd = [
        sys.executable,
        "-m",
        "survey_proc",
        "run",
        "--survey",
        str(survey),
        "--model",
        run_model,
        "--workers",
        "2",
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    table, reasons = proc.stdout.split("\nfailed:\n")
    rows = {Path(line.split()[0]).name: line for line in table.splitlines() if "cubes/" in line}
    assert set(rows) == {"good.zarr", "missing.zarr", "badmeta.zarr", "badchunk.zarr"}, proc.stdout
    assert rows["good.zarr"].split()[1:] == ["144", rows["good.zarr"].split()[2], rows["good.zarr"].split()[3], "done"]
    assert all("failed" in rows[k] for k in ("missing.zarr", "badmeta.zarr", "badchunk.zarr"))
    why = {Path(line.split(":")[0].strip()).name: line for line in reasons.splitlines()}
    assert "no such file or directory" in why["missing.zarr"]
    assert "not a readable Zarr store" in why["badmeta.zarr"]
    assert "region-1-1 failed after 1 retries" in why["badchunk.zarr"]
    assert "variable 'flux' cannot be read at region-1-1 (y 8:12, x 8:12)" in why["badchunk.zarr"]
    assert "4 cubes: 1 done, 0 already done, 3 failed" in table
    assert "3 of 4 cubes failed" in proc.stderr
    # the good cube is complete; the corrupt one keeps its good regions, and only region 1-1 is missing
    assert xr.open_zarr(cubes / "good.maps.zarr").attrs["status"] == "complete"
    marks = _done_markers(cubes / "badchunk.maps.zarr")
    assert marks.sum() == 3 and marks[1, 1] == 0


def _worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def test_worker_killed_mid_run_loses_nothing(tmp_path, run_model, ssp_lib):
    """Kill one of 2 LocalCluster workers while it computes a region: the run completes, every region once."""
    from distributed import Client, LocalCluster

    cube = write_small_mock(tmp_path / "c.zarr", seed=31, n=16, chunk=4)  # 16 regions of 16 spectra
    out = tmp_path / "m.zarr"
    killed: dict = {}

    def killer(client) -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            done = int(_done_markers(out).sum()) if (out / "region_done").exists() else 0
            busy = {w: ts for w, ts in client.processing().items() if ts}
            if done >= 2 and busy:
                victim = sorted(busy)[0]
                killed.update(
                    done=done,
                    worker=victim,
                    tasks=list(busy[victim]),
                    marks=_done_markers(out).copy(),
                    stamps={
                        p: p.stat().st_mtime_ns
                        for p in (out / "log_age" / "c").rglob("*")
                        if is_chunk_key(p, out / "log_age" / "c")
                    },
                )
                os.kill(_worker_pids(client)[victim], signal.SIGKILL)
                return
            time.sleep(0.01)

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
        ) as cluster,
        Client(cluster) as client,
    ):
        thread = threading.Thread(target=killer, args=(client,), daemon=True)
        thread.start()
        summary = run(
            RunConfig(cube=str(cube), out=str(out), model=run_model, cluster=cluster.scheduler_address, progress=False)
        )
        thread.join(timeout=60)
    assert killed, "no worker was killed: the run ended before two regions were done"
    assert killed["done"] < 16 and killed["tasks"], killed
    assert summary.verified and summary.regions == 16 and summary.regions_run == 16
    assert _done_markers(out).all()
    # regions finished before the kill were not written again
    marks = killed["marks"]
    before = [p for p in killed["stamps"] if marks[tuple(int(i) for i in p.relative_to(out / "log_age" / "c").parts)]]
    assert before and all(p.stat().st_mtime_ns == killed["stamps"][p] for p in before)
    # and the maps are those of an undisturbed run
    ref = tmp_path / "ref.zarr"
    run(RunConfig(cube=str(cube), out=str(ref), model=run_model, cluster="none", progress=False))
    a, b = xr.open_zarr(out), xr.open_zarr(ref)
    for name in ("log_age", "metallicity", "av", "log_age_err", "flag", "snr"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-5, equal_nan=True)


def test_a_task_finding_its_region_done_does_not_rewrite_it(tmp_path, run_model, ssp_lib):
    """The retry of a region whose first attempt marked it (then lost its worker) returns the record."""
    from survey_proc.engine import prepare_cube, process_region

    cube = write_small_mock(tmp_path / "c.zarr", seed=5, n=12, chunk=8)
    job = prepare_cube(RunConfig(cube=str(cube), out=str(tmp_path / "m.zarr"), model=run_model, progress=False))
    region = job.pending[0]
    first = process_region(region, job.opts)
    chunk = tmp_path / "m.zarr" / "log_age" / "c" / "0" / "0"
    stamp = chunk.stat().st_mtime_ns
    second = process_region(region, job.opts)
    assert second.reused and not first.reused
    assert (second.spectra, second.checksum, second.fitted) == (first.spectra, first.checksum, first.fitted)
    assert chunk.stat().st_mtime_ns == stamp


def test_cli_runs_several_cubes_given_on_the_command_line(three_cubes, run_model, tmp_path, capsys):
    from survey_proc.cli import main

    cubes = [str(three_cubes / "cubes" / f"gal{i}.zarr") for i in (0, 1)]
    args = ["run", "--cube", cubes[0], "--cube", cubes[1], "--model", run_model, "--cluster", "none", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "m.zarr")]) == 2
    assert "with several cubes use --out-dir" in capsys.readouterr().err
    assert main([*args, "--out-dir", str(tmp_path / "maps")]) == 0
    out = capsys.readouterr().out
    assert "2 cubes: 2 done, 0 already done, 0 failed; 288 spectra processed" in out
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        f"gal{i}.maps.{ext}" for i in (0, 1) for ext in ("log", "png", "zarr")
    ]
