"""--cluster local-cuda without a GPU: the threads of each GPU worker, the GPUs a device list names."""

from __future__ import annotations

import pytest

from survey_proc.cluster import gpu_worker_threads
from survey_proc.errors import SurveyProcError


def test_gpu_workers_share_the_cores_among_them():
    assert gpu_worker_threads("auto", 16, 1) == 16  # one GPU: every core feeds it
    assert gpu_worker_threads(None, 16, 4) == 4
    assert gpu_worker_threads("auto", 2, 4) == 1  # more GPUs than cores: still one thread each
    assert gpu_worker_threads(3, 16, 1) == 3  # a number is taken as it is
    with pytest.raises(SurveyProcError, match="threads-per-worker must be auto or at least 1"):
        gpu_worker_threads(0, 16, 1)


def test_device_lists_count_their_gpus():
    """0 from an environment variable is GPU 0, not "unset"; workers, when given, win."""
    from survey_proc.cluster._cuda import _visible_gpus  # no public name: how the cluster counts its workers

    assert _visible_gpus(0, None) == 1 and _visible_gpus("0,1", None) == 2 and _visible_gpus(None, 3) == 3
    assert _visible_gpus(" 2 , 3 ,", None) == 2
