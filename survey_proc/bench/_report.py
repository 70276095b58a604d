"""The readable side of a benchmark: a Markdown report and a PNG beside the JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from survey_proc.figures import pyplot, save_figure

PROPS = ("log_age", "metallicity", "av", "sigma", "velocity")


def _fmt(x: float, digits: int = 0) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    if abs(x) >= 100 or digits == 0:
        return f"{x:,.{digits}f}"
    return f"{x:.{digits}g}" if abs(x) < 0.01 else f"{x:,.{digits}f}"


def _energy(r: dict) -> str:
    label = {"estimate": "estimate: CPU-s x W/core", "rapl": "RAPL", "nvml": "NVML"}.get(
        r["energy_method"], r["energy_method"]
    )
    j = r["joules_per_spectrum"]
    value = f"{j:.3g}" if np.isfinite(j) else "n/a"
    host = r.get("host_joules_per_spectrum")
    if r["energy_method"] == "nvml" and host is not None:  # a GPU row: the host fed the GPU
        host_label = "RAPL" if r.get("host_energy_method") == "rapl" else "estimate"
        return f"{value} J (GPU, NVML) + {host:.3g} J (host, {host_label})"
    return f"{value} J ({label})"


def stage_table(report: dict) -> list[str]:
    """Microseconds per spectrum in each stage of a worker task (wall / CPU)."""
    stages = (
        ("read", "read_cpu", "read (Zarr, decompress)"),
        ("prepare", "prepare_cpu", "preprocess"),
        ("estimator", "estimator_cpu", "estimator"),
        ("write", "write_cpu", "write (Zarr) + markers"),
        (None, "cpu", "whole task, CPU"),
    )
    lines = [
        "| method | workers | " + " | ".join(label for *_, label in stages) + " |",
        "|---|---:|" + "---:|" * len(stages),
    ]
    for r in report["results"]:
        us = r.get("per_spectrum_us") or {}
        cells = []
        for wall, cpu, _ in stages:
            parts = []
            if wall:
                parts.append(f"{us.get(wall, float('nan')):,.0f}")
            if cpu:
                parts.append(f"{us.get(cpu, float('nan')):,.0f} CPU")
            cells.append(" / ".join(parts))
        lines.append(f"| {r['method']} ({r['device']}) | {r['workers']} | " + " | ".join(cells) + " |")
    return lines


def _warm_note(report: dict) -> str:
    """How many untimed runs preceded each timed model and pPXF run (rows of older reports: none)."""
    warm = {r.get("warm_up_runs", 0) for r in report["results"]}
    n = max(warm) if warm else 0
    return (
        f" Each timed run of the model and of pPXF followed {n} untimed run{'s' if n > 1 else ''} of the "
        "same estimator on the same cube and cluster."
        if n
        else ""
    )


def results_table(report: dict) -> list[str]:
    lines = [
        "| method | device | workers | spectra | seconds | spectra/s end to end | per worker | "
        "estimator alone, spectra/s | energy per spectrum | peak RSS per worker (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in report["results"]:
        rss = max(r.get("peak_rss_mb_per_worker") or [float("nan")])
        device = r["device"] + (f", {r['cluster']}" if r.get("cluster") else "")
        lines.append(
            f"| {r['method']} | {device} | {r['workers']} | {r['spectra']:,} | {r['seconds']:.2f} | "
            f"{_fmt(r['spectra_per_s'], 2 if r['spectra_per_s'] < 100 else 0)} | "
            f"{_fmt(r['spectra_per_s_per_worker'], 2 if r['spectra_per_s_per_worker'] < 100 else 0)} | "
            f"{_fmt(r['estimator_spectra_per_s'], 2 if r['estimator_spectra_per_s'] < 100 else 0)} | "
            f"{_energy(r)} | {rss:.0f} |"
        )
    return lines


def accuracy_table(report: dict) -> list[str]:
    acc = report.get("accuracy") or {}
    names = {
        "model": "model, whole cube",
        "model_on_ppxf_sample": "model, pPXF's sample",
        "ppxf": "pPXF, sample",
        "fit_on_ppxf_sample": "fit, pPXF's sample",
    }
    lines = [
        "| estimates | spectra used | " + " | ".join(f"{p} bias / robust sigma" for p in PROPS) + " |",
        "|---|---:|" + "---|" * len(PROPS),
    ]
    for key, label in names.items():
        a = acc.get(key)
        if not a:
            continue
        cells = []
        for p in PROPS:
            e = a.get(p)
            cells.append(f"{e['bias']:+.3f} / {e['robust_sigma']:.3f} {e['units']}" if e else "-")
        lines.append(f"| {label} | {a['used']} of {a['spaxels']} | " + " | ".join(cells) + " |")
    return lines


def write_png(report: dict, path: Path) -> Path:
    """Four panels: throughput against workers, cost against cube size, energy, accuracy."""
    fig, ax = pyplot().subplots(2, 2, figsize=(11, 8))
    _throughput_panel(ax[0, 0], report)
    _size_panel(ax[0, 1], report)
    _energy_panel(ax[1, 0], report["results"])
    _accuracy_panel(ax[1, 1], report.get("accuracy") or {})
    m = report["machine"]
    fig.suptitle(
        f"survey-proc bench, {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'} ({report['created']})",
        fontsize=10,
    )
    save_figure(fig, path, dpi=90)
    return path


def _throughput_panel(a, report: dict) -> None:
    res = report["results"]
    for method, colour in (("model", "C0"), ("ppxf", "C1"), ("fit", "C3")):
        rows = sorted((r for r in res if r["method"] == method and r["device"] == "cpu"), key=lambda r: r["workers"])
        if rows:
            w = [r["workers"] for r in rows]
            a.plot(w, [r["spectra_per_s"] for r in rows], "o-", color=colour, label=f"{method}, end to end")
            a.plot(
                w,
                [r["estimator_spectra_per_s"] for r in rows],
                "s--",
                color=colour,
                alpha=0.6,
                label=f"{method}, estimator alone",
            )
            a.plot(w, [rows[0]["spectra_per_s"] * k / rows[0]["workers"] for k in w], ":", color=colour, alpha=0.5)
    for r in res:
        if r["device"] != "cpu":
            a.axhline(r["spectra_per_s"], color="C2", label=f"model, {r['device']}")
    a.set_yscale("log")
    a.set_xlabel("Dask workers (1 thread each)")
    a.set_ylabel("spectra / s")
    a.set_title(
        f"throughput (dotted: linear scaling); speed-up per core {report['speedup_per_core']:,.0f}x", fontsize=9
    )
    a.legend(fontsize=7)


def _size_panel(a, report: dict) -> None:
    rows = report["cube_size_scaling"]["rows"]
    if rows:
        n = np.array([r["spectra"] for r in rows])
        t = np.array([r["seconds"] for r in rows])
        a.plot(n, t, "o", color="C0", label=f"model, {rows[0]['workers']} worker(s)")
        fit = report["cube_size_scaling"]["fit"]
        if fit:
            xs = np.linspace(0, n.max() * 1.05, 50)
            a.plot(
                xs,
                fit["fixed_seconds"] + fit["seconds_per_spectrum"] * xs,
                "-",
                color="C0",
                alpha=0.6,
                label=f"{fit['fixed_seconds']:.2f} s + {fit['seconds_per_spectrum'] * 1e6:.0f} us x spectra",
            )
        a.legend(fontsize=7)
    a.set_xlabel("spectra in the cube")
    a.set_ylabel("seconds per cube, end to end")
    a.set_title("cost vs cube size", fontsize=9)


def _energy_panel(a, res: list[dict]) -> None:
    labels = [f"{r['method']}\n{r['device']}, {r['workers']}w" for r in res]
    vals = [r["joules_per_spectrum"] for r in res]
    colours = {"model": "C0", "ppxf": "C1", "fit": "C3"}
    bars = a.bar(range(len(res)), vals, color=[colours.get(r["method"], "C2") for r in res])
    for b, r in zip(bars, res):
        a.text(b.get_x() + b.get_width() / 2, b.get_height(), r["energy_method"], ha="center", va="bottom", fontsize=7)
    a.set_xticks(range(len(res)), labels, fontsize=7)
    a.set_yscale("log")
    a.set_ylabel("joules per spectrum")
    a.set_title("energy per spectrum (method above each bar; 'estimate' = CPU-s x W/core)", fontsize=9)


def _accuracy_panel(a, acc: dict) -> None:
    props = ("log_age", "metallicity", "av")
    keys = [k for k in ("model_on_ppxf_sample", "ppxf", "fit_on_ppxf_sample", "model") if acc.get(k)]
    width = 0.8 / max(len(keys), 1)
    for i, k in enumerate(keys):
        vals = [acc[k].get(p, {}).get("robust_sigma", np.nan) for p in props]
        a.bar(np.arange(len(props)) + i * width, vals, width, label=k.replace("_", " "))
    a.set_xticks(np.arange(len(props)) + width * (len(keys) - 1) / 2, [f"{p}\n(dex or mag)" for p in props], fontsize=8)
    a.set_ylabel("robust scatter vs truth")
    a.set_title("accuracy against the mock's truth (flag = 0)", fontsize=9)
    if keys:
        a.legend(fontsize=7)


def engine_line(report: dict) -> str:
    """The engine's own ceiling: the model's manifest with a TorchScript that returns zeros."""
    e = report.get("engine_alone")
    if not e:
        return ""
    us = e.get("per_spectrum_us", {})
    ppxf = [r for r in report["results"] if r["method"] == "ppxf"]
    budget = ""
    if ppxf:
        p = max(ppxf, key=lambda r: r["workers"])
        per_core_ppxf = p["spectra_per_s"] / p["workers"]
        need = 1000 * per_core_ppxf
        engine_per_core = e["spectra_per_s"] / e["workers"]
        budget = (
            f" For 1,000x pPXF per core ({per_core_ppxf:.2f} spectra/s per core here) a model must sustain "
            f"{need:,.0f} spectra/s per core end to end"
        )
        if engine_per_core > need:
            budget += (
                f", i.e. cost at most {1e6 / need - 1e6 / engine_per_core:,.0f} us per spectrum on top of the engine."
            )
        else:
            budget += (
                f"; the engine alone ({engine_per_core:,.0f} per core, "
                f"{engine_per_core / per_core_ppxf:,.0f}x pPXF) is already below that: reaching it takes a "
                "faster engine, not only a faster model."
            )
    return (
        f"Engine alone (the model's manifest with a TorchScript returning zeros, {e['workers']} worker(s)): "
        f"{e['spectra_per_s']:,.0f} spectra/s end to end, {e['spectra_per_s'] / e['workers']:,.0f} per worker; "
        f"task CPU {us.get('cpu', float('nan')):,.0f} us per spectrum (read {us.get('read_cpu', float('nan')):,.0f}, "
        f"preprocess {us.get('prepare_cpu', float('nan')):,.0f}, write {us.get('write_cpu', float('nan')):,.0f})."
        + budget
    )


def markdown(report: dict, png_name: str) -> str:
    """The report: headline, throughput, cost against cube size, accuracy, GPU rows and notes."""
    lines = [
        *_headline(report),
        "## Throughput, energy, memory",
        "",
        *results_table(report),
        "",
        "End to end = the whole `survey-proc run` on a warm LocalCluster: open and validate the cube, write "
        "the maps store's metadata, read every region, preprocess, estimate, write, verify every region "
        "(CRC-32), consolidate. pPXF runs on a sample of spaxels spread evenly over the same cube "
        "(its cost is per spectrum); the model on the whole cube and on the same sample." + _warm_note(report),
        "",
        "Where the time goes inside the worker tasks (microseconds per spectrum, wall / CPU; on a machine "
        "shared with other jobs the CPU figures are the steadier ones):",
        "",
        *stage_table(report),
        "",
        engine_line(report),
        "",
        *_size_section(report),
        "## Accuracy against the truth of the mock",
        "",
        *accuracy_table(report),
        "",
        f"![benchmark]({png_name})",
        "",
        *_gpu_section(report),
    ]
    if report.get("gpu_notes"):
        lines += ["GPU runs not measured: " + "; ".join(report["gpu_notes"]), ""]
    if report.get("compare_figures"):
        lines += [
            "Model and pPXF on the same spectra (`survey-proc compare`): "
            + ", ".join(f"[{Path(f).stem}]({f})" for f in report["compare_figures"]),
            "",
        ]
    lines += [f"Energy: {report['energy_methods_note']}.", ""]
    return "\n".join(lines)


def _headline(report: dict) -> list[str]:
    m = report["machine"]
    sp = report["speedup_per_core_detail"]
    return [
        f"# survey-proc benchmark ({'quick' if report['config']['quick'] else 'full'}), {report['created']}",
        "",
        f"Command: `{report['command']}` (took {report['bench_seconds']:.0f} s)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} logical cores, {m['memory_gb']} GB, GPU: {m['gpu'] or 'none'}"
        f"{', driver ' + m['driver'] if m.get('driver') else ''}; load average {m['load_average_1min']} at the "
        f"start, {m.get('load_average_1min_end')} at the end (other jobs share this machine when it is above 0).",
        "",
        f"**The model is {report['speedup_per_core']:,.0f}x faster per core than pPXF, end to end** "
        f"({sp['definition']}); from CPU time {sp['cpu_time']:,.0f}x. "
        f"Acceptance (>= 1,000x per core): **{'met' if sp['acceptance_1000x'] else 'not met'}**.",
        "",
        *_fit_headline(report),
    ]


def _fit_headline(report: dict) -> list[str]:
    fs = report.get("fit_speedup_per_core")
    if not fs:
        return []
    return [
        f"**The fit (`--method fit`) is {fs['end_to_end']:,.0f}x faster per core than pPXF, end to end** "
        f"({fs['definition']}); from CPU time {fs['cpu_time']:,.0f}x. "
        f"Acceptance (>= 100x per core): **{'met' if fs['acceptance_100x'] else 'not met'}**.",
        "",
    ]


def _size_section(report: dict) -> list[str]:
    fit = report["cube_size_scaling"]["fit"]
    top = max(r["workers"] for r in report["results"] if r["device"] == "cpu")
    return [
        "## Cost against cube size",
        "",
        f"Model with {top} worker(s): "
        + (
            f"{fit['fixed_seconds']:.2f} s fixed + {fit['seconds_per_spectrum'] * 1e6:.0f} us per spectrum "
            f"(marginal {fit['spectra_per_s_marginal']:,.0f} spectra/s); a 65,536-spaxel cube would take "
            f"{fit['seconds_for_65536_spectra_extrapolated']:.0f} s (extrapolated)."
            if fit
            else "one size only."
        ),
        "",
        "| spectra | seconds | spectra/s |",
        "|---:|---:|---:|",
        *[
            f"| {r['spectra']:,} | {r['seconds']:.2f} | {r['spectra_per_s']:,.0f} |"
            for r in report["cube_size_scaling"]["rows"]
        ],
        "",
    ]


def _gpu_line(r: dict) -> str:
    target = 10_000 if r["method"] == "fit" else 50_000
    met = r.get(f"gpu_acceptance_{target // 1000}k")
    return (
        f"- {r['kind']}: {r['spectra_per_s']:,.0f} spectra/s end to end with {r['workers']} worker(s); "
        f"acceptance (>= {target:,} spectra/s): **{'met' if met else 'not met'}**"
    )


def _gpu_section(report: dict) -> list[str]:
    gpu_rows = [r for r in report["results"] if r["device"] != "cpu"]
    if not gpu_rows:
        return []
    lines = [
        "## GPU",
        "",
        *[_gpu_line(r) for r in gpu_rows],
        "",
    ]
    per_gpu = report.get("speedup_per_gpu")
    if per_gpu:
        lines += [
            f"One GPU ({per_gpu['row']}) against pPXF on this machine's cores: "
            f"**{per_gpu['vs_ppxf_per_core']:,.0f}x** one core, {per_gpu['vs_ppxf_all_cores']:,.0f}x all of "
            f"them; {per_gpu['energy_ratio']:,.0f}x less energy per spectrum ({per_gpu['definition']}).",
            "",
        ]
    return lines


def write_report(report: dict, json_path: Path) -> dict[str, Path]:
    """Markdown and PNG beside ``json_path`` (same stem)."""
    png = write_png(report, json_path.with_suffix(".png"))
    md = json_path.with_suffix(".md")
    md.write_text(markdown(report, png.name))
    return {"markdown": md, "png": png}
