"""One place that turns ``--cluster`` into a Dask client (one module per backend).

``local`` (default): LocalCluster on this machine; ``none``: no cluster, tasks run in the calling
process one after another (debugging, profiling); ``tcp://HOST:PORT`` (or any scheduler address):
connect to a running scheduler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from survey_proc.errors import SurveyProcError

KNOWN = ("local", "none")


@contextlib.contextmanager
def make_client(spec: str = "local", workers: int | None = None, threads_per_worker: int = 1) -> Iterator:
    """Context manager yielding a ``distributed.Client`` (or None for ``none``); closes what it started."""
    if spec == "none":
        yield None
        return
    from distributed import Client

    if spec == "local":
        from survey_proc.cluster._local import local_cluster

        cluster = local_cluster(workers, threads_per_worker)
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    if "://" in spec or ":" in spec:
        try:
            client = Client(spec, timeout="30s")
        except OSError as exc:
            raise SurveyProcError(f"could not connect to the Dask scheduler at {spec}: {exc}") from exc
        try:
            yield client
        finally:
            client.close()
        return
    raise SurveyProcError(f"unknown --cluster {spec!r}: use one of {', '.join(KNOWN)} or a scheduler address "
                          "(tcp://host:8786)")
