"""``survey-proc bench``: the model against pPXF through the same engine (:mod:`survey_proc.bench`)."""

from __future__ import annotations

import argparse

from survey_proc import config
from survey_proc.cli._common import add_quiet, given


def add_bench(sub) -> None:
    bp = sub.add_parser("bench", help="model vs pPXF through the same engine: speed, scaling, energy, accuracy")
    add_bench_arguments(bp)
    bp.set_defaults(func=cmd_bench, reports=True)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cube", help="cube store to benchmark on (default: a mock with truth, built once)")
    p.add_argument(
        "--json",
        help=f"results JSON (default: {config.get('bench.out-dir')}/bench[-quick].json in the current folder); "
        "the Markdown report and PNG are written beside it",
    )
    p.add_argument("--quick", action="store_true", help="small cubes and a 16-spectrum pPXF sample (~1 minute)")
    p.add_argument("--model", help="model bundle to benchmark against pPXF (default: default)")
    p.add_argument("--workers", type=int, nargs="+", help="worker counts (default: 1, 2, 4, ... up to the cores)")
    p.add_argument("--sizes", type=int, nargs="+", help="mock cube sides for the cube-size scaling")
    p.add_argument("--main-size", type=int, help="side of the mock cube measured (without --cube)")
    p.add_argument("--ppxf-spectra", type=int, help="spectra in pPXF's sample (spread over the cube)")
    p.add_argument("--fit-spectra", type=int, help="spectra in the fit's sample (--method fit; spread over the cube)")
    p.add_argument("--no-fit", action="store_true", help="skip the fit (--method fit) runs")
    p.add_argument("--watts-per-core", type=float, help="power per busy core for the energy estimate (W)")
    p.add_argument("--workdir", help="folder for mock cubes and maps (default: beside the JSON, *.scratch)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU runs even where GPUs exist")
    p.add_argument(
        "--real",
        action="store_true",
        help="score every estimator on real spectra (SDSS, MaNGA, the MUSE minicube) against pPXF set-ups and "
        "published values instead (results: real.json)",
    )
    add_quiet(p)


def config_from_args(args: argparse.Namespace):
    """The :class:`~survey_proc.bench.BenchConfig` of the options given (its defaults for the rest)."""
    from survey_proc.bench import BenchConfig

    return BenchConfig(
        quick=args.quick,
        gpu=not args.no_gpu,
        fit=not args.no_fit,
        **given(
            cube=args.cube,
            json=args.json,
            model=args.model,
            workers=args.workers,
            sizes=args.sizes,
            main_size=args.main_size,
            ppxf_spectra=args.ppxf_spectra,
            fit_spectra=args.fit_spectra,
            watts_per_core=args.watts_per_core,
            workdir=args.workdir,
        ),
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from survey_proc.bench import run_bench, run_real

    if args.real:
        json_path = Path(args.json or Path(config.get("bench.out-dir")) / "real.json")
        work = Path(args.workdir) if args.workdir else json_path.parent / f"{json_path.stem}.scratch"
        workers = max(args.workers) if args.workers else 2
        run_real(work, json_path, workers=workers)
        return 0
    run_bench(config_from_args(args))
    return 0
