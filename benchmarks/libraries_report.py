"""Markdown and PNG of the library benchmark (:mod:`benchmarks.libraries`) from its JSON report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.libraries import UNCALIBRATED
from survey_proc.figures import pyplot, save_figure

PROPS = ("log_age", "metallicity", "av", "sigma")
LABELS = {"log_age": "log age", "metallicity": "[M/H]", "av": "A_V", "sigma": "σ"}


def _f(x, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, fmt)


def _score(entry: dict, method: str, cube: str) -> dict | None:
    return next((s for s in entry["scores"] if s["method"] == method and s["cube"] == cube), None)


def _summary_table(report: dict, method: str, cube: str) -> list[str]:
    head = "| library | role | cube masked | fitted | flagged | OOD flag | ood_score p50 / p99 (threshold) | "
    head += "AUC ood: 2σ misses / library | " + " | ".join(f"{LABELS[p]} cov68 / ok2σ" for p in PROPS) + " |"
    lines = [head, "|" + "---|" * (8 + len(PROPS))]
    for entry in report["libraries"]:
        s, lib = _score(entry, method, cube), entry["library"]
        if s is None:
            continue
        props = s["properties"]
        cells = [f"{_f(props[p]['coverage_68'])} / {_f(props[p]['ok_2sigma'])}" if p in props else "–" for p in PROPS]
        lines.append(
            f"| {lib['name']} | {lib['role']} | {_f(lib['cube_pixels_masked'], '.0%')} | {_f(s['fitted'], '.0%')} | "
            f"{_f(s['flagged'], '.0%')} | {_f(s['ood_flagged'], '.1%')} | "
            f"{_f(s['ood_p50'])} / {_f(s['ood_p99'])} ({_f(s['ood_threshold'])}) | "
            f"{_f(s['auc_ood_any'])} / {_f(s['auc_vs_emiles'])} | " + " | ".join(cells) + " |"
        )
    return lines


def _pair(before: dict, after: dict, key: str, prop: str | None = None, fmt: str = ".2f") -> str:
    """``before → after`` of a run's ``key`` (of property ``prop``, if given)."""
    a, b = (s["properties"].get(prop, {}) if prop else s for s in (before, after))
    return f"{_f(a.get(key), fmt)} → {_f(b.get(key), fmt)}"


def _before_after_table(report: dict, model: str) -> list[str]:
    """Per library, ``model`` before (``@uncalibrated``) and after its library calibration, on the mock."""
    head = "| library | role | flagged | OOD flag | " + " | ".join(
        f"{LABELS[p]} cov68 | {LABELS[p]} ok2σ" for p in PROPS[:3]
    )
    lines = [head + " |", "|" + "---|" * (4 + 2 * 3)]
    for entry in report["libraries"]:
        after, before = _score(entry, model, "mock"), _score(entry, model + UNCALIBRATED, "mock")
        if after is None or before is None:
            continue

        cells = [_pair(before, after, k, p) for p in PROPS[:3] for k in ("coverage_68", "ok_2sigma")]
        lib = entry["library"]
        flags = f"{_pair(before, after, 'flagged', fmt='.0%')} | {_pair(before, after, 'ood_flagged', fmt='.0%')}"
        lines.append(f"| {lib['name']} | {lib['role']} | {flags} | " + " | ".join(cells) + " |")
    return lines


