"""The options of a benchmark (:class:`BenchConfig`), resolved against the ``survey-proc.bench`` defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from survey_proc import config


@dataclass
class BenchConfig:
    """Options of ``survey-proc bench`` (None: the preset of ``--quick`` or of the full run).

    ``json``: the results file (default: ``bench[-quick].json`` in ``survey-proc.bench.out-dir``, a
    folder under the current directory); the Markdown report, the PNG, the compare figures and, without
    ``workdir``, the scratch folder go beside it.
    """

    cube: str | None = None
    json: str | None = None
    quick: bool = False
    model: str = "default"
    workers: list[int] | None = None
    sizes: list[int] | None = None
    ppxf_spectra: int | None = None
    fit_spectra: int | None = None
    main_size: int | None = None
    watts_per_core: float | None = None
    workdir: str | None = None
    gpu: bool = True
    fit: bool = True  #: measure the fit (``--method fit``) too

    def resolved(self) -> BenchConfig:
        preset = config.get("bench.quick" if self.quick else "bench.full")
        cores = os.cpu_count() or 1
        default_workers = sorted({1, *[2**k for k in range(1, 8) if 2**k < cores], cores})
        name = "bench-quick" if self.quick else "bench"
        return BenchConfig(
            cube=self.cube,
            json=self.json or str(Path(config.get("bench.out-dir")) / f"{name}.json"),
            quick=self.quick,
            model=self.model,
            workers=sorted(set(self.workers or default_workers)),
            sizes=sorted(set(self.sizes or preset["sizes"])),
            ppxf_spectra=int(self.ppxf_spectra or preset["ppxf-spectra"]),
            fit_spectra=int(self.fit_spectra or preset["fit-spectra"]),
            main_size=int(self.main_size or preset["cube"]),
            watts_per_core=float(self.watts_per_core or config.get("bench.watts-per-core")),
            workdir=self.workdir,
            gpu=self.gpu,
            fit=self.fit,
        )
