"""``survey-proc bench``: the neural model and pPXF through the same engine, in one run.

    survey-proc bench --quick                      # about a minute on a 2-core laptop
    survey-proc bench --json benchmarks/results/bench.json   # the committed results of the repository

On one cube (a mock with truth unless ``--cube`` is given), on warm LocalClusters of 1..cores
workers (one thread each), it measures for the model (on the CPU, and on each GPU present) and for
pPXF (on a sample of spaxels spread evenly over the same cube, ``--ppxf-spectra``):

- spectra/s end to end (the whole ``survey_proc.engine.run`` call: Zarr cube in, verified maps
  store out; cluster start-up excluded) and of the estimator alone, seconds per cube;
- scaling with the number of workers and with cube size (mocks of ``--sizes`` spaxels a side);
- peak memory (RSS) per worker; energy per spectrum (:class:`EnergyMeter`);
- accuracy of both against the mock's truth, and ``survey-proc compare`` figures of both;
- the speed-up per core of the model over pPXF, from the same run.

``--real`` scores every estimator on real spectra nobody here made instead (:func:`run_real`).

Everything is written as JSON (the schema of issue 4 plus details), a Markdown report and a PNG,
by default under ``./survey-proc-bench/`` (``survey-proc.bench.out-dir``). Progress lines are logged
(``survey_proc.bench``); the command line prints them.
"""

from survey_proc.bench._config import BenchConfig
from survey_proc.bench._cubes import mock_cube, sample_cube
from survey_proc.bench._energy import EnergyMeter, process_cpu_seconds, rapl_domains
from survey_proc.bench._gpu import gpu_runs, gpu_speedups
from survey_proc.bench._machine import cpu_model, gpus, machine_info
from survey_proc.bench._null_model import NullModel, null_bundle
from survey_proc.bench._real import RealReport, run_real
from survey_proc.bench._report import markdown, write_png, write_report
from survey_proc.bench._run import Measured, Setup, accuracy, linear_cost, model_runs, ppxf_runs, prepare, run_bench
from survey_proc.bench._timing import bench_cluster, peak_rss_per_worker, timed_run, warm_estimator, warm_timed_run

__all__ = [
    "BenchConfig",
    "EnergyMeter",
    "Measured",
    "NullModel",
    "RealReport",
    "Setup",
    "accuracy",
    "bench_cluster",
    "cpu_model",
    "gpu_runs",
    "gpu_speedups",
    "gpus",
    "linear_cost",
    "machine_info",
    "markdown",
    "mock_cube",
    "model_runs",
    "null_bundle",
    "peak_rss_per_worker",
    "ppxf_runs",
    "prepare",
    "process_cpu_seconds",
    "rapl_domains",
    "run_bench",
    "run_real",
    "sample_cube",
    "timed_run",
    "warm_estimator",
    "warm_timed_run",
    "write_png",
    "write_report",
]
