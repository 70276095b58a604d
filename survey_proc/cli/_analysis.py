"""Verbs that read maps: ``compare``, ``gradients``, and ``demo`` (mock -> run -> accuracy)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from survey_proc import config
from survey_proc.cli._common import given, positive_int
from survey_proc.cli._data import default_chunk, mock_config

#: the properties ``survey-proc demo`` prints the accuracy of
DEMO_PROPERTIES = ("log_age", "metallicity", "av", "sigma")


# --- compare --------------------------------------------------------------------------------------


def add_compare(sub) -> None:
    c = sub.add_parser("compare", help="compare two maps stores (e.g. model and pPXF), optionally with a mock's truth")
    c.add_argument("a", help="maps store A (e.g. the model's)")
    c.add_argument("b", help="maps store B (e.g. pPXF's); the reference when no --truth is given")
    c.add_argument("--truth", help="mock cube store whose 'truth' group both are compared with")
    c.add_argument("--out", help="folder for compare.json and the PNGs (default: A_vs_B beside A)")
    c.add_argument("--all-fitted", action="store_true", help="use every fitted pixel, not only flag == 0")
    c.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from survey_proc.analysis import compare_stores

    result = compare_stores(args.a, args.b, args.out, truth_cube=args.truth, good_only=not args.all_fitted)
    print(
        f"compared over {result.used['both_good']} pixels "
        f"{'fitted' if args.all_fitted else 'unflagged'} in both stores (differences: first - second)"
    )
    for pair, props in result.pairs.items():
        print(f"{pair}:")
        for name, st in props.items():
            print(
                f"  {name:12s} bias {st.bias:+9.3f}  robust sigma {st.robust_sigma:8.3f}  "
                f"rms {st.rms:8.3f}  r {st.correlation:+.3f}  n {st.n}  [{st.units}]"
            )
    print(f"figures: {', '.join(result.figures)}\nnumbers: {result.json_path}")
    return 0


# --- gradients ------------------------------------------------------------------------------------


def add_gradients(sub) -> None:
    g = sub.add_parser(
        "gradients",
        help="radial gradients of map properties within R_e, with delete-d jackknife errors from random subsamples",
    )
    g.add_argument("maps", nargs="+", help="maps store(s), one galaxy each")
    g.add_argument("--compare", help="'truth' (the mock cube's truth maps) or another maps store of the same galaxy")
    g.add_argument(
        "--properties",
        nargs="+",
        help="map variables to fit, where present in the store (default: log_age metallicity av "
        "log_mass_surface_density)",
    )
    g.add_argument("--inclination", type=float, help="degrees (default: from the mock's truth attributes)")
    g.add_argument("--position-angle", type=float, help="of the major axis, degrees from +y towards +x")
    g.add_argument("--centre", type=float, nargs=2, metavar=("X", "Y"), help="galaxy centre, pixels")
    g.add_argument("--r-e", type=float, help="effective radius along the disc, pixels")
    g.add_argument("--r-max", type=float, help="fit inside this many R_e (default 1)")
    g.add_argument("--draws", type=positive_int, help="Monte Carlo draws (default 100)")
    g.add_argument("--fraction", type=float, help="share of pixels per draw (default 0.75)")
    g.add_argument("--min-inside", type=positive_int, help="pixels needed inside R_e (default 25)")
    g.add_argument("--out", help="folder for the JSON and PNG (default: beside the maps)")
    g.set_defaults(func=cmd_gradients)


def cmd_gradients(args: argparse.Namespace) -> int:
    from survey_proc.analysis import gradient_report

    overrides = {
        "centre_x": args.centre[0] if args.centre else None,
        "centre_y": args.centre[1] if args.centre else None,
        "inclination_deg": args.inclination,
        "position_angle_deg": args.position_angle,
        "r_e_pixels": args.r_e,
    }
    options = given(
        properties=args.properties,
        r_max=args.r_max,
        n_draws=args.draws,
        fraction=args.fraction,
        min_inside=args.min_inside,
    )
    for maps in args.maps:
        rep = gradient_report(maps, compare=args.compare, out_dir=args.out, geometry_overrides=overrides, **options)
        _print_gradients(maps, rep)
    return 0


def _print_gradients(maps: str, rep) -> None:
    g = rep.geometry
    print(
        f"{maps}: R_e {g.r_e_pixels:.1f} px, inclination {g.inclination_deg:.0f} deg, PA "
        f"{g.position_angle_deg:.0f} deg, centre ({g.centre_x:.1f}, {g.centre_y:.1f}) from {g.source}"
    )
    other = rep.compare
    for p, fit in rep.gradients.items():
        line = f"  {p:26s} " + (
            f"{fit.slope:+.3f} ± {fit.slope_err:.3f} per R_e ({fit.n_inside} px inside R_e)"
            if fit
            else "not fitted (too few pixels inside R_e or none outside)"
        )
        d = other.differences.get(p) if other else None
        if d:
            line += f"; {other.label}: {d.slope_b:+.3f}, difference {d.difference:+.3f} ({d.n_sigma:.1f} sigma)"
        print(line)
    if other and other.input_gradients_per_r_e is not None:
        print(f"  mock input gradients of the disc component: {other.input_gradients_per_r_e}")
    print(f"  figure: {rep.figure}\n  numbers: {rep.json_path}")


# --- demo -----------------------------------------------------------------------------------------


def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="mock cube -> default model on a LocalCluster -> maps + PNG vs truth")
    d.add_argument("--dir", help="folder for the cube, maps and figure")
    d.add_argument("--nx", type=positive_int)
    d.add_argument("--seed", type=int)
    d.add_argument("--snr", type=float)
    d.add_argument("--model")
    d.add_argument("--cluster")
    d.add_argument("--workers", type=positive_int)
    d.set_defaults(func=cmd_demo, reports=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from survey_proc.engine import RunConfig, run
    from survey_proc.synth import write_mock

    work = Path(args.dir or config.get("demo.dir"))
    work.mkdir(parents=True, exist_ok=True)
    cube, maps_path = work / "demo.zarr", work / "demo.maps.zarr"
    side = args.nx or config.get("mock.nx")
    cfg = mock_config(nx=side, ny=side, seed=args.seed, snr=args.snr, redshift=None)
    cfg.chunk = default_chunk(side, side)
    print(f"1/3 building a {cfg.nx} x {cfg.ny} mock MUSE cube of a disc galaxy (S/N {cfg.snr:g}) ...")
    write_mock(cube, cfg)
    model = args.model or config.get("run.model")
    print(f"2/3 running model '{model}' on a LocalCluster ...")
    summary = run(
        RunConfig(
            cube=str(cube), out=str(maps_path), model=model, cluster=args.cluster, workers=args.workers, overwrite=True
        )
    )
    print(summary.format())
    print("3/3 comparing with the truth ...")
    _demo_accuracy(work, cube, maps_path, title=f"{summary.model_id} on a {cfg.nx}x{cfg.ny} mock, S/N {cfg.snr:g}")
    print(f"cube: {cube}\nmaps: {maps_path}")
    return 0


def _demo_accuracy(work: Path, cube: Path, maps_path: Path, title: str) -> None:
    """The demo's maps against the mock's truth: a figure, the numbers as JSON, a line per property."""
    import xarray as xr

    from survey_proc.analysis import accuracy_vs_truth, plot_maps_vs_truth

    maps = xr.open_zarr(maps_path)
    truth = xr.open_zarr(cube, group="truth")
    acc = accuracy_vs_truth(maps, truth)
    png = plot_maps_vs_truth(maps, truth, work / "demo_maps_vs_truth.png", title=title)
    numbers = work / "demo_accuracy.json"
    numbers.write_text(json.dumps(acc.to_json(), indent=2))
    print(f"accuracy over {acc.used} unflagged spaxels ({acc.flagged_fraction:.0%} flagged):")
    for name in DEMO_PROPERTIES:
        if name in acc.properties:
            a = acc.properties[name]
            print(
                f"  {name:12s} bias {a.bias:+.3f}  robust sigma {a.robust_sigma:.3f} {a.units}"
                + (f"  (68% interval holds {a.coverage_68:.0%})" if a.coverage_68 is not None else "")
            )
    print(f"figure: {png}\nnumbers: {numbers}")
