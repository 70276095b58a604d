"""Pinned downloads from the package registry: the cache, the digest check, errors that say how to fix them.

pip itself is replaced by a stand-in here: no test reaches the registry.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from survey_proc import fetch
from survey_proc.errors import DataUnavailableError

PAYLOAD = b"pinned distribution"
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SURVEY_PROC_CACHE", str(tmp_path))
    return tmp_path / "downloads"


def _fake_pip(monkeypatch, payload: bytes | None, calls: list):
    """pip download writing ``payload`` as the requested file (None: pip fails)."""

    def run(cmd, **kwargs):
        calls.append(cmd)
        if payload is None:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for pkg==1\n")
        dest = cmd[cmd.index("-d") + 1]
        (Path(dest) / "pkg-1.tar.gz").write_bytes(payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", run)


def test_sha256_of(tmp_path):
    (tmp_path / "f").write_bytes(PAYLOAD)
    assert fetch.sha256_of(tmp_path / "f", block=4) == DIGEST


def test_downloads_once_then_serves_the_cache(cache, monkeypatch):
    calls: list = []
    _fake_pip(monkeypatch, PAYLOAD, calls)
    path = fetch.registry_file("pkg==1", "pkg-1.tar.gz", DIGEST, pip_args=("--no-binary", ":all:"))
    assert path == cache / "pkg-1.tar.gz" and path.read_bytes() == PAYLOAD
    assert calls[0][-3:] == ["--no-binary", ":all:", "pkg==1"] and "--no-deps" in calls[0]
    assert fetch.registry_file("pkg==1", "pkg-1.tar.gz", DIGEST) == path
    assert len(calls) == 1


def test_a_file_that_does_not_match_its_pin_is_refused(cache, monkeypatch):
    _fake_pip(monkeypatch, b"something else", [])
    with pytest.raises(DataUnavailableError, match=r"expected the pinned .* refusing it\. copy it by hand"):
        fetch.registry_file("pkg==1", "pkg-1.tar.gz", DIGEST, how_to_supply="copy it by hand")
    assert not (cache / "pkg-1.tar.gz").exists()


def test_pip_failures_are_reported_with_pips_words(cache, monkeypatch):
    _fake_pip(monkeypatch, None, [])
    with pytest.raises(DataUnavailableError, match=r"No matching distribution found.*copy it by hand"):
        fetch.registry_file("pkg==1", "pkg-1.tar.gz", DIGEST, how_to_supply="copy it by hand")
