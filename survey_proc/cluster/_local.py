"""``--cluster local``: a LocalCluster of worker processes on this machine."""

from __future__ import annotations

import ast
import ctypes
import logging
import sys
from pathlib import Path

import dask.config
from dask.system import CPU_COUNT  # cores this process may use (affinity, cgroup quota)

from survey_proc import config

log = logging.getLogger(__name__)


def worker_environ() -> dict[str, str]:
    """Environment set before each worker process starts: Dask's ``pre-spawn-environ`` plus ours.

    Dask sets ``MALLOC_TRIM_THRESHOLD_=65536``, which (as any explicit malloc tunable does) also
    turns off glibc's adaptive mmap threshold: every NumPy/torch temporary above 128 KiB is then a
    fresh mmap with page faults, and preprocessing runs 3-4x slower. ``survey-proc.cluster.
    worker-environ`` restores heap reuse (see survey-proc.yaml).
    """
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.update({k: v for k, v in (config.get("cluster.worker-environ") or {}).items() if v is not None})
    return env


#: glibc mallopt parameters of the malloc variables in ``worker-environ`` (malloc.h)
_MALLOPT = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3}


def tune_heap() -> bool:
    """Give this process the heap settings local workers start with (``worker-environ``), via glibc's
    ``mallopt``: for work done in the driver (``--cluster none``, evaluation, training), where
    batches of large temporaries otherwise go back to the system after each use (measured: the
    default network ~1.8x slower per spectrum). False where there is no glibc (nothing changed).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    env = worker_environ()
    for key, param in _MALLOPT.items():
        try:
            value = int(env[key])
        except (KeyError, TypeError, ValueError):
            continue  # unset, or not a plain byte count (mallopt takes a C int): glibc's default stays
        if 0 <= value < 2**31:
            libc.mallopt(param, value)
    return True


def worker_config() -> dict:
    """Dask settings a local cluster (its scheduler and worker processes) starts with: the workers'
    environment; Dask's sampling profiler, whose 10 ms stack walks cost ~15 % of a core, off unless
    ``survey-proc.cluster.worker-profile``; and slower housekeeping (``cluster.tick-interval``,
    ``cluster.system-monitor-interval``): Dask's defaults (a 20 ms event-loop tick, 0.5 s system
    monitor) kept an idle 2-worker cluster at 12 % of a core, 4 % with 1 s and 2 s."""
    settings = {
        "distributed.nanny.pre-spawn-environ": worker_environ(),
        "distributed.worker.profile.enabled": bool(config.get("cluster.worker-profile", False)),
    }
    for key, dask_key in (
        ("cluster.tick-interval", "distributed.admin.tick.interval"),
        ("cluster.system-monitor-interval", "distributed.admin.system-monitor.interval"),
    ):
        if config.get(key) is not None:
            settings[dask_key] = config.get(key)
    return settings


def dashboard_address() -> str | None:
    """Where Dask's dashboard listens (``survey-proc.cluster.dashboard-address``): by default this machine
    only, since it shows (and lets anyone who reaches it stop) the work; None: no dashboard."""
    return config.get("cluster.dashboard-address", "127.0.0.1:0")


def _guarded(tree: ast.Module) -> bool:
    """Whether a module's top level has ``if __name__ == "__main__":``."""
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [node.test.left, *node.test.comparators]
            if any(isinstance(n, ast.Name) and n.id == "__name__" for n in names) and any(
                isinstance(n, ast.Constant) and n.value == "__main__" for n in names
            ):
                return True
    return False


def unguarded_script() -> str | None:
    """The script this process runs, when its top level lacks ``if __name__ == "__main__":``: worker
    processes start by importing it again (Python's ``spawn``, which Dask uses), so they would run
    the script themselves and die ("Nanny failed to start"). None for a guarded script, an
    interactive session or a notebook."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py") or Path(path).name == "__main__.py":
        return None  # a package's __main__.py (python -m ...): spawn does not run it again
    try:
        with open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    return None if _guarded(tree) else str(path)


def local_cluster(workers: int | None = None, threads_per_worker: int = 1, **kwargs):
    """A LocalCluster with one process per worker (default: one per core), dashboard on a free port.

    ``kwargs`` go to ``LocalCluster`` (e.g. ``env`` for variables set after the worker starts). Called
    from a script without a ``__main__`` guard (:func:`unguarded_script`), the workers are threads of
    this process instead, with a note saying how to get processes back.
    """
    from distributed import LocalCluster

    n = workers or max(1, CPU_COUNT // max(threads_per_worker, 1))
    script = unguarded_script()
    if script is not None:
        log.warning(
            f'note: {script} has no `if __name__ == "__main__":` guard, so worker processes cannot start '
            f"(each would run the script again); running {n} worker thread(s) in this process instead. Put "
            "the script's code under that guard to use worker processes."
        )
        kwargs = {k: v for k, v in kwargs.items() if k != "env"}
        n, threads_per_worker, processes = 1, n * threads_per_worker, False
    else:
        processes = True
    with dask.config.set(worker_config()):
        return LocalCluster(
            n_workers=n,
            threads_per_worker=threads_per_worker,
            processes=processes,
            dashboard_address=kwargs.pop("dashboard_address", dashboard_address()),
            memory_limit=config.get("cluster.memory-limit", "auto"),
            silence_logs=logging.CRITICAL,
            **kwargs,
        )  # task errors reach the user through the client
