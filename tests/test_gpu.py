"""The GPU paths on a real GPU (marker ``gpu``; skipped where torch sees no CUDA device).

Run on a GPU node with ``pytest -m gpu`` (``benchmarks/gpu/run_on_gpu.sh`` does). What runs on CPUs
alone is tested there: batch sizing, pinned rows and TF32 settings in test_cluster.py, local-cuda
threads in cluster/test_cuda.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")]

OUTPUTS = ("log_age", "metallicity", "av", "sigma")


def _spectra(default_bundle, n: int = 600) -> np.ndarray:
    from survey_proc.estimators import load_manifest

    spec = load_manifest(str(default_bundle)).input
    rng = np.random.default_rng(3)
    return (1.0 + 0.05 * rng.standard_normal((n, len(spec.channels), spec.wave.size))).astype(np.float32)


def test_model_on_cuda_matches_cpu(default_bundle):
    """The same bundle on the GPU (IEEE float32, frozen) gives the CPU's numbers to float32 rounding,
    in batches the free device memory allows (larger than the CPU's)."""
    from survey_proc.estimators import load_estimator

    x = _spectra(default_bundle)
    cpu = load_estimator(str(default_bundle), device="cpu", threads=1)
    gpu = load_estimator(str(default_bundle), device="cuda", threads=1)
    assert gpu.precision == "float32"
    assert gpu.batch_size >= cpu.batch_size and gpu.batch_size & (gpu.batch_size - 1) == 0
    a, b = cpu.predict(x), gpu.predict(x)
    assert set(a) == set(b)
    for name in a:
        scale = max(float(np.nanmax(np.abs(a[name]))), 1e-6)
        assert np.allclose(a[name], b[name], rtol=1e-3, atol=1e-4 * scale, equal_nan=True), name


def test_gpu_batches_split_and_join(default_bundle):
    """A chunk larger than the batch size runs in several forward passes through the pinned buffer and
    comes back in order, as one pass would give it."""
    import dask.config

    from survey_proc.estimators import TorchScriptEstimator, load_manifest

    x = _spectra(default_bundle, 300)
    manifest = load_manifest(str(default_bundle))
    with dask.config.set({"survey-proc.gpu.batch-size": 64}):  # not through load_estimator's per-process cache
        small = TorchScriptEstimator(manifest, device="cuda")
    whole = TorchScriptEstimator(manifest, device="cuda")
    assert small.batch_size == 64
    a, b = small.predict(x), whole.predict(x)
    for name in a:
        assert np.allclose(a[name], b[name], rtol=1e-4, atol=1e-5, equal_nan=True), name


@pytest.mark.parametrize("cluster", ["local-cuda", "local"])
def test_run_on_gpu_matches_cpu(mock16, tmp_path, cluster):
    """Zarr in, verified maps out on the GPU: through dask-cuda's LocalCUDACluster and through CPU
    worker processes sharing the GPU; the maps equal the CPU run's to float32 rounding."""
    if cluster == "local-cuda":
        pytest.importorskip("dask_cuda")
    from survey_proc.engine import RunConfig, run

    ref = run(
        RunConfig(
            cube=str(mock16), out=str(tmp_path / "cpu.zarr"), cluster="local", workers=1, device="cpu", progress=False
        )
    )
    s = run(
        RunConfig(
            cube=str(mock16),
            out=str(tmp_path / "gpu.zarr"),
            cluster=cluster,
            workers=2 if cluster == "local" else None,
            device="cuda",
            progress=False,
        )
    )
    assert s.verified and s.spectra == ref.spectra and s.fitted == ref.fitted
    a, b = xr.open_zarr(tmp_path / "cpu.zarr"), xr.open_zarr(tmp_path / "gpu.zarr")
    assert b.attrs["run_options"]["device"].startswith("cuda")
    assert b.attrs["network_precision"] == "float32"
    for name in OUTPUTS:
        assert np.allclose(a[name], b[name], rtol=1e-3, atol=1e-3, equal_nan=True), name
    assert (a.flag.values != b.flag.values).mean() <= 0.01


def test_nvml_energy_counter():
    """The GPU's own energy counter reads a positive number over a busy second (what the bench reports)."""
    pytest.importorskip("pynvml")
    import time

    from survey_proc.bench import EnergyMeter

    x = torch.randn(4096, 4096, device="cuda")
    with EnergyMeter(gpus=[0], watts_per_core=10.0) as meter:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            x = (x @ x).clamp_(-1, 1)
        torch.cuda.synchronize()
    assert meter.method == "nvml"
    assert 10.0 < meter.joules < 2000.0


def test_fit_on_cuda_matches_cpu(mock16, tmp_path):
    """--method fit on the GPU gives the CPU's answers to the precision of the fit (float32 sums in
    another order can stop the iterations one step apart)."""
    from survey_proc.engine import RunConfig, run

    run(RunConfig(cube=str(mock16), out=str(tmp_path / "cpu.zarr"), model="fit", cluster="none", device="cpu"))
    s = run(RunConfig(cube=str(mock16), out=str(tmp_path / "gpu.zarr"), model="fit", cluster="none", device="cuda"))
    assert s.verified
    a, b = xr.open_zarr(tmp_path / "cpu.zarr"), xr.open_zarr(tmp_path / "gpu.zarr")
    good = (a.flag.values == 0) & (b.flag.values == 0)
    for name in ("log_age", "metallicity", "av", "sigma", "velocity"):
        diff = np.abs(a[name].values - b[name].values)[good]
        assert np.median(diff / a[f"{name}_err"].values[good]) < 0.1, name
