"""``--cluster local``: a LocalCluster of worker processes on this machine."""

from __future__ import annotations

import logging
import os

from survey_proc import config


def local_cluster(workers: int | None = None, threads_per_worker: int = 1):
    """A LocalCluster with one process per worker (default: one per core), its HTTP server on a free port."""
    from distributed import LocalCluster

    n = workers or max(1, (os.cpu_count() or 1) // max(threads_per_worker, 1))
    return LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                        dashboard_address=":0", memory_limit=config.get("cluster.memory-limit", "auto"),
                        silence_logs=logging.CRITICAL)  # task errors reach the user through the client
