"""The Python API: ``survey_proc.run(cube, ...)``, what ``survey-proc run`` does, from a script or notebook.

::

    import survey_proc

    summary = survey_proc.run("cube.zarr")                 # -> cube.maps.zarr (+ .png, .log) beside it
    summary = survey_proc.run(ds, out="ngc.maps.zarr")     # an xarray Dataset (y, x, wave) or (object, wave)
    summary = survey_proc.run("cube.zarr", client=client)  # on a Dask client you already have

It runs the engine (:func:`survey_proc.engine.run`) with a :class:`~survey_proc.engine.RunConfig`
made of the keywords, and returns its :class:`~survey_proc.engine.RunSummary`. A script without
an ``if __name__ == "__main__":`` guard gets worker threads instead of processes, with a note
(:func:`survey_proc.cluster.unguarded_script`). docs/api.md has a worked example.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import xarray as xr

from survey_proc import config
from survey_proc.engine import RunConfig, RunSummary, default_output
from survey_proc.engine import run as run_engine
from survey_proc.errors import OptionError
from survey_proc.stores import write_dataset

log = logging.getLogger(__name__)

#: the keywords of :func:`run` besides ``cube``, ``model``, ``out`` and ``client``
OPTIONS = (
    *(f.name for f in dataclasses.fields(RunConfig) if f.name not in ("cube", "model", "out")),
    "method",
    "cube_store",
)


def _cube_path(cube: str | os.PathLike | xr.Dataset, out: str | None, cube_store: str | None) -> str:
    """A path for the engine: the cube's own, or where an in-memory Dataset is written first."""
    if not isinstance(cube, xr.Dataset):
        return str(cube)
    if out is None and cube_store is None:
        raise OptionError("survey_proc.run with an xarray Dataset: give out= (the maps store to write)")
    if cube_store is None:
        name = Path(out).name
        stem = name.removesuffix(".zarr").removesuffix(".maps")
        cube_store = str(Path(out).with_name(f"{stem}.cube.zarr"))
    write_dataset(cube, cube_store)
    log.info(f"the Dataset was written to {cube_store}, which the maps record as their cube")
    return cube_store


def run(
    cube: str | os.PathLike | xr.Dataset,
    model: str | None = None,
    out: str | os.PathLike | None = None,
    client=None,
    **options,
) -> RunSummary:
    """Map an estimator over every spectrum of ``cube`` and write the maps store; returns the summary.

    Parameters
    ----------
    cube : a cube or catalogue store (path), or an xarray Dataset following the cube schema (``flux``,
        ``var``, ``mask`` over ``(y, x, wave)`` or ``(object, wave)``; written to ``cube_store``, by
        default ``<out>.cube.zarr`` beside the maps, before the run).
    model : a packaged model name or a bundle folder (default ``survey-proc.run.model``).
    out : the maps store (default ``<cube>.maps.zarr`` beside the cube; required for a Dataset).
    client : a running ``distributed.Client`` to compute on; it is left open. None starts the
        cluster of ``cluster=`` (default ``survey-proc.run.cluster``, ``local``) and closes it.
    options : the fields of :class:`~survey_proc.engine.RunConfig` (``redshift``, ``min_snr``,
        ``workers``, ``cluster``, ``device``, ``overwrite``, ``progress``, ``plot``, ``retries``,
        ``threads_per_worker``), ``method="ppxf"`` (the pPXF baseline, maps default
        ``<cube>.ppxf.zarr``) or ``method="fit"`` (pPXF's model in batches, ``<cube>.fit.zarr``;
        :func:`survey_proc.engine.write_best_fit` then saves its best-fit spectra) and ``cube_store``.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"survey_proc.run: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    for key in config.unknown_keys():
        log.warning(f"unknown setting {key} is ignored")
    method = options.pop("method", "model")
    if method not in ("model", "ppxf", "fit"):
        raise OptionError(f"method={method!r}: use 'model', 'ppxf' or 'fit'")
    path = _cube_path(cube, None if out is None else str(out), options.pop("cube_store", None))
    if method != "model":
        model = model or method
    out = str(out) if out is not None else str(default_output(path, "maps" if method == "model" else method))
    rc = RunConfig(cube=path, out=out, model=model, **options)
    return run_engine(rc, client=client)
