"""Defaults in the ``dask.config`` namespace ``survey-proc`` and the dataclass configs built from them.

The packaged YAML (``survey_proc/survey-proc.yaml``) is registered as dask defaults on import, the
way dask-jobqueue does it, so users override any key in ``~/.config/dask/`` or with
``DASK_SURVEY_PROC__...`` environment variables.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.config
import yaml

_DEFAULTS_FILE = Path(__file__).with_name("survey-proc.yaml")
#: packaged cluster defaults (survey-proc.cluster.<backend>), installed as package data
_CLUSTER_FILES = sorted((Path(__file__).parent / "cluster").glob("*.yaml"))


#: sections whose keys are free (environment variables, codec or jobqueue options): not checked
FREE_SECTIONS = ("cluster.worker-environ", "store.compressor", "cluster.slurm", "cluster.pbs", "cluster.local-cuda")


@functools.cache
def _packaged_files() -> tuple[dict[str, Any], ...]:
    """The packaged YAML files, parsed once per process (a run compared against them three times, each
    parse 30 ms of its fixed cost)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where PyYAML has it
    out = []
    for path in (_DEFAULTS_FILE, *_CLUSTER_FILES):
        with open(path) as f:
            out.append(yaml.load(f, Loader=loader) or {})
    return tuple(out)


def _packaged() -> dict[str, Any]:
    """The packaged defaults, merged (the ``survey-proc`` namespace); a fresh copy."""
    merged: dict[str, Any] = {}
    for tree in _packaged_files():
        dask.config.update(merged, copy.deepcopy(tree))
    return merged.get("survey-proc", {})


def _register_defaults() -> None:
    for tree in _packaged_files():
        dask.config.update_defaults(copy.deepcopy(tree))


_register_defaults()


def get(key: str, default: Any = None) -> Any:
    """A value from the ``survey-proc`` namespace, e.g. ``get("run.batch-size")``."""
    return dask.config.get(f"survey-proc.{key}", default=default)


def flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"run": {"min-snr": 5}}`` as ``{"run.min-snr": 5}``, ``_`` in keys read as ``-`` (free sections
    kept whole)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{str(key).replace('_', '-')}"  # as dask.config.get reads it: min_snr is min-snr
        if isinstance(value, Mapping) and value and name not in FREE_SECTIONS:
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def effective() -> dict[str, Any]:
    """Every ``survey-proc`` setting as it holds now (defaults, config files, ``DASK_SURVEY_PROC__*``,
    ``dask.config.set``), flat."""
    return flat(dask.config.get("survey-proc", default={}) or {})


def overrides() -> dict[str, Any]:
    """The settings whose value differs from the packaged default (what the user set), flat."""
    packaged = flat(_packaged())
    return {k: v for k, v in effective().items() if k in packaged and v != packaged[k]}


def unknown_keys() -> list[str]:
    """Settings survey-proc does not know (a misspelled key would otherwise be silently ignored),
    each with the closest known key where there is one: ``survey-proc.run.min-snrr (did you mean
    survey-proc.run.min-snr?)``."""
    known = sorted(flat(_packaged()))
    out = []
    for key in effective():
        if key in known or any(key == free or key.startswith(f"{free}.") for free in FREE_SECTIONS):
            continue
        close = difflib.get_close_matches(key.replace("_", "-"), known, n=1, cutoff=0.75)
        out.append(f"survey-proc.{key}" + (f" (did you mean survey-proc.{close[0]}?)" if close else ""))
    return sorted(out)


def cache_dir() -> Path:
    """The folder where fetched and converted data live (created on demand)."""
    configured = os.environ.get("SURVEY_PROC_CACHE") or get("cache-dir")
    if configured:
        path = Path(configured).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("survey-proc"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file's top-level mapping (an empty file gives ``{}``)."""
    with open(path) as f:
        return yaml.safe_load(f) or {}


def dataclass_options(cls: type, raw: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``raw`` (read from YAML or JSON) as keyword arguments of the dataclass ``cls``: a key that is
    not one of its fields is a ValueError naming it (``unknown <what> option(s): ...``); lists
    become tuples (YAML and JSON have no tuples)."""
    raw = dict(raw or {})
    unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} option(s): {', '.join(sorted(unknown))}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
