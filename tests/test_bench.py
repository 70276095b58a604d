"""survey-proc bench --quick at toy size: the JSON has the schema scripts rely on (no timing checks)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytest.importorskip("ppxf")


def test_bench_quick_writes_the_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "survey_proc", "bench", "--quick", "--json", str(out), "--main-size", "16",
           "--sizes", "8", "16", "--ppxf-spectra", "4", "--workers", "1", "2", "--workdir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())

    machine = report["machine"]
    for key in ("cpu", "cores", "memory_gb", "gpu", "driver", "gpus", "versions", "load_average_1min"):
        assert key in machine, key
    assert machine["cores"] >= 1 and machine["cpu"]

    results = report["results"]
    assert {r["method"] for r in results} == {"model", "ppxf"}
    schema = {"method": str, "device": str, "workers": int, "spectra": int, "seconds": float,
              "spectra_per_s": float, "joules_per_spectrum": float, "energy_method": str}
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

    sizes = report["cube_size_scaling"]["rows"]
    assert [r["spectra"] for r in sizes] == [64, 256] and report["cube_size_scaling"]["fit"]
    assert report["accuracy"]["ppxf"]["log_age"]["n"] >= 1
    assert report["accuracy"]["model"]["spaxels"] == 256
    # the readable side: Markdown report, plot, compare figures of model and pPXF on the same spectra
    md = out.with_suffix(".md").read_text()
    assert "faster per core than pPXF" in md and "| method | device | workers |" in md
    assert "estimate" in md or "rapl" in md or "nvml" in md
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["compare_figures"] and all((tmp_path / f).exists() for f in report["compare_figures"])
    assert "speed-up per core" in proc.stdout and str(out) in proc.stdout
