"""Verbs of models and their training: ``models``, ``train``, ``trainset``, ``evaluate``, ``evaluate-bins``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from survey_proc.cli._common import add_quiet, given, positive_int

#: the S/N whose held-out scores ``survey-proc models`` shows (or the nearest a bundle has)
MODELS_SNR = 30.0


# --- models ---------------------------------------------------------------------------------------


def add_models(sub) -> None:
    ls = sub.add_parser("models", help="list the packaged models")
    ls.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from survey_proc.estimators import load_manifest, packaged_models

    for name in packaged_models():
        m = load_manifest(name)
        print(f"{name:12s} {m.model_id:28s} {m.raw.get('description', '')}")
        snr, metrics = held_out_scores(m.raw)
        parts = [
            f"{k} {v['robust_sigma']:.3f}" for k, v in metrics.items() if isinstance(v, dict) and "robust_sigma" in v
        ]
        if parts:
            print(f"{'':12s} held-out robust sigma at S/N {snr}: {', '.join(parts)}")
        library = m.error_systematics.library_terms
        if library:
            terms = ", ".join(f"{k} {v:.2f}" for k, v in library.items())
            print(f"{'':12s} SSP-library systematic (<name>_sys_err, not in <name>_err): {terms}")
    return 0


def held_out_scores(manifest: dict) -> tuple[str | None, dict]:
    """(S/N, scores by property) of a manifest's held-out metrics at :data:`MODELS_SNR` or the nearest
    S/N it has; ``(None, {})`` without any. Reads the ``evaluate`` layout (``{"snr": {"30": {"model":
    ...}}}``) and older bundles' ``{"30": scores}``; photometric keys (``set_a``, ...) are no S/N."""
    held = manifest.get("metrics", {}).get("held_out", {})
    by_snr = held.get("snr", {}) if "snr" in held else held
    by_snr = {k: v for k, v in by_snr.items() if _is_number(k) and isinstance(v, dict)}
    if not by_snr:
        return None, {}
    snr = min(by_snr, key=lambda k: abs(float(k) - MODELS_SNR))
    return snr, by_snr[snr].get("model", by_snr[snr])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- train, trainset ------------------------------------------------------------------------------


def add_train(sub) -> None:
    t = sub.add_parser("train", help="train a model from a YAML config and export a bundle")
    t.add_argument("config")
    t.add_argument("--out", required=True, help="folder for checkpoints, metrics and the bundle")
    t.add_argument("--epochs", type=positive_int)
    t.add_argument("--device", help="cpu | cuda | auto")
    add_quiet(t)
    t.set_defaults(func=cmd_train, reports=True)


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
    bundle = train(cfg, args.out)
    print(f"model bundle: {bundle}\nuse it with: survey-proc run --cube {store} --model {bundle}")
    return 0


def add_trainset(sub) -> None:
    ts = sub.add_parser("trainset", help="synthesise a training set into a Zarr store (resumable)")
    ts.add_argument("config", help="training YAML (its trainset section is used)")
    ts.add_argument("out")
    add_quiet(ts)
    ts.set_defaults(func=cmd_trainset, reports=True)


def cmd_trainset(args: argparse.Namespace) -> int:
    from survey_proc.ssp import load_ssp_library
    from survey_proc.training import TrainConfig, input_preset, write_trainset

    cfg = TrainConfig.from_yaml(args.config)
    t0 = time.perf_counter()
    store = write_trainset(cfg.trainset, load_ssp_library(), input_preset(cfg.input), args.out)
    print(
        f"training set of {len(store)} noise-free spectra ({', '.join(store.label_names)} + the "
        f"age-[M/H] weight grid) written to {args.out} in {time.perf_counter() - t0:.0f} s; "
        f"digest {store.digest}. Train on it with `trainset_store: {args.out}` in the config."
    )
    return 0


# --- evaluate, evaluate-bins ----------------------------------------------------------------------


