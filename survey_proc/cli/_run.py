"""``survey-proc run``: an estimator over every spectrum of one cube, or of many (``--cube`` repeated,
``--survey FILE``) on one shared client."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import dask.config

from survey_proc import config
from survey_proc.cli._common import add_quiet, positive_int
from survey_proc.errors import ModelError, SurveyProcError


def add_run(sub) -> None:
    r = sub.add_parser("run", help="map an estimator over every spectrum of a cube, or of many cubes")
    r.add_argument("--cube", action="append", help="cube or spectra catalogue store; repeat for several cubes")
    r.add_argument(
        "--survey",
        help="YAML file listing the cubes (paths or globs, each with its redshift and options); see docs/survey.md",
    )
    r.add_argument("--out", help="maps store of a single cube (default: <cube>.maps.zarr beside the cube)")
    r.add_argument("--out-dir", help="folder for the maps of several cubes (<name>.maps.zarr each)")
    r.add_argument("--model", help=f"packaged model name or bundle folder (default: {config.get('run.model')})")
    r.add_argument(
        "--cluster",
        help=f"local | local-cuda | slurm | pbs | none | scheduler address (default: {config.get('run.cluster')})",
    )
    r.add_argument(
        "--workers",
        type=positive_int,
        help="workers (default: one per core; local-cuda: one per GPU; slurm/pbs: the configured number of jobs)",
    )
    r.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="where workers run the model (default: cuda on GPU clusters, else cpu)",
    )
    r.add_argument(
        "--method",
        choices=["model", "ppxf", "fit"],
        help="model: the neural model (--model); ppxf: the pPXF baseline through the same engine "
        "(maps default to <cube>.ppxf.zarr); fit: pPXF's model fitted in batches in torch, started from the "
        "network (velocity, sigma, weights, chi2; <cube>.fit.zarr)",
    )
    r.add_argument("--redshift", type=float, help="override the cube's redshift")
    r.add_argument(
        "--mw-ebv",
        type=float,
        metavar="E(B-V)",
        help="Milky Way foreground colour excess to undo before estimating (Fitzpatrick 1999, R_V 3.1; "
        "default: the cube's attribute ebv_mw, which ingest takes from MaNGA's EBVGAL, else none)",
    )
    r.add_argument(
        "--min-snr",
        type=float,
        help="S/N per Angstrom under which spectra are flagged low_snr "
        "(default: the model manifest's min_snr; survey-proc.run.min-snr "
        "for bundles without one)",
    )
    r.add_argument("--overwrite", action="store_true", help="replace maps of a different earlier run")
    r.add_argument(
        "--save-model",
        action="store_true",
        help="with --method fit: also write the best-fit spectra beside the maps (<maps>.model.zarr: flux, model)",
    )
    r.add_argument(
        "--trust-model",
        action="store_true",
        help="run a model bundle whose manifest records no SHA-256 of its model file (its integrity cannot be "
        "checked; survey-proc.run.trust-model)",
    )
    r.add_argument("--no-plot", action="store_true", help="write no quick-look PNG (<maps>.png) beside the maps")
    add_quiet(r)
    r.set_defaults(func=cmd_run, reports=True)


def cmd_run(args: argparse.Namespace) -> int:
    settings = {"survey-proc.run.trust-model": True} if args.trust_model else {}
    with dask.config.set(settings):
        return _cmd_run(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from survey_proc.engine import RunConfig, run

    cubes = args.cube or []
    _check_cubes(args, cubes)
    method = args.method or "model"
    base = RunConfig(
        cube="",
        out=args.out,
        model=args.model if method == "model" else _method_model(method, args.model),
        cluster=args.cluster,
        workers=args.workers,
        redshift=args.redshift,
        mw_ebv=args.mw_ebv,
        min_snr=args.min_snr,
        overwrite=args.overwrite,
        progress=not args.quiet,
        device=args.device,
        plot=False if args.no_plot else None,
    )
    kind = "maps" if method == "model" else method  # <cube>.ppxf.zarr, <cube>.fit.zarr
    if args.save_model and (method != "fit" or len(cubes) != 1 or args.survey or args.out_dir):
        raise SurveyProcError("--save-model needs --method fit and one cube (the best fit of each spaxel)")
    if len(cubes) == 1 and not args.survey and not args.out_dir:
        one = _one_cube(base, cubes[0], kind)
        print(run(one).format())
        if args.save_model:
            _save_model(one.out, quiet=args.quiet)
        return 0
    return _many_cubes(args, base, cubes, kind)


def _save_model(maps: str, quiet: bool) -> None:
    from survey_proc import progress
    from survey_proc.engine import write_best_fit

    with progress.shown(not quiet):
        write_best_fit(maps)


def _check_cubes(args: argparse.Namespace, cubes: list[str]) -> None:
    if not cubes and not args.survey:
        raise SurveyProcError("give the cube(s) to run: --cube CUBE (repeat it for several) or --survey FILE")
    if args.out and (len(cubes) > 1 or args.survey):
        raise SurveyProcError(
            "--out names the maps of one cube; with several cubes use --out-dir (or 'out' per cube in the survey file)"
        )


def _method_model(method: str, model: str | None) -> str:
    """The bundle ``--method ppxf`` or ``--method fit`` runs: the packaged configuration of that name, or a
    copy of it given with ``--model``."""
    from survey_proc.estimators import load_manifest

    model = model or method
    estimator = load_manifest(model).estimator
    if estimator != method:
        what = "pPXF" if method == "ppxf" else "fit"
        raise ModelError(
            f"--method {method} with --model {model}: that bundle's estimator is {estimator!r}, not a {what} "
            "configuration"
        )
    return model


def _one_cube(base, cube: str, kind: str):
    import dataclasses

    from survey_proc.engine import default_output

    return dataclasses.replace(base, cube=cube, out=base.out or str(default_output(cube, kind)))


def _many_cubes(args: argparse.Namespace, base, cubes: list[str], kind: str) -> int:
    """Every cube of ``--survey`` and ``--cube`` on one client; the table of cubes; exit 1 if some failed."""
    from survey_proc.engine import configs_for, format_table, read_survey, run_many

    out_dir = Path(args.out_dir) if args.out_dir else None
    configs = read_survey(args.survey, base, out_dir=out_dir, kind=kind) if args.survey else []
    configs += configs_for([{"cube": c} for c in cubes], base, out_dir=out_dir, kind=kind)
    t0 = time.perf_counter()
    outcomes = run_many(configs)
    print(format_table(outcomes, time.perf_counter() - t0))
    failed = sum(o.failed for o in outcomes)
    if failed:
        print(
            f"survey-proc run: {failed} of {len(outcomes)} cubes failed (see the table); the others are "
            "complete, and rerunning the same command retries only what is not done",
            file=sys.stderr,
        )
        return 1
    return 0
