"""``survey-proc``: verbs only — parse, call one function, print a summary.

Errors meant for the user (:class:`survey_proc.errors.SurveyProcError`) are printed as one message
without a traceback, with exit status 2; an interrupted run exits 130 and says how to resume.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from survey_proc import config, progress
from survey_proc.errors import SurveyProcError


class _AboveBars(logging.Handler):
    """Log lines printed above the progress bars (``progress.write``)."""

    def emit(self, record: logging.LogRecord) -> None:
        progress.write(self.format(record))


@contextlib.contextmanager
def _reporting(quiet: bool) -> Iterator[None]:
    """Progress bars and the library's INFO log lines for what a verb runs, unless ``--quiet``."""
    if quiet:
        yield
        return
    logger, handler = logging.getLogger("survey_proc"), _AboveBars()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with progress.shown():
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def cmd_mock(args: argparse.Namespace) -> int:
    from survey_proc.synth import MockConfig, write_mock

    fields = {"nx": args.nx, "ny": args.ny, "seed": args.seed, "snr": args.snr, "redshift": args.redshift}
    if args.like:
        cfg = MockConfig.like_galaxy(args.like, **fields)
    else:
        defaults = {
            "nx": config.get("mock.nx"),
            "ny": config.get("mock.ny"),
            "seed": config.get("mock.seed"),
            "snr": config.get("mock.snr"),
            "redshift": config.get("mock.redshift"),
        }
        cfg = MockConfig(**{k: v if v is not None else defaults[k] for k, v in fields.items()})
    cfg.chunk = args.chunk or default_chunk(cfg.nx, cfg.ny)
    if args.wave_range:
        cfg.wave_start, cfg.wave_stop = args.wave_range
    if args.pixel_scale:
        cfg.pixel_scale_arcsec = args.pixel_scale
    if args.photometry:
        return _mock_photometry(args, cfg)
    info = write_mock(args.out, cfg, progress=not args.quiet)
    print(
        f"mock cube {cfg.ny} x {cfg.nx} spaxels x {info['wavelengths']} wavelengths "
        f"(S/N {cfg.snr:g} per A at the centre, z = {cfg.redshift:g}, seed {cfg.seed}) written to {args.out} "
        f"in {info['seconds']:.1f} s; truth maps in its group 'truth'"
    )
    return 0


def _mock_photometry(args: argparse.Namespace, cfg) -> int:
    from survey_proc.synth import write_mock_photometry

    cfg.psf_fwhm_pixels = args.psf_fwhm or 0.0
    info = write_mock_photometry(args.out, cfg, _filters(args.photometry))
    print(
        f"mock photometry {cfg.ny} x {cfg.nx} pixels x {info['bands']} {args.photometry} bands (S/N {cfg.snr:g} "
        f"per A at the brightest pixel, integrated over each band; z = {cfg.redshift:g}, seed {cfg.seed}) "
        f"written to {args.out} in "
        f"{info['seconds']:.1f} s; truth maps in its group 'truth' (the same galaxy `survey-proc mock` "
        "makes with these options)"
    )
    return 0


def _filters(name: str):
    from survey_proc.ssp import load_filters

    try:
        return load_filters(name)
    except ValueError as exc:
        from survey_proc.errors import SurveyProcError

        raise SurveyProcError(str(exc)) from exc


def cmd_photometry(args: argparse.Namespace) -> int:
    from survey_proc.synth import photometry_from_store

    info = photometry_from_store(
        args.cube,
        _filters(args.filters),
        args.out,
        cluster=args.cluster,
        workers=args.workers,
        mask_sky=not args.keep_sky_lines,
        progress=not args.quiet,
    )
    short = info["bands_short_of_coverage"]
    print(
        f"synthetic photometry: {info['spectra']} spectra x {info['bands']} {args.filters} bands in "
        f"{info['seconds']:.1f} s ({info['spectra_per_s']:,.0f} spectra/s, cluster start-up excluded) "
        f"written to {args.out}"
        + (f"; masked everywhere for lack of wavelength coverage: {', '.join(short)}" if short else "")
        + ("; truth maps copied to its group 'truth'" if info["truth"] else "")
    )
    return 0


