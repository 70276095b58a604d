"""Defaults in dask.config, the cache folder, and YAML options for dataclasses."""

from __future__ import annotations

import dataclasses

import dask
import pytest

from survey_proc import config


def test_packaged_defaults_are_registered_and_overridable():
    assert config.get("cluster.slurm.jobs") == 2  # from survey_proc/cluster/slurm.yaml
    assert config.get("no.such.key", "fallback") == "fallback"
    with dask.config.set({"survey-proc.run.batch-size": 7}):
        assert config.get("run.batch-size") == 7


def test_overrides_see_only_what_the_user_changed_however_often_asked():
    # the packaged files are parsed once per process: what one caller does to its copy stays there
    assert config.overrides() == {}
    config._packaged()["run"]["batch-size"] = -1
    with dask.config.set({"survey-proc.run.batch-size": 7}):
        assert config.overrides() == {"run.batch-size": 7}
    assert config.overrides() == {} and config.unknown_keys() == []


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SURVEY_PROC_CACHE", str(tmp_path / "c"))
    assert config.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_read_yaml(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "a.yaml").write_text("epochs: 3\nbands: [u, g]\n")
    assert config.read_yaml(tmp_path / "empty.yaml") == {}
    assert config.read_yaml(tmp_path / "a.yaml") == {"epochs": 3, "bands": ["u", "g"]}


@dataclasses.dataclass
class _Options:
    epochs: int = 1
    bands: tuple[str, ...] = ()


def test_dataclass_options_names_unknown_keys_and_makes_tuples():
    assert config.dataclass_options(_Options, {"bands": ["u", "g"]}, "test") == {"bands": ("u", "g")}
    assert config.dataclass_options(_Options, None, "test") == {}
    with pytest.raises(ValueError, match="unknown test option\\(s\\): colour, size"):
        config.dataclass_options(_Options, {"size": 1, "colour": "red", "epochs": 2}, "test")
