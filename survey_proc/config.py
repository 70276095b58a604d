"""Defaults in the ``dask.config`` namespace ``survey-proc`` and the dataclass configs built from them.

The packaged YAML (``survey_proc/survey-proc.yaml``) is registered as dask defaults on import, the
way dask-jobqueue does it, so users override any key in ``~/.config/dask/`` or with
``DASK_SURVEY_PROC__...`` environment variables.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.config
import yaml

_DEFAULTS_FILE = Path(__file__).with_name("survey-proc.yaml")
#: packaged cluster defaults (survey-proc.cluster.<backend>), installed as package data
_CLUSTER_FILES = sorted((Path(__file__).parent / "cluster").glob("*.yaml"))


def _register_defaults() -> None:
    for path in (_DEFAULTS_FILE, *_CLUSTER_FILES):
        with open(path) as f:
            dask.config.update_defaults(yaml.safe_load(f))


_register_defaults()


def get(key: str, default: Any = None) -> Any:
    """A value from the ``survey-proc`` namespace, e.g. ``get("run.batch-size")``."""
    return dask.config.get(f"survey-proc.{key}", default=default)


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
