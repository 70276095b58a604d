"""An observed-frame model on its own kind of mock across redshift: does it hold at every z it accepts?

    python -m benchmarks.redshift_coverage --models sdss-cnn --json benchmarks/results/redshift_coverage.json

An observed-frame network (``sdss-cnn``) sees each redshift as a different spectrum, so it is only as
good at a redshift as its training set's coverage there. For each model and redshift bin this draws
``--n`` spectra exactly as the model's training set was drawn (its recorded ``trainset`` config), but
with another seed, the redshift uniform in the bin, S/N ``--snr`` per Angstrom, no emission lines, and
scores the model's estimates against the truth: median bias and robust sigma over all spectra and
over old metal-rich ones (log age > 9.7, [M/H] > -0.3: what an early-type galaxy is), the share of
spectra within twice the reported error. Writes JSON, Markdown and a PNG (bias of old metal-rich
spectra against redshift).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from survey_proc.estimators import load_estimator
from survey_proc.figures import save_figure
from survey_proc.ssp import load_ssp_library
from survey_proc.stores import robust_sigma
from survey_proc.training._dataset import observe_noisy, synthesise, trainset_from_record
from survey_proc.training._evaluate import predict_noisy

BINS = ((0.002, 0.006), (0.006, 0.015), (0.015, 0.03), (0.03, 0.06), (0.06, 0.12), (0.12, 0.2), (0.2, 0.3))


def score_bin(model: str, z_bin: tuple[float, float], n: int, snr: float, seed: int, like: str | None = None) -> dict:
    """Scores of ``model`` on ``n`` spectra drawn like its training set (or ``like``'s) at redshifts in ``z_bin``."""
    est = load_estimator(model, threads=1)
    drawn_like = load_estimator(like, threads=1) if like else est
    base = trainset_from_record(drawn_like.manifest.raw["training"]["config"]["trainset"])
    lo, hi = max(z_bin[0], base.redshift_range[0]), min(z_bin[1], base.redshift_range[1])
    cfg = dataclasses.replace(
        base,
        n=n,
        seed=seed,
        batch=min(64, n),
        redshift_range=(lo, hi),
        redshift_distribution="uniform",
        snr_range=(snr, snr),
        noiseless_fraction=0.0,
        emission_fraction=0.0,
    )
    data = synthesise(cfg, load_ssp_library(), est.manifest.input)
    flux, var, mask = observe_noisy(data, np.random.default_rng([seed, 1]), cfg)
    pred, fitted = predict_noisy(est, data, flux, var, mask, cfg)
    names = list(data.label_names)
    old = (data.labels[:, names.index("log_age")] > 9.7) & (data.labels[:, names.index("metallicity")] > -0.3)
    out = {"z": [lo, hi], "n": int(fitted.sum()), "n_old": int((fitted & old).sum()), "properties": {}}
    for j, name in enumerate(names):
        if name not in pred:
            continue
        d = pred[name] - data.labels[:, j]
        err = pred.get(f"{name}_err", np.full_like(d, np.nan))
        out["properties"][name] = {
            "bias": float(np.median(d[fitted])),
            "robust_sigma": robust_sigma(d[fitted]),
            "bias_old": float(np.median(d[fitted & old])) if (fitted & old).any() else float("nan"),
            "robust_sigma_old": robust_sigma(d[fitted & old]),
            "within_2sigma": float(np.mean(np.abs(d[fitted]) <= 2 * err[fitted])),
        }
    return out


def write_markdown(report: dict, path: Path) -> Path:
    lines = [
        "# Observed-frame models across redshift, on mocks drawn like their training sets",
        "",
        f"`python -m benchmarks.redshift_coverage` ({report['seconds']:.0f} s on this machine): {report['n']} spectra "
        f"per bin at S/N {report['snr']:g} per Angstrom, no emission lines, seed {report['seed']}, drawn like "
        f"{report['like'] or 'each model'}'s training set. `old`: log age > "
        "9.7 and [M/H] > -0.3 (an early-type galaxy). Bias = median(estimate - truth); within 2σ: share of all "
        "spectra within twice the reported error.",
        "",
        "| model | z | property | bias | robust σ | bias (old) | robust σ (old) | within 2σ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, bins in report["models"].items():
        for b in bins:
            for name, s in b["properties"].items():
                lines.append(
                    f"| {model} | {b['z'][0]:g}-{b['z'][1]:g} | {name} | {s['bias']:+.3f} | {s['robust_sigma']:.3f} | "
                    f"{s['bias_old']:+.3f} | {s['robust_sigma_old']:.3f} | {s['within_2sigma']:.2f} |"
                )
    path.write_text("\n".join(lines) + "\n")
    return path


def write_png(report: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    names = sorted({n for bins in report["models"].values() for b in bins for n in b["properties"]})
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for model, bins in report["models"].items():
            z = [np.mean(b["z"]) for b in bins if name in b["properties"]]
            bias = [b["properties"][name]["bias_old"] for b in bins if name in b["properties"]]
            ax.plot(z, bias, "o-", label=model)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("redshift")
        ax.set_title(f"{name}: bias, old metal-rich")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["sdss-cnn"])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--snr", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=999)
    p.add_argument("--like", default=None, help="draw every model's spectra like this model's training set")
    p.add_argument("--json", type=Path, default=Path("redshift_coverage.json"))
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    models = {m: [score_bin(m, b, a.n, a.snr, a.seed, a.like) for b in BINS] for m in a.models}
    report = {
        "n": a.n,
        "snr": a.snr,
        "seed": a.seed,
        "like": a.like,
        "models": models,
        "seconds": time.perf_counter() - t0,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=1) + "\n")
    md, png = write_markdown(report, a.json.with_suffix(".md")), write_png(report, a.json.with_suffix(".png"))
    print(f"wrote {a.json}, {md} and {png}")
    return report


if __name__ == "__main__":
    main()