def add_evaluate(sub) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="score a model (and a baseline) on held-out spectra against the truth; photometric models on "
        "Set A (held-out pixels of training galaxies) and Set B (new galaxies)",
    )
    ev.add_argument("model")
    ev.add_argument(
        "--snr",
        help="comma-separated S/N per Angstrom (default: 10,20,30,50; photometric models: 30, at the brightest pixel)",
    )
    ev.add_argument("--n", type=positive_int, help="held-out spectra per family and S/N (default: 500)")
    ev.add_argument("--galaxies", type=positive_int, help="photometric models: galaxies in Set A and in Set B (192)")
    ev.add_argument("--baseline", help="another estimator on the same spectra, e.g. ppxf")
    ev.add_argument("--seed", type=int, help="held-out seed (default: training seed + 3000017)")
    ev.add_argument("--json", help="write the numbers here")
    ev.add_argument(
        "--png",
        help="predicted-vs-true figure (default: the --json path with .png, else evaluate_predicted_vs_true.png)",
    )
    add_quiet(ev)
    ev.set_defaults(func=cmd_evaluate, reports=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from survey_proc.training import evaluate, write_json

    snrs = [float(v) for v in args.snr.split(",")] if args.snr else None
    png = args.png or (Path(args.json).with_suffix(".png") if args.json else Path("evaluate_predicted_vs_true.png"))
    if _reads_bands(args.model):
        return _evaluate_photometric(args, snrs, png)
    result = evaluate(args.model, **given(snrs=snrs, n=args.n), baseline=args.baseline, seed=args.seed, png=png)
    if args.json:
        write_json(result, args.json)
    for key, block in result["snr"].items():
        for label, metrics in block.items():
            print(f"S/N {key:>4s} {label:6s} n={metrics['n']:5d}  " + " | ".join(_score_parts(metrics)))
    print(f"figure: {result.get('figure')}" + (f"\nnumbers: {args.json}" if args.json else ""))
    return 0


def _reads_bands(model: str) -> bool:
    """Whether ``model`` is photometric (its input is bands); a model that cannot be read is left to
    ``evaluate``, which says why."""
    from survey_proc.errors import ModelError
    from survey_proc.estimators import load_manifest

    try:
        return load_manifest(model).raw.get("input", {}).get("feature_dim") == "band"
    except ModelError:
        return False


def _evaluate_photometric(args: argparse.Namespace, snrs: list[float] | None, png: Path) -> int:
    """Set A and Set B of a photometric model: the table printed, JSON and Markdown beside it with --json."""
    from survey_proc.training import evaluate_photometric, format_photometric, write_json

    n = args.galaxies
    result = evaluate_photometric(args.model, **given(snrs=snrs, galaxies=n, set_a_galaxies=n), seed=args.seed, png=png)
    table = format_photometric(result)
    print(table)
    if args.json:
        write_json(result, args.json)
        Path(args.json).with_suffix(".md").write_text(table + "\n")
    print(f"figure: {result['figure']}" + (f"\nnumbers: {args.json} (and .md)" if args.json else ""))
    return 0


def _score_parts(metrics: dict) -> list[str]:
    return [
        f"{name} bias {m['bias']:+.3f} sigma {m['robust_sigma']:.3f} c68 {m.get('coverage_68', float('nan')):.2f}"
        for name, m in metrics.items()
        if isinstance(m, dict) and "robust_sigma" in m
    ]


def add_evaluate_bins(sub) -> None:
    eb = sub.add_parser("evaluate-bins", help="held-out accuracy of a bundle by S/N, redshift and spectral class")
    eb.add_argument("model", help="packaged model name or bundle folder")
    eb.add_argument("--out", required=True, help="folder for evaluation.json and the figures")
    eb.add_argument("--n", type=positive_int, help="spectra per class (default: 2000)")
    eb.add_argument("--seed", type=int, help="a seed never used in training")
    add_quiet(eb)
    eb.set_defaults(func=cmd_evaluate_bins, reports=True)


def cmd_evaluate_bins(args: argparse.Namespace) -> int:
    from survey_proc.training import evaluate_held_out, format_evaluation

    result = evaluate_held_out(args.model, args.out, **given(n_per_class=args.n, seed=args.seed))
    if not args.quiet:
        print(format_evaluation(result))
    print(
        f"numbers: {Path(args.out) / 'evaluation.json'}\nfigures: {Path(args.out) / 'pred_vs_true.png'}, "
        f"{Path(args.out) / 'scatter_by_bin.png'}"
    )
    return 0
