"""survey-proc bench --quick at toy size: the JSON has the schema scripts rely on (no timing checks)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types

import pytest


def test_bench_quick_writes_the_documented_json(tmp_path):
    pytest.importorskip("ppxf")
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "survey_proc",
        "bench",
        "--quick",
        "--json",
        str(out),
        "--main-size",
        "16",
        "--sizes",
        "8",
        "16",
        "--ppxf-spectra",
        "4",
        "--fit-spectra",
        "16",
        "--workers",
        "1",
        "2",
        "--workdir",
        str(tmp_path / "work"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert not list((tmp_path / "work").glob("*.png"))  # no quick-look figure inside the timed runs

    machine = report["machine"]
    for key in ("cpu", "cores", "memory_gb", "gpu", "driver", "gpus", "versions", "load_average_1min"):
        assert key in machine, key
    assert machine["cores"] >= 1 and machine["cpu"]

    results = report["results"]
    assert {r["method"] for r in results} == {"model", "ppxf", "fit"}
    schema = {
        "method": str,
        "device": str,
        "workers": int,
        "spectra": int,
        "seconds": float,
        "spectra_per_s": float,
        "joules_per_spectrum": float,
        "energy_method": str,
    }
    for r in results:
        for key, kind in schema.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert r["device"] == "cpu" or r["device"].startswith("cuda:")
        assert r["energy_method"] in ("nvml", "rapl", "estimate")
        assert r["seconds"] > 0 and r["spectra_per_s"] > 0 and r["joules_per_spectrum"] > 0
        assert math.isclose(r["spectra_per_s"], r["spectra"] / r["seconds"], rel_tol=1e-9)
        assert r["peak_rss_mb_per_worker"] and len(r["peak_rss_mb_per_worker"]) == r["workers"]
    model = [r for r in results if r["method"] == "model" and r["device"] == "cpu"]
    assert sorted(r["workers"] for r in model) == [1, 2] and all(r["spectra"] == 256 for r in model)
    ppxf = [r for r in results if r["method"] == "ppxf"]
    assert len(ppxf) == 1 and ppxf[0]["workers"] == 2 and ppxf[0]["spectra"] == 4
    assert isinstance(report["speedup_per_core"], float) and report["speedup_per_core"] > 0
    fit = [r for r in results if r["method"] == "fit"]
    assert len(fit) == 1 and fit[0]["workers"] == 2 and fit[0]["spectra"] == 16
    assert report["fit_speedup_per_core"]["end_to_end"] > 0 and report["fit_on_ppxf_sample"]["spectra"] == 4
    assert report["accuracy"]["fit_on_ppxf_sample"]["log_age"]["n"] >= 1

    sizes = report["cube_size_scaling"]["rows"]
    assert [r["spectra"] for r in sizes] == [64, 256] and report["cube_size_scaling"]["fit"]
    assert report["accuracy"]["ppxf"]["log_age"]["n"] >= 1
    assert report["accuracy"]["model"]["spaxels"] == 256
    # the readable side: Markdown report, plot, compare figures of model and pPXF on the same spectra
    md = out.with_suffix(".md").read_text()
    assert "faster per core than pPXF" in md and "| method | device | workers |" in md
    assert "The fit (`--method fit`) is" in md and "fit, pPXF's sample" in md
    assert "estimate" in md or "rapl" in md or "nvml" in md
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["compare_figures"] and all((tmp_path / f).exists() for f in report["compare_figures"])
    assert "speed-up per core" in proc.stdout and str(out) in proc.stdout
    assert all(
        r["host_energy_method"] == r["energy_method"] for r in results if r["device"] == "cpu"
    )  # the host is all

    # how a GPU row reads (this machine has none): GPU energy beside the host's, and the 50,000/s check
    from survey_proc.bench import write_report

    gpu = dict(
        model[-1],
        device="cuda:0",
        cluster="local-cuda",
        kind="model, whole cube, GPU X (local-cuda)",
        energy_method="nvml",
        joules_per_spectrum=1e-4,
        host_joules_per_spectrum=2e-4,
        host_energy_method="estimate",
        spectra_per_s=60_000.0,
        gpu_acceptance_50k=True,
    )
    report["results"].append(gpu)
    write_report(report, out)
    md = out.with_suffix(".md").read_text()
    assert "cuda:0, local-cuda" in md and "0.0001 J (GPU, NVML) + 0.0002 J (host, estimate)" in md
    assert "acceptance (>= 50,000 spectra/s): **met**" in md


class _FakeNVML(types.ModuleType):
    """pynvml's calls the meter uses, with a counter advancing 1,500 mJ per read (no GPU here)."""

    def __init__(self, readable: bool = True):
        super().__init__("pynvml")
        self.readable, self.mj, self.open = readable, 0, 0

    def nvmlInit(self):
        self.open += 1

    def nvmlShutdown(self):
        self.open -= 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.readable:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        self.mj += 1500
        return self.mj


