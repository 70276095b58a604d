"""--cluster specs: job scripts of the dask-jobqueue backends (golden files), GPU settings, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask
import pytest
import yaml

from survey_proc.cluster import GPU_RESOURCE, GPU_TASK, cluster_kind, job_script, make_client
from survey_proc.errors import SurveyProcError

PACKAGED = Path(__file__).parents[1] / "survey_proc" / "cluster"
DOCUMENTED = Path(__file__).parents[1] / "cluster"
GOLDEN = Path(__file__).with_name("golden")


def _packaged(backend: str) -> dict:
    """The packaged settings of a backend, so a user's ~/.config/dask cannot change the golden scripts."""
    settings = yaml.safe_load((PACKAGED / f"{backend}.yaml").read_text())["survey-proc"]["cluster"][backend]
    return {f"survey-proc.cluster.{backend}": settings}


@pytest.fixture()
def jobqueue():
    return pytest.importorskip("dask_jobqueue")  # the [hpc] extra (installed by .ci/run)


@pytest.mark.parametrize("backend", ["slurm", "pbs"])
@pytest.mark.parametrize("gpus", [0, 2])
def test_job_scripts_match_golden_files(backend, gpus, jobqueue):
    name = f"{backend}{'-gpu' if gpus else ''}-job.sh"
    with dask.config.set(_packaged(backend)), dask.config.set({f"survey-proc.cluster.{backend}.gpus-per-job": gpus}):
        script = job_script(backend).replace(sys.executable, "PYTHON")
    assert script == (GOLDEN / name).read_text()


def test_gpu_jobs_request_gpus_and_tag_workers(jobqueue):
    with (
        dask.config.set(_packaged("slurm")),
        dask.config.set({"survey-proc.cluster.slurm.gpus-per-job": 4, "survey-proc.cluster.slurm.job.cores": 16}),
    ):
        script = job_script("slurm")
        kind = cluster_kind("slurm")
    assert "#SBATCH --gres=gpu:4" in script
    assert "-m dask cuda worker" in script and "--resources GPU=1" in script
    assert "--nthreads 4" in script  # 16 cores shared by one worker per GPU
    assert kind.device == "cuda" and 0 < kind.resources["GPU"] < 1  # a share of the worker's GPU=1
    with (
        dask.config.set(_packaged("pbs")),
        dask.config.set({"survey-proc.cluster.pbs.gpus-per-job": 1, "survey-proc.cluster.pbs.job.memory": "100GB"}),
    ):
        assert "#PBS -l select=1:ncpus=8:ngpus=1:mem=94GB" in job_script("pbs")


def test_user_config_overrides_packaged_defaults(jobqueue):
    with dask.config.set(
        {
            "survey-proc.cluster.slurm.job.queue": "gpu-long",
            "survey-proc.cluster.slurm.job.account": "astro42",
            "survey-proc.cluster.slurm.job.job-script-prologue": ["source ~/venv/bin/activate"],
        }
    ):
        script = job_script("slurm")
    assert "#SBATCH -p gpu-long" in script and "#SBATCH -A astro42" in script
    assert "source ~/venv/bin/activate\n" in script


def test_documented_copies_equal_the_packaged_yaml():
    for path in PACKAGED.glob("*.yaml"):
        assert (DOCUMENTED / path.name).read_text() == path.read_text(), f"cluster/{path.name} differs from {path}"


def test_cluster_kinds_and_errors():
    assert cluster_kind("local").device == "cpu" and cluster_kind("local").resources is None
    assert cluster_kind("local-cuda").device == "cuda" and cluster_kind("local-cuda").resources == GPU_TASK
    assert cluster_kind("tcp://10.0.0.1:8786").device == "cpu"
    assert cluster_kind("slurm").device == "cpu"  # packaged default: CPU jobs
    with pytest.raises(SurveyProcError, match="unknown --cluster 'kubernetes'"):
        cluster_kind("kubernetes")
    with pytest.raises(SurveyProcError, match="submits no job scripts"):
        job_script("local")


