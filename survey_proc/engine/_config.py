"""The options of a run (:class:`RunConfig`) and where its maps go by default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from survey_proc import config
from survey_proc.cluster import cluster_kind


def default_output(cube: str | Path, kind: str = "maps") -> Path:
    """``<cube>.<kind>.zarr`` beside the cube (``c.zarr`` -> ``c.maps.zarr``)."""
    cube = Path(cube)
    stem = cube.name[:-5] if cube.name.endswith(".zarr") else cube.name
    return cube.with_name(f"{stem}.{kind}.zarr")


@dataclass
class RunConfig:
    """Options of ``survey-proc run`` (None: the dask.config default ``survey-proc.run.*``).

    ``progress``: show progress bars while :func:`~survey_proc.engine.run` runs (Python callers;
    the command line shows them unless ``--quiet``). ``plot``: write the quick-look PNG
    ``<maps>.png`` once the maps are complete.
    """

    cube: str
    out: str | None = None
    model: str | None = None
    cluster: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    redshift: float | None = None
    min_snr: float | None = None
    overwrite: bool = False
    progress: bool = True
    device: str | None = None  #: cpu | cuda; None: what the cluster provides (cuda on local-cuda)
    retries: int | None = None
    plot: bool | None = None  #: a quick-look PNG beside the maps (None: ``survey-proc.run.plot``)
    mw_ebv: float | None = None  #: Milky Way foreground E(B-V) to undo (None: the cube's ``ebv_mw``, else 0)

    def resolved(self) -> RunConfig:
        get = config.get
        cluster = self.cluster or get("run.cluster")
        return RunConfig(
            cube=str(Path(self.cube)),
            out=str(self.out or default_output(self.cube)),
            model=self.model or get("run.model"),
            cluster=cluster,
            workers=self.workers if self.workers is not None else get("run.workers"),
            threads_per_worker=self.threads_per_worker or get("run.threads-per-worker"),
            redshift=self.redshift,
            min_snr=self.min_snr,
            overwrite=self.overwrite,
            progress=self.progress,
            device=self.device or cluster_kind(cluster).device,
            retries=self.retries if self.retries is not None else get("run.retries"),
            plot=self.plot if self.plot is not None else bool(get("run.plot", True)),
            mw_ebv=self.mw_ebv,
        )
