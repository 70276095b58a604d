"""The packaged photometric models evaluated the way their papers do, against issue 20's targets.

    python -m benchmarks.photometric_models --galaxies 192 --snr 30 --out benchmarks/results

For each model (``narrowband``, after Liew-Cain et al. 2021; ``ugriz-maps``, after Buck & Wolf 2021)
this runs :func:`survey_proc.training.evaluate_photometric` (``survey-proc evaluate``): Set A, the
pixels of training galaxies held out of training, and Set B, new galaxies drawn like the training
set with a seed of their own, observed at S/N ``--snr`` per Angstrom at the brightest pixel, through
the exported file and the engine's preprocessing. Writes ``photometric_models.json``, ``.md`` (the
tables, the papers' figures and the acceptance checks) and one PNG per model.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

#: issue 20's acceptance on Set B at S/N 30: (model, property) -> the largest robust sigma (dex)
SCATTER_TARGETS = {
    ("ugriz-maps", "log_mass_surface_density"): 0.10,
    ("ugriz-maps", "log_sfr_surface_density"): 0.25,
    ("narrowband", "log_age"): 0.10,
    ("narrowband", "metallicity"): 0.10,
}
COVERAGE = (0.60, 0.76)
MAX_BIAS = 0.05


def acceptance(model: str, result: dict, snr: str) -> list[str]:
    """One line per Set B output: scatter (where targeted), coverage and bias against the targets."""
    lines = []
    for name, m in result["snr"][snr]["set_b"]["all"].items():
        if not isinstance(m, dict):
            continue
        target = SCATTER_TARGETS.get((model, name))
        checks = (
            [] if target is None else [(m["robust_sigma"] <= target, f"σ_rob {m['robust_sigma']:.3f} (≤ {target})")]
        )
        checks.append((COVERAGE[0] <= m["coverage_68"] <= COVERAGE[1], f"cov68 {m['coverage_68']:.3f}"))
        checks.append((abs(m["bias"]) <= MAX_BIAS, f"bias {m['bias']:+.3f}"))
        parts = [f"{text} {'✓' if ok else '✗'}" for ok, text in checks]
        lines.append(f"- {model} {name}: " + ", ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> dict:
    from survey_proc.training import evaluate_photometric, format_photometric
    from survey_proc.training._phot_evaluate import SET_GALAXIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["narrowband", "ugriz-maps"])
    parser.add_argument("--galaxies", type=int, default=SET_GALAXIES, help="galaxies in Set A and in Set B")
    parser.add_argument("--snr", type=float, default=30.0)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = f"{args.snr:g}"
    results: dict = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}", "models": {}}
    md = [f"# Photometric models: Set A and Set B at S/N {key}", ""]
    for model in args.models:
        t0 = time.perf_counter()
        res = evaluate_photometric(
            model, snrs=(args.snr,), galaxies=args.galaxies, set_a_galaxies=args.galaxies, png=out / f"{model}_sets.png"
        )
        res["seconds"] = time.perf_counter() - t0
        results["models"][model] = res
        md += [f"## {model}", "", format_photometric(res), "", f"![{model}]({model}_sets.png)", ""]
        md += ["Against issue 20 (Set B):", "", *acceptance(model, res, key), ""]
        print(format_photometric(res), flush=True)
    (out / "photometric_models.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "photometric_models.md").write_text("\n".join(md))
    print(f"results: {out / 'photometric_models.json'}, {out / 'photometric_models.md'}")
    return results


if __name__ == "__main__":
    main()