def test_local_cuda_without_dask_cuda_says_what_to_install():
    pytest.importorskip("distributed")
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        with pytest.raises(SurveyProcError, match=r"needs dask-cuda.*survey-proc\[gpu\]"), make_client("local-cuda"):
            pass
    else:
        pytest.skip("dask-cuda is installed here")


def test_gpu_workers_share_the_cores_among_them():
    from survey_proc.cluster import gpu_worker_threads

    assert gpu_worker_threads("auto", 16, 1) == 16  # one GPU: every core feeds it
    assert gpu_worker_threads(None, 16, 4) == 4
    assert gpu_worker_threads("auto", 2, 4) == 1  # more GPUs than cores: still one thread each
    assert gpu_worker_threads(3, 16, 1) == 3  # a number is taken as it is
    with pytest.raises(SurveyProcError, match="threads-per-worker must be auto or at least 1"):
        gpu_worker_threads(0, 16, 1)


def _meet(mine: str, other: str) -> bool:
    """Set event ``mine``, then wait for ``other``: True only if both tasks ran at the same time."""
    from distributed import Event

    Event(mine).set()
    return Event(other).wait(timeout=60)


def test_regions_on_a_gpu_worker_run_on_all_its_threads_at_once():
    """Region tasks ask for a share of a GPU worker's GPU=1, not all of it: a worker with two threads
    runs two regions together (each task waits for the other; asking for the whole GPU, as before,
    the first waited alone: [False, True])."""
    from distributed import Client, LocalCluster

    resources = cluster_kind("local-cuda").resources
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, resources=dict(GPU_RESOURCE), dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        a = client.submit(_meet, "a", "b", resources=resources, pure=False)
        b = client.submit(_meet, "b", "a", resources=resources, pure=False)
        assert client.gather([a, b]) == [True, True]


def test_cli_prints_the_job_script(jobqueue):
    proc = subprocess.run(
        [sys.executable, "-m", "survey_proc", "cluster", "job-script", "--cluster", "pbs"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!/usr/bin/env bash\n") and "#PBS -l walltime=" in proc.stdout
    assert "filled in when" in proc.stderr


def test_gpu_batch_size_from_free_memory():
    from survey_proc.estimators import gpu_batch_size

    # 80 GB free, half of it, 200 kB per spectrum -> 200,000 -> largest power of two 131072, capped
    assert gpu_batch_size(80e9, 2e5, 0.5, 1024, 65536) == 65536
    assert gpu_batch_size(8e9, 2e5, 0.5, 1024, 65536) == 16384
    assert gpu_batch_size(1e6, 2e5, 0.5, 1024, 65536) == 1024  # never below the CPU batch
    assert gpu_batch_size(0, 2e5, 0.5, 1024, 65536) == 1024


def test_gpu_settings_read_as_meant():
    """Device lists count their GPUs (0 from an environment variable is GPU 0, not "unset"); an
    out-of-memory error is recognised also as TorchScript raises it (a RuntimeError naming it)."""
    import torch

    from survey_proc.cluster._cuda import _visible_gpus
    from survey_proc.estimators import is_out_of_memory

    assert _visible_gpus(0, None) == 1 and _visible_gpus("0,1", None) == 2 and _visible_gpus(None, 3) == 3
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


def _worker_settings():
    import os

    import dask.config

    return (
        os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        dask.config.get("distributed.worker.profile.enabled"),
        dask.config.get("distributed.admin.tick.interval"),
    )


def test_local_workers_start_with_our_settings():
    """Heap reuse (malloc tunables), no sampling profiler and a slow housekeeping tick in every local
    worker, as configured."""
    from distributed import Client

    from survey_proc.cluster import local_cluster

    with local_cluster(2, 1) as cluster, Client(cluster) as client:
        settings = set(client.run(_worker_settings).values())
    assert settings == {("67108864", False, "1s")}


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
