"""--cluster specs: what each means for the tasks, the clients they give, and their errors."""

from __future__ import annotations

import pytest

from survey_proc.cluster import GPU_RESOURCE, GPU_TASK, KNOWN, cluster_kind, job_script, make_client
from survey_proc.errors import SurveyProcError


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


def test_none_gives_no_client_and_unknown_specs_start_nothing():
    with make_client("none") as client:
        assert client is None
    with pytest.raises(SurveyProcError, match="unknown --cluster 'k8s'"), make_client("k8s"):
        pass
    assert KNOWN == ("local", "local-cuda", "slurm", "pbs", "none")


def test_local_client_runs_tasks():
    with make_client("local", workers=1) as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert len(client.scheduler_info()["workers"]) == 1


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