def test_energy_meter_adds_the_host_to_the_gpu_and_falls_back(monkeypatch):
    """NVML's counter is read in millijoules around the window (per GPU); the host is metered too;
    a GPU without the counter leaves the host's figure, named, and NVML is shut down either way."""
    from survey_proc.bench import EnergyMeter

    nvml = _FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with EnergyMeter(gpus=[0, 1], watts_per_core=10.0) as meter:
        sum(range(200_000))
    assert meter.method == "nvml" and meter.host_method in ("rapl", "estimate")
    # reads: 1500, 3000 at the start; 4500, 6000 at the end: (4500 - 1500 + 6000 - 3000) mJ = 6 J
    assert meter.joules == pytest.approx(6.0)
    assert meter.total_joules == pytest.approx(6.0 + meter.host_joules) and "host" in meter.note
    assert nvml.open == 0

    unsupported = _FakeNVML(readable=False)
    monkeypatch.setitem(sys.modules, "pynvml", unsupported)
    with EnergyMeter(gpus=[0]) as meter:
        pass
    assert meter.method == meter.host_method and meter.joules == meter.host_joules
    assert "unreadable" in meter.note and unsupported.open == 0


def test_gpu_runs_say_why_they_did_not_run_without_cuda(tmp_path):
    """A GPU that torch cannot use (a CPU build of torch, no driver) is noted, nothing is started."""
    import torch

    from survey_proc.bench import gpu_runs

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rows, notes = gpu_runs(
        [{"index": 0, "name": "X", "uuid": "GPU-0"}],
        tmp_path / "cube.zarr",
        tmp_path,
        "default",
        10.0,
        2,
    )
    assert rows == [] and len(notes) == 1 and "cannot use CUDA" in notes[0]


class _FakeNVMLDevices(_FakeNVML):
    """Two GPUs as NVML lists them (PCI bus order), with the calls ``machine_info`` makes."""

    uuids = ("GPU-dae76d0e-3414-958a-8f3e-fc6682b36f31", "GPU-60f2c95a-0000-0000-0000-000000000000")

    def nvmlSystemGetDriverVersion(self):
        return b"550.54"

    def nvmlDeviceGetCount(self):
        return len(self.uuids)

    def nvmlDeviceGetUUID(self, handle):
        return self.uuids[handle]

    def nvmlDeviceGetName(self, handle):
        return f"GPU {handle}"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(total=80 * 2**30)


@pytest.mark.parametrize(
    ("visible", "listed"),
    [
        (None, [0, 1]),
        ("0", [0]),
        ("1", [1]),
        ("GPU-dae76d0e", [0]),  # a UUID's prefix, as CUDA accepts
        ("GPU-60f2c95a-0000-0000-0000-000000000000", [1]),
        ("GPU-ffffffff", []),
    ],
)
def test_gpus_leave_out_those_an_inherited_cuda_visible_devices_hides(monkeypatch, visible, listed):
    from survey_proc.bench import gpus

    nvml = _FakeNVMLDevices()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    found = gpus()
    assert [g["index"] for g in found] == listed and nvml.open == 0
    assert all(g["driver"] == "550.54" and g["memory_gb"] == 80.0 and g["uuid"].startswith("GPU-") for g in found)


def test_bench_results_go_under_the_current_folder_by_default():
    """Not into the source tree (a wheel install has none): ./survey-proc-bench/bench[-quick].json."""
    from survey_proc.bench import BenchConfig

    assert BenchConfig(quick=True).resolved().json == "survey-proc-bench/bench-quick.json"
    assert BenchConfig().resolved().json == "survey-proc-bench/bench.json"
    assert BenchConfig(json="benchmarks/results/bench.json").resolved().json == "benchmarks/results/bench.json"


def test_bench_options_reach_the_config_only_when_given(monkeypatch):
    import survey_proc.bench as bench
    from survey_proc.cli import main

    seen = []
    monkeypatch.setattr(bench, "run_bench", seen.append)
    assert main(["bench", "--quick", "--workers", "1", "2", "--no-gpu", "--quiet"]) == 0
    assert main(["bench"]) == 0
    quick, full = seen
    assert quick == bench.BenchConfig(quick=True, workers=[1, 2], gpu=False)
    assert full == bench.BenchConfig() and full.model == "default"


@pytest.mark.parametrize(("n", "regions"), [(100, 4), (4096, 8), (8192, 16)])
def test_samples_are_centred_on_the_cube_in_the_regions_asked(n, regions):
    """The strided sample of a 256x256 cube spans it symmetrically (a 91-wide grid once sat in its top-left
    three quarters, leaving the centre in one region: a worker idled while another fitted it)."""
    import numpy as np
    import xarray as xr

    from survey_proc.bench._cubes import _sample_selection

    ds = xr.Dataset({"flux": (("y", "x", "wave"), np.zeros((256, 256, 2), np.float32))})
    sel, chunks = _sample_selection(ds, n, regions)
    for axis in ("y", "x"):
        idx = np.arange(256)[sel[axis]]
        assert idx.size**2 >= n and abs((idx[0] + idx[-1]) - 255) <= 2
    blocks = -(-np.arange(256)[sel["y"]].size // chunks[0]) * -(-np.arange(256)[sel["x"]].size // chunks[1])
    assert blocks >= regions
