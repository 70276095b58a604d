"""The engine's and the estimators' settings on cluster workers: GPU batch sizes and pinned buffers, the
Zarr decoding pool of each worker. (The clusters themselves: tests/cluster/.)"""

from __future__ import annotations

import dask
import pytest


def test_gpu_batch_size_from_free_memory():
    from survey_proc.estimators import gpu_batch_size

    # 80 GB free, half of it, 200 kB per spectrum -> 200,000 -> largest power of two 131072, capped
    assert gpu_batch_size(80e9, 2e5, 0.5, 1024, 65536) == 65536
    assert gpu_batch_size(8e9, 2e5, 0.5, 1024, 65536) == 16384
    assert gpu_batch_size(1e6, 2e5, 0.5, 1024, 65536) == 1024  # never below the CPU batch
    assert gpu_batch_size(0, 2e5, 0.5, 1024, 65536) == 1024


def test_gpu_settings_read_as_meant():
    """An out-of-memory error is recognised also as TorchScript raises it (a RuntimeError naming it)."""
    import torch

    from survey_proc.estimators import is_out_of_memory

    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA error"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_gpu_pinned_buffer_fits_the_chunks_not_the_batch():
    from survey_proc.estimators import pinned_rows

    assert pinned_rows(1024, 65536) == 1024  # a region of 1,024 spectra pins 1,024 rows, not 65,536
    assert pinned_rows(1000, 65536) == 1024
    assert pinned_rows(3000, 2048) == 3000  # never fewer rows than the chunk
    assert pinned_rows(1, 65536) == 1


@pytest.mark.parametrize("model", ["narrowband", "ugriz-maps"])
def test_photometric_models_keep_their_batch_on_a_gpu(model):
    """Sizing batches from device memory measures (n, channels, wavelengths) inputs: photometric
    bundles (SEDs, image tiles) keep their own batch size on a GPU instead of failing to load.
    (Decided before any CUDA call, so it is checked here on a CPU.)"""
    import torch

    from survey_proc.estimators import batch_size_for, load_manifest

    manifest = load_manifest(model)
    with dask.config.set({"survey-proc.gpu.batch-size": "auto"}):
        assert batch_size_for(torch.device("cuda"), manifest, None) == int(manifest.batch_size or 1024)


def _zarr_threads():
    import zarr

    return zarr.config.get("threading.max_workers", None)


def _limited_pool(opts) -> int | None:
    from survey_proc.engine import limit_io_threads

    limit_io_threads(opts)
    return _zarr_threads()


def _pool_in_each_worker(client, opts) -> set:
    """Zarr's pool size after limit_io_threads, run as a task on each worker (as the engine does)."""
    return {
        client.submit(_limited_pool, opts, workers=[w], pure=False).result() for w in client.scheduler_info()["workers"]
    }


def test_worker_setup_sizes_the_zarr_decoding_pool():
    """setup_worker gives each worker a Zarr pool of its own threads (not one per core of the
    machine per worker), on CPUs and GPUs alike (a local-cuda worker has the cores as threads);
    outside a worker GPUs keep Zarr's default; a configured number wins."""
    from dataclasses import replace

    import zarr
    from distributed import Client

    from survey_proc.cluster import local_cluster
    from survey_proc.engine import RegionOptions, limit_io_threads

    with local_cluster(2, 1) as cluster, Client(cluster) as client:
        opts = RegionOptions(cube="c.zarr", out="m.zarr", model="default", redshift=0.0, min_snr=5.0, threads=1)
        assert _pool_in_each_worker(client, opts) == {1}
        assert _pool_in_each_worker(client, replace(opts, device="cuda:0")) == {1}  # processes sharing a GPU
    with local_cluster(1, 2) as cluster, Client(cluster) as client:  # a GPU worker with threads
        assert _pool_in_each_worker(client, replace(opts, device="cuda:0")) == {2}
    with zarr.config.set({"threading.max_workers": None}):
        limit_io_threads(RegionOptions("c", "m", "default", 0.0, 5.0, device="cuda:0", threads=1))
        assert _zarr_threads() is None
        with dask.config.set({"survey-proc.run.io-threads": 3}):
            limit_io_threads(RegionOptions("c", "m", "default", 0.0, 5.0, threads=1))
        assert _zarr_threads() == 3
        with dask.config.set({"survey-proc.run.io-threads": 0}), pytest.raises(ValueError, match="io-threads"):
            limit_io_threads(RegionOptions("c", "m", "default", 0.0, 5.0, threads=1))