def default_chunk(nx: int, ny: int) -> int:
    """Spatial chunk: 32 for survey-size cubes, smaller for small ones so several workers share them."""
    return int(min(32, max(8, -(-max(nx, ny) // 4))))


def cmd_ingest(args: argparse.Namespace) -> int:
    from survey_proc.stores import ingest_muse_fits

    info = ingest_muse_fits(
        args.fits, args.out, redshift=args.redshift, lsf_fwhm=args.lsf_fwhm, chunk=args.chunk, progress=not args.quiet
    )
    ny, nx, nw = info["shape"]
    z = "not set (give --redshift to run)" if info["redshift"] is None else f"{info['redshift']:g}"
    print(
        f"ingested {args.fits}: {ny} x {nx} spaxels x {nw} wavelengths ({info['wave'][0]:.1f}-"
        f"{info['wave'][1]:.1f} A, {info['medium']}), {info['masked_fraction']:.2%} of pixels masked, "
        f"redshift {z}; written to {args.out} in {info['seconds']:.1f} s"
    )
    return 0


def cmd_ingest_spectra(args: argparse.Namespace) -> int:
    from survey_proc.stores import ingest_sdss_spectra

    info = ingest_sdss_spectra(args.files, args.out, redshift=args.redshift, chunk=args.chunk, progress=not args.quiet)
    print(
        f"ingested {info['spectra']} SDSS spectra x {info['wavelengths']} wavelengths ({info['wave'][0]:.1f}-"
        f"{info['wave'][1]:.1f} A, {info['medium']}), z {info['redshift'][0]:.4f}-{info['redshift'][1]:.4f}, "
        f"{info['masked_fraction_covered']:.2%} of covered pixels masked; written to {args.out} in "
        f"{info['seconds']:.1f} s ({info['spectra'] / max(info['seconds'], 1e-9):.0f} spectra/s)"
    )
    return 0


def cmd_evaluate_bins(args: argparse.Namespace) -> int:
    from survey_proc.training import evaluate_held_out, format_evaluation

    with _reporting(args.quiet):
        result = evaluate_held_out(args.model, args.out, n_per_class=args.n, seed=args.seed)
    if not args.quiet:
        print(format_evaluation(result))
    print(
        f"numbers: {Path(args.out) / 'evaluation.json'}\nfigures: {Path(args.out) / 'pred_vs_true.png'}, "
        f"{Path(args.out) / 'scatter_by_bin.png'}"
    )
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    if args.name == "sdss-spectra":
        from survey_proc.stores import sdss_spectra

        paths = sdss_spectra()
        print(" ".join(str(p) for p in paths))
        print(
            "# ingest them with: survey-proc ingest-spectra $(survey-proc example sdss-spectra) sdss.zarr",
            file=sys.stderr,
        )
        return 0
    from survey_proc.stores import MINICUBE_REDSHIFT, muse_minicube

    path = muse_minicube()
    print(path)
    print(f"# ingest it with: survey-proc ingest {path} minicube.zarr --redshift {MINICUBE_REDSHIFT}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from survey_proc.engine import RunConfig, configs_for, default_output, format_table, read_survey, run, run_many

    cubes = args.cube or []
    if not cubes and not args.survey:
        raise SurveyProcError("give the cube(s) to run: --cube CUBE (repeat it for several) or --survey FILE")
    if args.out and (len(cubes) > 1 or args.survey):
        raise SurveyProcError(
            "--out names the maps of one cube; with several cubes use --out-dir (or 'out' per cube in the survey file)"
        )
    model, out = args.model, args.out
    if args.method == "ppxf":  # the packaged pPXF configuration, or a copy given with --model
        from survey_proc.errors import ModelError
        from survey_proc.estimators import load_manifest

        model = model or "ppxf"
        if load_manifest(model).estimator != "ppxf":
            raise ModelError(
                f"--method ppxf with --model {model}: that bundle's estimator is "
                f"{load_manifest(model).estimator!r}, not a pPXF configuration"
            )
        if len(cubes) == 1 and not args.survey and not args.out_dir:
            out = out or str(default_output(cubes[0], "ppxf"))
    base = RunConfig(
        cube="",
        out=out,
        model=model,
        cluster=args.cluster,
        workers=args.workers,
        redshift=args.redshift,
        min_snr=args.min_snr,
        overwrite=args.overwrite,
        progress=not args.quiet,
        device=args.device,
    )
    if len(cubes) == 1 and not args.survey and not args.out_dir:
        print(run(dataclasses.replace(base, cube=cubes[0])).format())
        return 0
    out_dir = Path(args.out_dir) if args.out_dir else None
    configs = read_survey(args.survey, base, out_dir=out_dir) if args.survey else []
    configs += configs_for([{"cube": c} for c in cubes], base, out_dir=out_dir)
    if args.method == "ppxf":  # <name>.ppxf.zarr rather than <name>.maps.zarr
        configs = [
            dataclasses.replace(c, out=c.out[: -len(".maps.zarr")] + ".ppxf.zarr")
            if c.out and c.out.endswith(".maps.zarr")
            else c
            for c in configs
        ]
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


def cmd_bin(args: argparse.Namespace) -> int:
    from survey_proc.binning import BinConfig, bin_cube, plot_bins

    cfg = BinConfig(
        target_snr=args.target_snr,
        min_snr=args.min_snr,
        wave_range=tuple(args.wave_range) if args.wave_range else None,
        objects_per_chunk=args.chunk,
        overwrite=args.overwrite,
    )
    info = bin_cube(args.cube, args.out, cfg, progress=not args.quiet)
    png = plot_bins(info, Path(args.out).with_suffix(".bins.png"), title=f"{args.cube}: Voronoi bins")
    print(
        f"{info['spaxels']} spaxels -> {info['bins']} bins at target S/N {cfg.resolved().target_snr:g} per A "
        f"(median expected bin S/N {info['median_bin_snr']:.1f}; {info['single_spaxel_bins']} single-spaxel "
        f"bins; largest {info['max_spaxels_per_bin']} spaxels; {info['left_out']} spaxels below the minimum "
        f"S/N left out) in {info['seconds']:.1f} s\n"
        f"catalogue of bins written to {args.out} (pixel -> bin map: variable 'bin_id'); bin map: {png}\n"
        f"run it with: survey-proc run --cube {args.out}"
    )
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from survey_proc.cluster import PLACEHOLDER_ADDRESS, job_script

    if args.action == "job-script":
        print(job_script(args.cluster), end="")
        print(
            f"# (the scheduler address {PLACEHOLDER_ADDRESS} and the worker name are filled in when "
            f"`survey-proc run --cluster {args.cluster}` submits the jobs)",
            file=sys.stderr,
        )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from survey_proc.stores import open_spectral_store

    ds = open_spectral_store(args.store, require_redshift=False)
    print(
        f"{args.store}: valid; dims {dict(ds['flux'].sizes)}, wave {float(ds.wave[0]):.1f}-"
        f"{float(ds.wave[-1]):.1f} A ({ds.wave.attrs.get('frame')}, {ds.wave.attrs.get('medium')}), "
        f"redshift {ds.attrs.get('redshift', 'not set')}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import xarray as xr

    from survey_proc.analysis import accuracy_vs_truth, plot_maps_vs_truth
    from survey_proc.engine import RunConfig, run
    from survey_proc.synth import MockConfig, write_mock

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    cube, maps_path = work / "demo.zarr", work / "demo.maps.zarr"
    cfg = MockConfig(
        nx=args.nx,
        ny=args.nx,
        seed=args.seed,
        snr=args.snr,
        redshift=config.get("mock.redshift"),
        chunk=default_chunk(args.nx, args.nx),
    )
    print(f"1/3 building a {cfg.nx} x {cfg.ny} mock MUSE cube of a disc galaxy (S/N {cfg.snr:g}) ...")
    write_mock(cube, cfg, progress=True)
    print(f"2/3 running model '{args.model}' on a LocalCluster ...")
    summary = run(
        RunConfig(
            cube=str(cube),
            out=str(maps_path),
            model=args.model,
            cluster=args.cluster,
            workers=args.workers,
            overwrite=True,
        )
    )
    print(summary.format())
    print("3/3 comparing with the truth ...")
    maps = xr.open_zarr(maps_path)
    truth = xr.open_zarr(cube, group="truth")
    acc = accuracy_vs_truth(maps, truth)
    png = plot_maps_vs_truth(
        maps,
        truth,
        work / "demo_maps_vs_truth.png",
        title=f"{summary.model_id} on a {cfg.nx}x{cfg.ny} mock, S/N {cfg.snr:g}",
    )
    (work / "demo_accuracy.json").write_text(json.dumps(acc.to_json(), indent=2))
    print(f"accuracy over {acc.used} unflagged spaxels ({acc.flagged_fraction:.0%} flagged):")
    for name in ("log_age", "metallicity", "av", "sigma"):
        if name in acc.properties:
            a = acc.properties[name]
            print(
                f"  {name:12s} bias {a.bias:+.3f}  robust sigma {a.robust_sigma:.3f} {a.units}"
                + (f"  (68% interval holds {a.coverage_68:.0%})" if a.coverage_68 is not None else "")
            )
    print(f"figure: {png}\nnumbers: {work / 'demo_accuracy.json'}\ncube: {cube}\nmaps: {maps_path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from survey_proc.analysis import compare_stores

    a, b = Path(args.a), Path(args.b)
    out = (
        Path(args.out) if args.out else a.with_name(f"{a.name.removesuffix('.zarr')}_vs_{b.name.removesuffix('.zarr')}")
    )
    result = compare_stores(a, b, out, truth_cube=args.truth, good_only=not args.all_fitted)
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
    print(f"figures: {', '.join(result.figures)}\nnumbers: {out / 'compare.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from survey_proc.bench import BenchConfig, run_bench

    given = {
        "cube": args.cube,
        "json": args.json,
        "model": args.model,
        "workers": args.workers,
        "sizes": args.sizes,
        "main_size": args.main_size,
        "ppxf_spectra": args.ppxf_spectra,
        "watts_per_core": args.watts_per_core,
        "workdir": args.workdir,
    }
    cfg = BenchConfig(quick=args.quick, gpu=not args.no_gpu, **{k: v for k, v in given.items() if v is not None})
    with _reporting(args.quiet):
        run_bench(cfg)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from survey_proc.config import read_yaml

    raw = read_yaml(args.config)
    if raw.get("kind", "spectrum") in ("sed", "image"):  # photometric models, trained on mock galaxies
        from survey_proc.training import PhotTrainConfig as Config
        from survey_proc.training import train_photometric as train

        store = "PHOTOMETRY.zarr"
    else:
        from survey_proc.training import TrainConfig as Config
        from survey_proc.training import train

        store = "CUBE.zarr"
    cfg = Config.from_dict(raw)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.device:
        cfg.device = args.device
    with _reporting(args.quiet):
        bundle = train(cfg, args.out)
    print(f"model bundle: {bundle}\nuse it with: survey-proc run --cube {store} --model {bundle}")
    return 0


def cmd_gradients(args: argparse.Namespace) -> int:
    from survey_proc.analysis import gradient_report

    overrides = {
        "centre_x": args.centre[0] if args.centre else None,
        "centre_y": args.centre[1] if args.centre else None,
        "inclination_deg": args.inclination,
        "position_angle_deg": args.position_angle,
        "r_e_pixels": args.r_e,
    }
    for maps in args.maps:
        rep = gradient_report(
            maps,
            compare=args.compare,
            out_dir=args.out,
            properties=args.properties,
            geometry_overrides=overrides,
            r_max=args.r_max,
            n_draws=args.draws,
            fraction=args.fraction,
            min_inside=args.min_inside,
        )
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
    return 0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def cmd_models(args: argparse.Namespace) -> int:
    from survey_proc.estimators import load_manifest, packaged_models

    for name in packaged_models():
        m = load_manifest(name)
        held = m.raw.get("metrics", {}).get("held_out", {})
        by_snr = held.get("snr", {}) if "snr" in held else held  # `evaluate` layout, or {snr: scores} of older bundles
        by_snr = {k: v for k, v in by_snr.items() if _is_number(k) and isinstance(v, dict)}  # photometric: set_a, ...
        snr = min(by_snr, key=lambda k: abs(float(k) - 30.0)) if by_snr else None  # S/N 30 or the nearest
        metrics = by_snr[snr].get("model", by_snr[snr]) if snr else {}
        parts = [
            f"{k} {v['robust_sigma']:.3f}" for k, v in metrics.items() if isinstance(v, dict) and "robust_sigma" in v
        ]
        print(f"{name:12s} {m.model_id:28s} {m.raw.get('description', '')}")
        if parts:
            print(f"{'':12s} held-out robust sigma at S/N {snr}: {', '.join(parts)}")
    return 0


def cmd_trainset(args: argparse.Namespace) -> int:
    from survey_proc.ssp import load_ssp_library
    from survey_proc.training import TrainConfig, input_preset, write_trainset

    cfg = TrainConfig.from_yaml(args.config)
    t0 = time.perf_counter()
    with _reporting(args.quiet):
        store = write_trainset(cfg.trainset, load_ssp_library(), input_preset(cfg.input), args.out)
    print(
        f"training set of {len(store)} noise-free spectra ({', '.join(store.label_names)} + the "
        f"age-[M/H] weight grid) written to {args.out} in {time.perf_counter() - t0:.0f} s; "
        f"digest {store.digest}. Train on it with `trainset_store: {args.out}` in the config."
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from survey_proc.training import evaluate, write_json

    snrs = [float(v) for v in args.snr.split(",")]
    png = args.png or (Path(args.json).with_suffix(".png") if args.json else Path("evaluate_predicted_vs_true.png"))
    with _reporting(args.quiet):
        result = evaluate(args.model, snrs=snrs, n=args.n, baseline=args.baseline, seed=args.seed, png=png)
    if args.json:
        write_json(result, args.json)
    for key, block in result["snr"].items():
        for label, metrics in block.items():
            parts = []
            for name, m in metrics.items():
                if isinstance(m, dict) and "robust_sigma" in m:
                    parts.append(
                        f"{name} bias {m['bias']:+.3f} sigma {m['robust_sigma']:.3f} "
                        f"c68 {m.get('coverage_68', float('nan')):.2f}"
                    )
            print(f"S/N {key:>4s} {label:6s} n={metrics['n']:5d}  " + " | ".join(parts))
    print(f"figure: {result.get('figure')}" + (f"\nnumbers: {args.json}" if args.json else ""))
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--watts-per-core", type=float, help="power per busy core for the energy estimate (W)")
    p.add_argument("--workdir", help="folder for mock cubes and maps (default: beside the JSON, *.scratch)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU runs even where GPUs exist")
    p.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    from survey_proc import __version__

    p = argparse.ArgumentParser(
        prog="survey-proc",
        description="Maps of stellar-population properties (log age, [M/H], A_V, velocity dispersion, each "
        "with an uncertainty and a quality flag) from IFU cubes, spectra catalogues and photometry: "
        "trained estimators (or pPXF) run over every spectrum with Dask, Zarr in and out.",
    )
    p.add_argument("--version", action="version", version=f"survey-proc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mock", help="build a mock MUSE-like cube with truth maps")
    m.add_argument("out", help="output cube store (.zarr)")
    m.add_argument(
        "--nx",
        type=_positive_int,
        help=f"spaxels along x (default: {config.get('mock.nx')}; with --like: the galaxy's)",
    )
    m.add_argument(
        "--ny",
        type=_positive_int,
        help=f"spaxels along y (default: {config.get('mock.ny')}; with --like: the galaxy's)",
    )
    m.add_argument("--seed", type=int, help=f"random seed (default: {config.get('mock.seed')})")
    m.add_argument(
        "--snr", type=float, help=f"S/N per Angstrom of the brightest spaxels (default: {config.get('mock.snr')})"
    )
    m.add_argument(
        "--redshift",
        type=float,
        help=f"systemic redshift (default: {config.get('mock.redshift')}; with --like: the galaxy's)",
    )
    m.add_argument("--like", choices=["ngc4254"], help="a galaxy whose scale to copy (~65,000 spaxels)")
    m.add_argument("--chunk", type=_positive_int, help="spatial chunk size (default: by cube size, <= 32)")
    m.add_argument(
        "--wave-range",
        type=float,
        nargs=2,
        metavar=("START", "STOP"),
        help="observed wavelengths of the cube, Angstrom (default 4750 9350, MUSE; the SSP library "
        "allows about 2600-10400 at low redshift)",
    )
    m.add_argument(
        "--photometry",
        metavar="FILTERS",
        help="write mock photometry (jpas | jpas36 | sdss) of the same galaxy instead of a cube",
    )
    m.add_argument("--pixel-scale", type=float, help="arcsec per pixel (default 0.2)")
    m.add_argument("--psf-fwhm", type=float, help="seeing FWHM in pixels for mock photometry (default 0)")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_mock)

    ph = sub.add_parser("photometry", help="synthetic photometry of a cube or catalogue through a filter set")
    ph.add_argument("cube", help="cube or spectra-catalogue store (.zarr)")
    ph.add_argument("out", help="photometric store to write (.zarr)")
    ph.add_argument("--filters", required=True, help="jpas (54 bands) | jpas36 | sdss (ugriz)")
    ph.add_argument("--cluster", default=config.get("run.cluster"), help="local | none | scheduler address")
    ph.add_argument("--workers", type=_positive_int)
    ph.add_argument(
        "--keep-sky-lines",
        action="store_true",
        help="integrate over the bright night-sky lines too (default: left out, +-2 FWHM)",
    )
    ph.add_argument("--quiet", action="store_true")
    ph.set_defaults(func=cmd_photometry)

    i = sub.add_parser("ingest", help="MUSE-style FITS cube (DATA/STAT/DQ) into a cube store")
    i.add_argument("fits")
    i.add_argument("out")
    i.add_argument("--redshift", type=float, help="systemic redshift (else from the header, if there)")
    i.add_argument("--lsf-fwhm", type=float, help="instrumental FWHM in Angstrom (default for MUSE: Bacon+17)")
    i.add_argument("--chunk", type=_positive_int, default=config.get("ingest.rows-per-chunk"))
    i.add_argument("--quiet", action="store_true")
    i.set_defaults(func=cmd_ingest)

    si = sub.add_parser("ingest-spectra", help="SDSS spectrum FITS files into one spectra catalogue (object, wave)")
    si.add_argument("files", nargs="+", help="SDSS spec/spec-lite (DR9+) or DR8 CAS table FITS files")
    si.add_argument("out", help="output catalogue store (.zarr)")
    si.add_argument("--redshift", type=float, help="redshift for files that carry none")
    si.add_argument(
        "--chunk",
        type=_positive_int,
        default=config.get("ingest.spectra-per-chunk"),
        help="spectra per stored chunk (default: %(default)s)",
    )
    si.add_argument("--quiet", action="store_true")
    si.set_defaults(func=cmd_ingest_spectra)

    e = sub.add_parser("example", help="fetch a real example file and print its path")
    e.add_argument("name", choices=["muse-minicube", "sdss-spectra"])
    e.set_defaults(func=cmd_example)

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
        help="local | local-cuda | slurm | pbs | none | scheduler address (default: %(default)s)",
        default=config.get("run.cluster"),
    )
    r.add_argument(
        "--workers",
        type=_positive_int,
        help="workers (default: one per core; local-cuda: one per GPU; slurm/pbs: the configured number of jobs)",
    )
    r.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="where workers run the model (default: cuda on GPU clusters, else cpu)",
    )
    r.add_argument(
        "--method",
        choices=["model", "ppxf"],
        default="model",
        help="model: the neural model (--model); ppxf: the pPXF baseline through the same engine "
        "(maps default to <cube>.ppxf.zarr)",
    )
    r.add_argument("--redshift", type=float, help="override the cube's redshift")
    r.add_argument(
        "--min-snr",
        type=float,
        help="S/N per Angstrom under which spectra are flagged low_snr "
        "(default: the model manifest's min_snr; survey-proc.run.min-snr "
        "for bundles without one)",
    )
    r.add_argument("--overwrite", action="store_true", help="replace maps of a different earlier run")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bin", help="Voronoi-bin a cube to a target S/N: a spectra catalogue of bins + pixel map")
    b.add_argument("cube", help="cube store (y, x, wave)")
    b.add_argument("out", help="catalogue store to write (object, wave)")
    b.add_argument(
        "--target-snr", type=float, help=f"S/N per Angstrom of each bin (default: {config.get('bin.target-snr')})"
    )
    b.add_argument(
        "--min-snr",
        type=float,
        help=f"spaxels below this S/N per Angstrom are left out (default: {config.get('bin.min-snr')})",
    )
    b.add_argument(
        "--wave-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="rest-frame Angstrom where S/N is measured (default: the whole cube)",
    )
    b.add_argument("--chunk", type=_positive_int, help="bins per chunk of the catalogue (= per region of a run)")
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_bin)

    c = sub.add_parser("cluster", help="cluster helpers: print the batch job script of --cluster slurm|pbs")
    c.add_argument("action", choices=["job-script"])
    c.add_argument("--cluster", required=True, choices=["slurm", "pbs"])
    c.set_defaults(func=cmd_cluster)

    v = sub.add_parser("validate", help="check that a store follows the cube / catalogue schema")
    v.add_argument("store")
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("demo", help="mock cube -> default model on a LocalCluster -> maps + PNG vs truth")
    d.add_argument("--dir", default="survey-proc-demo", help="folder for the cube, maps and figure")
    d.add_argument("--nx", type=_positive_int, default=config.get("mock.nx"))
    d.add_argument("--seed", type=int, default=config.get("mock.seed"))
    d.add_argument("--snr", type=float, default=config.get("mock.snr"))
    d.add_argument("--model", default=config.get("run.model"))
    d.add_argument("--cluster", default=config.get("run.cluster"))
    d.add_argument("--workers", type=_positive_int)
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("compare", help="compare two maps stores (e.g. model and pPXF), optionally with a mock's truth")
    c.add_argument("a", help="maps store A (e.g. the model's)")
    c.add_argument("b", help="maps store B (e.g. pPXF's); the reference when no --truth is given")
    c.add_argument("--truth", help="mock cube store whose 'truth' group both are compared with")
    c.add_argument("--out", help="folder for compare.json and the PNGs (default: A_vs_B beside A)")
    c.add_argument("--all-fitted", action="store_true", help="use every fitted pixel, not only flag == 0")
    c.set_defaults(func=cmd_compare)

    bp = sub.add_parser("bench", help="model vs pPXF through the same engine: speed, scaling, energy, accuracy")
    _bench_arguments(bp)
    bp.set_defaults(func=cmd_bench)

    t = sub.add_parser("train", help="train a model from a YAML config and export a bundle")
    t.add_argument("config")
    t.add_argument("--out", required=True, help="folder for checkpoints, metrics and the bundle")
    t.add_argument("--epochs", type=_positive_int)
    t.add_argument("--device", help="cpu | cuda | auto")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    ts = sub.add_parser("trainset", help="synthesise a training set into a Zarr store (resumable)")
    ts.add_argument("config", help="training YAML (its trainset section is used)")
    ts.add_argument("out")
    ts.add_argument("--quiet", action="store_true")
    ts.set_defaults(func=cmd_trainset)

    ev = sub.add_parser("evaluate", help="score a model (and a baseline) on held-out spectra against the truth")
    ev.add_argument("model")
    ev.add_argument("--snr", default="10,20,30,50", help="comma-separated S/N per Angstrom (default: %(default)s)")
    ev.add_argument(
        "--n", type=_positive_int, default=500, help="held-out spectra per family and S/N (default: %(default)s)"
    )
    ev.add_argument("--baseline", help="another estimator on the same spectra, e.g. ppxf")
    ev.add_argument("--seed", type=int, help="held-out seed (default: training seed + 3000017)")
    ev.add_argument("--json", help="write the numbers here")
    ev.add_argument(
        "--png",
        help="predicted-vs-true figure (default: the --json path with .png, else evaluate_predicted_vs_true.png)",
    )
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_evaluate)

    g = sub.add_parser(
        "gradients",
        help="radial gradients of map properties within R_e, with delete-d jackknife errors from random subsamples",
    )
    g.add_argument("maps", nargs="+", help="maps store(s), one galaxy each")
    g.add_argument("--compare", help="'truth' (the mock cube's truth maps) or another maps store of the same galaxy")
    g.add_argument(
        "--properties",
        nargs="+",
        default=["log_age", "metallicity", "av", "log_mass_surface_density"],
        help="map variables to fit, where present in the store (default: log_age metallicity av "
        "log_mass_surface_density)",
    )
    g.add_argument("--inclination", type=float, help="degrees (default: from the mock's truth attributes)")
    g.add_argument("--position-angle", type=float, help="of the major axis, degrees from +y towards +x")
    g.add_argument("--centre", type=float, nargs=2, metavar=("X", "Y"), help="galaxy centre, pixels")
    g.add_argument("--r-e", type=float, help="effective radius along the disc, pixels")
    g.add_argument("--r-max", type=float, default=1.0, help="fit inside this many R_e (default 1)")
    g.add_argument("--draws", type=_positive_int, default=100, help="Monte Carlo draws (default 100)")
    g.add_argument("--fraction", type=float, default=0.75, help="share of pixels per draw (default 0.75)")
    g.add_argument("--min-inside", type=_positive_int, default=25, help="pixels needed inside R_e (default 25)")
    g.add_argument("--out", help="folder for the JSON and PNG (default: beside the maps)")
    g.set_defaults(func=cmd_gradients)

    eb = sub.add_parser("evaluate-bins", help="held-out accuracy of a bundle by S/N, redshift and spectral class")
    eb.add_argument("model", help="packaged model name or bundle folder")
    eb.add_argument("--out", required=True, help="folder for evaluation.json and the figures")
    eb.add_argument("--n", type=_positive_int, default=2000, help="spectra per class (default: %(default)s)")
    eb.add_argument("--seed", type=int, default=90_000_001, help="a seed never used in training")
    eb.add_argument("--quiet", action="store_true")
    eb.set_defaults(func=cmd_evaluate_bins)

    ls = sub.add_parser("models", help="list the packaged models")
    ls.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    from survey_proc.engine import RunInterrupted

    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        return int(args.func(args) or 0)
    except RunInterrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        return 130
    except SurveyProcError as exc:
        print(f"survey-proc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