def _total_table(report: dict, model: str, cube: str = "mock") -> list[str]:
    """Per library, ``model``'s 68 % coverage and 2-sigma share on ``cube`` with ``<name>_err`` alone and with
    the total error (adding ``<name>_sys_err``); no lines where it reports no library systematic."""
    head = "| library | role | " + " | ".join(f"{LABELS[p]} cov68 | {LABELS[p]} ok2σ" for p in PROPS[:3])
    lines = [head + " |", "|" + "---|" * (2 + 2 * 3)]
    for entry in report["libraries"]:
        s = _score(entry, model, cube)
        if s is None or not any(np.isfinite(_num(q.get("ok_2sigma_total"))) for q in s["properties"].values()):
            continue
        cells = [
            f"{_f(q.get(k))} → {_f(q.get(k + '_total'))}"
            for q in (s["properties"].get(p, {}) for p in PROPS[:3])
            for k in ("coverage_68", "ok_2sigma")
        ]
        lines.append(f"| {entry['library']['name']} | {entry['library']['role']} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def _property_table(report: dict, prop: str) -> list[str]:
    lines = [
        "| library | method | mock | bias | robust σ | cov68 | ok2σ | AUC ood | off 2σ | n good |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["libraries"]:
        for s in entry["scores"]:
            p = s["properties"].get(prop)
            if p is None:
                continue
            fmt = ".1f" if prop == "sigma" else ".3f"
            lines.append(
                f"| {entry['library']['name']} | {s['method']} | {s['cube']} | {_f(p['bias'], '+' + fmt)} | "
                f"{_f(p['robust_sigma'], fmt)} | {_f(p['coverage_68'])} | {_f(p['ok_2sigma'])} | {_f(p['auc_ood'])} | "
                f"{p['off_2sigma']} | {p['n_good']} |"
            )
    return lines


def _library_table(report: dict) -> list[str]:
    lines = [
        "| library | role | [M/H] grid | ages | log age range | rest range (Å) | FWHM 4800/6500/8500 Å | "
        "excess over MUSE (km/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["libraries"]:
        lib = entry["library"]
        fwhm = "/".join(_f(v) for v in lib["fwhm_rest_A"].values())
        excess = "/".join(_f(v, ".0f") for v in lib["lsf_excess_kms"].values())
        ages = lib["grid"]["log_age"]
        lines.append(
            f"| {lib['name']} | {lib['role']} | {', '.join(_f(m, '+.2f') for m in lib['grid']['metal'])} | "
            f"{lib['n_ages']} | {ages[0]:.2f}–{ages[1]:.2f} | {lib['rest_wave'][0]:.0f}–{lib['rest_wave'][1]:.0f} | "
            f"{fwhm} | {excess} |"
        )
    return lines


def _also_trained_on(models: list[str]) -> str:
    """`` (`X` also on A and B: for it those rows are in training)`` for the models of a report trained on
    more libraries than E-MILES (their manifests' ``trainset.libraries``); empty if none is."""
    from survey_proc.estimators import load_manifest

    parts = []
    for model in models:
        try:
            trainset = load_manifest(model).raw.get("training", {}).get("config", {}).get("trainset", {})
        except Exception:  # a bundle this build does not ship: say nothing of it
            continue
        names = [n.upper() for n in trainset.get("libraries") or {}]
        if names:
            parts.append(f"`{model}` also on {' and '.join(names)}")
    return f" ({'; '.join(parts)}: for them those rows are in training)" if parts else ""


def write_markdown(report: dict, path: Path) -> Path:
    o = report["options"]
    first = o["models"][0]
    lines = [
        "# Estimates, errors and flags on mocks from other SSP libraries",
        "",
        f"`python -m benchmarks.libraries` ({report['software']}, {report['seconds'] / 60:.0f} min on this machine). "
        f"Mocks of {o['size']} x {o['size']} spaxels at S/N {o['snr']:g} (seed {o['seed']}, z = {o['redshift']:g}), "
        "the cube's pixels beyond each library masked; pPXF "
        + ("and --method fit " if "fit" in o["methods"] else "")
        + f"on a {o['sample']} x {o['sample']} mock of the same galaxy. The models are trained on E-MILES"
        + _also_trained_on(o["models"])
        + "; MIUSCAT and BC03 are the evaluation libraries (never for training, calibration or tuning)."
        + (
            f" Not in this build: --method {', '.join(report['methods_not_in_this_build'])}."
            if report["methods_not_in_this_build"]
            else ""
        ),
        "",
        *[f"- `{k}`: {v}" for k, v in report["definitions"].items()],
        "",
        f"## `{first}` on each library ({o['size']} x {o['size']})",
        "",
        *_summary_table(report, first, "mock"),
        "",
        f"`control`: E-MILES mocks cut to a library's range (the same pixels masked), through `{first}`:",
        "",
        *_summary_table(report, first, "control"),
        "",
    ]
    if o.get("uncalibrated"):
        for model in o["models"]:
            lines += [
                f"## `{model}` before → after its library calibration ({o['size']} x {o['size']})",
                "",
                "Before: `@uncalibrated`, the bundle as exported; after: with `error_systematics` and the "
                "out_of_distribution threshold of `python -m benchmarks.library_calibration` (calibration libraries "
                "only; MIUSCAT and BC03 never used).",
                "",
                *_before_after_table(report, model),
                "",
            ]
    runs = [(m, "mock", o["size"]) for m in o["models"]] + [(m, "sample", o["sample"]) for m in o["methods"]]
    for model, cube, side in runs:
        table = _total_table(report, model, cube)
        if table:
            lines += [
                f"## `{model}` with its SSP-library systematic ({side} x {side})",
                "",
                "`<name>_err` alone → the total error `sqrt(<name>_err² + <name>_sys_err²)`, the one to hold an "
                "estimate to against another library's scale (`<name>_sys_err` is calibrated on the calibration "
                "libraries only; MIUSCAT and BC03 never used).",
                "",
                *table,
                "",
            ]
    for prop in PROPS:
        lines += [f"## {LABELS[prop]}", "", *_property_table(report, prop), ""]
    lines += ["## The libraries", "", *_library_table(report), ""]
    lines += ["Assumptions per library (mass, flux scale) are in the JSON (`libraries[].library.assumptions`).", ""]
    path.write_text("\n".join(lines))
    return path


def write_png(report: dict, path: Path) -> Path:
    plt = pyplot()
    first = report["options"]["models"][0]
    entries = [e for e in report["libraries"] if _score(e, first, "mock")]
    names = [e["library"]["name"] + ("*" if e["library"]["role"] == "evaluation" else "") for e in entries]
    scores = [_score(e, first, "mock") for e in entries]
    x = np.arange(len(entries))
    fig, axes = plt.subplots(2, 2, figsize=(14, 8.5))
    width = 0.8 / len(PROPS)
    for ax, key, ideal, title in (
        (axes[0, 0], "coverage_68", 0.68, "68 % coverage of the reported errors (unflagged)"),
        (axes[0, 1], "ok_2sigma", 0.85, "within 2σ or flagged (all spaxels)"),
    ):
        before = [_score(e, first + UNCALIBRATED, "mock") for e in entries]
        for k, prop in enumerate(PROPS):
            vals = [s["properties"].get(prop, {}).get(key) for s in scores]
            ax.bar(x + (k - 1.5) * width, [np.nan if v is None else v for v in vals], width, label=LABELS[prop])
            old = [b["properties"].get(prop, {}).get(key) if b else None for b in before]
            if any(v is not None for v in old):
                ax.plot(x + (k - 1.5) * width, [np.nan if v is None else v for v in old], "k_", ms=9,
                        label="before calibration" if k == 0 else None)  # fmt: skip
            total = [s["properties"].get(prop, {}).get(key + "_total") for s in scores]
            if any(np.isfinite(_num(v)) for v in total):
                ax.plot(x + (k - 1.5) * width, [np.nan if v is None else v for v in total], "kx", ms=5,
                        label="with <name>_sys_err" if k == 0 else None)  # fmt: skip
        ax.axhline(ideal, color="k", ls="--", lw=1)
        ax.set_title(f"{first}: {title}", fontsize=10)
        ax.set_ylim(0, 1.05)
    _bias_panel(axes[1, 0], report, entries, x)
    ood = [s["ood_flagged"] for s in scores]
    aucs = [np.nan if s["auc_ood_any"] is None else s["auc_ood_any"] for s in scores]
    shift = [np.nan if s.get("auc_vs_emiles") is None else s["auc_vs_emiles"] for s in scores]
    axes[1, 1].bar(x - 0.27, ood, 0.27, label="out_of_distribution flag rate")
    axes[1, 1].bar(x, aucs, 0.27, label="AUC of ood_score: 2σ misses vs the rest")
    axes[1, 1].bar(x + 0.27, shift, 0.27, label="AUC of ood_score: this library vs E-MILES")
    axes[1, 1].axhline(0.5, color="k", ls=":", lw=1)
    axes[1, 1].set_ylim(0, 1.05)
    axes[1, 1].set_title(f"{first}: novelty flag and score", fontsize=10)
    for ax in axes.flat:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=7)
    title = "mocks from other SSP libraries (* evaluation libraries); models trained on E-MILES" + (
        " (and more: see the report)" if _also_trained_on(report["options"]["models"]) else ""
    )
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=90)


def _bias_panel(ax, report: dict, entries: list[dict], x: np.ndarray) -> None:
    """Bias of log age and [M/H] per library: the first model on the mock, every method on the sample."""
    first = report["options"]["models"][0]
    runs = [(first, "mock"), *((m, "sample") for m in (first, *report["options"]["methods"]))]
    markers = "osD^v"
    for prop, colour in (("log_age", "C0"), ("metallicity", "C1")):
        for k, (method, cube) in enumerate(runs):
            vals = []
            for e in entries:
                s = _score(e, method, cube)
                b = s["properties"].get(prop, {}).get("bias") if s else None
                vals.append(np.nan if b is None else b)
            if np.isfinite(vals).any():  # runs the benchmark made (no pPXF sample with --sample 0)
                ax.plot(
                    x + 0.08 * k, vals, markers[k % 5], color=colour, label=f"{LABELS[prop]}: {method} ({cube})", ms=5
                )
    ax.axhline(0, color="k", lw=1)
    ax.set_title("bias (median estimate - truth), dex", fontsize=10)
