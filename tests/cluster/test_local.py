"""--cluster local: worker processes start with the configured environment and Dask settings."""

from __future__ import annotations

import dask
from distributed import Client

from survey_proc.cluster import local_cluster, tune_heap


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
    with local_cluster(2, 1) as cluster, Client(cluster) as client:
        settings = set(client.run(_worker_settings).values())
    assert settings == {("67108864", False, "1s")}


def test_the_driver_takes_the_workers_heap_settings():
    assert tune_heap() is True  # glibc: mallopt applied (CI and the development machines are Linux)
    with dask.config.set({"survey-proc.cluster.worker-environ": {"MALLOC_TRIM_THRESHOLD_": "not-a-number"}}):
        assert tune_heap() is True  # a value mallopt cannot take is left to glibc's default


def test_the_dashboard_listens_on_this_machine_only():
    """Dask's dashboard shows the work and can stop it: by default only this machine reaches it (issue 16:
    it listened on every interface)."""
    import psutil

    from survey_proc.cluster import local_cluster

    cluster = local_cluster(1, 1)
    try:
        port = int(cluster.dashboard_link.split(":")[2].split("/")[0])
        listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"}
        assert listening == {"127.0.0.1"}, listening
    finally:
        cluster.close()


def test_only_a_plain_script_without_a_main_guard_is_unguarded(tmp_path, monkeypatch):
    """Such a script gets worker threads (its workers would run it again); a guarded script, a
    package's ``__main__.py`` (``python -m survey_proc``: spawn never reruns it) and a notebook keep
    worker processes."""
    import sys
    import types

    from survey_proc.cluster import unguarded_script

    def main_module(name: str | None, text: str = "") -> None:
        module = types.ModuleType("__main__")
        if name is not None:
            (tmp_path / name).write_text(text)
            module.__file__ = str(tmp_path / name)
        monkeypatch.setitem(sys.modules, "__main__", module)

    main_module("plain.py", "import survey_proc\nsurvey_proc.run('c.zarr')\n")
    assert unguarded_script() == str(tmp_path / "plain.py")
    main_module("guarded.py", "import survey_proc\nif __name__ == '__main__':\n    survey_proc.run('c.zarr')\n")
    assert unguarded_script() is None
    main_module("__main__.py", "import sys\nfrom survey_proc.cli import main\nsys.exit(main())\n")
    assert unguarded_script() is None
    main_module(None)  # an interactive session or a notebook
    assert unguarded_script() is None
