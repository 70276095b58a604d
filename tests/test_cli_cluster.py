"""``survey-proc cluster job-script``: the script on stdout, then its note on a line of its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from survey_proc.cli import main

pytest.importorskip("dask_jobqueue")


@pytest.mark.parametrize("backend", ["slurm", "pbs"])
def test_job_script_is_whole_lines_and_the_note_goes_to_stderr(backend, capsys):
    assert main(["cluster", "job-script", "--cluster", backend]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("#!/usr/bin/env bash\n") and out.endswith("\n") and "dask_worker" in out
    assert err.startswith("# (the scheduler address ") and err.endswith(f"--cluster {backend}` submits the jobs)\n")


def test_the_note_follows_the_script_when_both_go_to_one_file():
    """Issue 16: the note was glued to the worker line; stdout is flushed before the note is written."""
    p = subprocess.run(
        [sys.executable, "-m", "survey_proc", "cluster", "job-script", "--cluster", "slurm"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "dask_worker" in lines[-2] and lines[-2].endswith("--death-timeout 120")
    assert lines[-1].startswith("# (the scheduler address ")


def test_a_script_without_a_final_newline_still_ends_its_line(monkeypatch, capsys):
    """The note is never glued onto the script's last line, whatever the backend's template ends with."""
    import survey_proc.cluster as cluster

    monkeypatch.setattr(cluster, "job_script", lambda backend: "#!/usr/bin/env bash\npython -m worker")
    assert main(["cluster", "job-script", "--cluster", "slurm"]) == 0
    out, err = capsys.readouterr()
    assert out == "#!/usr/bin/env bash\npython -m worker\n" and err.startswith("# (the scheduler address ")
