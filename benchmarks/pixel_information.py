"""How much a single pixel's ugriz photometry says about its stellar-mass and SFR surface density (issue 20).

    python -m benchmarks.pixel_information --json benchmarks/results/pixel_information.json

A plain per-pixel MLP (3 x 128, Gaussian NLL, Adam on a cosine schedule) is trained on the pixels of
``--train`` galaxies drawn like ``ugriz-maps``' training set (its packaged config, the first galaxies of
its draw) and scored on ``--test`` new galaxies (seed ``--seed``, not Set B's), with the pixel selection
and robust scatter of ``survey-proc evaluate``. Three variants: trained and scored on noise-free
photometry (the information in the colours alone); trained with noise at depths S/N 1-100 drawn per
galaxy and epoch (as the U-Net is) and scored at S/N 30, with and without the redshift as an input, and
on the image model's own input encodings: its raw channels (asinh fluxes and errors, masks) and the same
turned into colours (``_phot_arch.colour_transform``). Two more, for Sigma_SFR, ask whether a pixel's
surroundings hold what the pixel lacks: its inputs plus the whole galaxy's integrated colours, or plus
its colours smoothed over 3 pixels; and two, noise-free and noisy, train it only on the pixels that form
stars (the ones scored), as the hurdle model ``ugriz-maps`` is trained. Each variant is trained
``--seeds`` times (default two): one training can land a few hundredths of a dex from another. It is a
yardstick for the image model, not a model: where it beats the U-Net, the U-Net is short of fitting;
where even noise-free it misses a target, the pixels do not carry what the target asks.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

import survey_proc.training
from benchmarks._records import record, write_record
from survey_proc.estimators import load_manifest
from survey_proc.ssp import load_ssp_library
from survey_proc.stores import robust_sigma
from survey_proc.synth import star_forming
from survey_proc.training._fit import gaussian_nll, optimiser_step
from survey_proc.training._galaxies import GalaxySet, synthesise_galaxies
from survey_proc.training._phot_arch import colour_transform
from survey_proc.training._phot_evaluate import scored_pixels
from survey_proc.training._phot_trainer import PhotTrainConfig

log = logging.getLogger("benchmarks.pixel_information")

#: the packaged training config the galaxies are drawn from
CONFIG = Path(survey_proc.training.__file__).parent / "configs" / "ugriz-maps.yaml"

TARGETS = ("log_mass_surface_density", "log_sfr_surface_density")
#: (name, noise in training, redshift as an input, input encoding, trained on star-forming pixels only)
VARIANTS = (
    ("noise-free", False, True, "log", False),
    ("S/N 1-100, scored at 30", True, True, "log", False),
    ("S/N 1-100, scored at 30, no redshift", True, False, "log", False),
    ("S/N 1-100, scored at 30, raw asinh inputs", True, True, "asinh", False),
    ("S/N 1-100, scored at 30, asinh colours", True, True, "colour", False),
    ("S/N 1-100, scored at 30, + the galaxy's integrated colours", True, True, "log+galaxy", False),
    ("S/N 1-100, scored at 30, + colours smoothed over 3 px", True, True, "log+local", False),
    ("noise-free, trained where stars form", False, True, "log", True),
    ("S/N 1-100, scored at 30, trained where stars form", True, True, "log", True),
)
#: the variants that ask whether context (beyond the pixel) holds more: scored on Sigma_SFR only
CONTEXT = ("log+galaxy", "log+local")


def sfr_only(variant: tuple) -> bool:
    """Whether a variant is asked of Sigma_SFR alone: the context ones, and those trained, as the hurdle
    model ``ugriz-maps`` is, only on the pixels that form stars (the ones scored)."""
    return variant[3] in CONTEXT or variant[4]


#: the Gaussian sigma (pixels) of the smoothed colours of ``log+local``
LOCAL_SIGMA = 3.0
#: the r band: colours are taken against it
REFERENCE = 2


def features(
    flux: np.ndarray, var: np.ndarray, redshift: np.ndarray, with_z: bool, encoding: str = "log"
) -> np.ndarray:
    """(G, H, W, 11) for ``log``: log r flux, four colours against r, 30 z (or 0), log (band error / r
    flux); (G, H, W, 16) for ``asinh`` (the image model's channels, ``ugriz-maps``' softening, plus 30 z)
    and ``colour`` (those through :func:`colour_transform`); (G, H, W, 16) for ``log+galaxy`` and
    ``log+local``: ``log`` and :func:`context`."""
    z = np.broadcast_to(redshift[:, None, None, None] * (30.0 if with_z else 0.0), (*flux.shape[:3], 1))
    if encoding in ("asinh", "colour"):
        nb = flux.shape[-1]
        spec = _image_spec()
        x = spec.pixel_inputs(flux.reshape(-1, nb), var.reshape(-1, nb), np.zeros((flux[..., 0].size, nb), bool))
        x = np.concatenate([x, z.reshape(-1, 1)], axis=1)
        if encoding == "colour":
            x = x @ colour_transform(x.shape[1], nb, REFERENCE).numpy().T
        return x.reshape(*flux.shape[:3], -1).astype(np.float32)
    lf = np.log10(np.clip(flux, 1e-3, None))
    err = np.log10(np.sqrt(var)) - lf[..., 2:3]
    x = np.concatenate([lf[..., 2:3], (lf - lf[..., 2:3])[..., [0, 1, 3, 4]], z, err], -1).astype(np.float32)
    return x if encoding == "log" else np.concatenate([x, context(flux, lf, encoding)], -1)


def context(flux: np.ndarray, lf: np.ndarray, encoding: str) -> np.ndarray:
    """(G, H, W, 5) what a pixel's surroundings add, in the log encoding: ``log+galaxy``, the whole
    galaxy's summed flux (log r, four colours); ``log+local``, the fluxes smoothed over
    :data:`LOCAL_SIGMA` pixels (log r against the pixel's own, four colours)."""
    if encoding == "log+galaxy":
        total = np.log10(np.clip(flux.sum(axis=(1, 2)), 1e-3, None))
        x = np.concatenate([total[:, 2:3] - 3.0, total[:, [0, 1, 3, 4]] - total[:, 2:3]], -1)[:, None, None, :]
        return np.broadcast_to(x, (*flux.shape[:3], 5)).astype(np.float32)
    if encoding != "log+local":
        raise ValueError(f"unknown encoding {encoding!r}")
    smooth = np.log10(np.clip(gaussian_filter(flux, (0, LOCAL_SIGMA, LOCAL_SIGMA, 0)), 1e-3, None))
    return np.concatenate([smooth[..., 2:3] - lf[..., 2:3], smooth[..., [0, 1, 3, 4]] - smooth[..., 2:3]], -1).astype(
        np.float32
    )


@functools.cache
def _image_spec():
    """``ugriz-maps``' input spec (read and verified once, not at every epoch)."""
    return load_manifest("ugriz-maps").input


def train_mlp(
    data: GalaxySet,
    target: int,
    noisy: bool,
    with_z: bool,
    epochs: int,
    seed: int,
    encoding: str = "log",
    star_forming_only: bool = False,
) -> tuple:
    """The MLP and the target's (mean, std) after ``epochs`` passes over the pixels with expected S/N >= 3
    (and, with ``star_forming_only``, those whose true Sigma_SFR is at least the floor: ``synth.star_forming``)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    good = data.expected_snr() >= 3.0
    if star_forming_only:
        good &= star_forming(data.labels[..., target])
    y = data.labels[..., target][good]
    mu, sd = float(y.mean()), float(y.std())
    yt = torch.from_numpy(((y - mu) / sd).astype(np.float32))
    n_in = features(data.flux[:1, :1, :1], data.var[:1, :1, :1], data.redshift[:1], with_z, encoding).shape[-1]
    net = torch.nn.Sequential(
        torch.nn.Linear(n_in, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128), torch.nn.SiLU(),
        torch.nn.Linear(128, 128), torch.nn.SiLU(), torch.nn.Linear(128, 2),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    # annealed to zero over the run, as the shipped trainers' schedules: a constant rate left two
    # trainings of the same variant up to 0.12 dex apart in Sigma_SFR (the last steps' noise)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for _ in range(epochs):
        snr = np.exp(rng.uniform(0.0, np.log(100.0), len(data)))  # the at_snr(30) variance, rescaled
        var = data.var * ((30.0 / snr) ** 2)[:, None, None, None]
        flux = data.flux + (rng.standard_normal(data.flux.shape).astype(np.float32) * np.sqrt(var) if noisy else 0)
        x = torch.from_numpy(features(flux, var, data.redshift, with_z, encoding)[good])
        for b in torch.randperm(len(x)).split(1024):
            out = net(x[b])
            log_var = out[:, 1:].clamp(-12.0, 6.0)  # as the shipped networks' heads
            optimiser_step(net, opt, gaussian_nll(out[:, :1], log_var, yt[b, None]))
        schedule.step()
    return net, mu, sd


def score(
    net,
    mu: float,
    sd: float,
    test: GalaxySet,
    target: int,
    name: str,
    noisy: bool,
    with_z: bool,
    seed: int,
    encoding: str = "log",
) -> dict:
    """Bias and robust sigma on ``test`` (noise-free, or one noise draw at its own depth), over the
    pixels whose S/N (measured, or expected) is >= 3."""
    rng = np.random.default_rng([seed, 1])
    noise = rng.standard_normal(test.flux.shape).astype(np.float32) * np.sqrt(test.var)
    flux = test.flux + noise if noisy else test.flux
    sel = np.median((test.flux + noise) / np.sqrt(test.var), axis=-1) >= 3.0  # the same pixels either way
    truth = test.labels[..., target][sel]
    with torch.no_grad():
        x = torch.from_numpy(features(flux, test.var, test.redshift, with_z, encoding)[sel])
        pred = net(x)[:, 0].numpy() * sd + mu
    keep = scored_pixels({name: truth}, name, np.ones(truth.shape, bool))
    d = pred[keep] - truth[keep]
    return {"n": int(keep.sum()), "bias": float(np.median(d)), "robust_sigma": robust_sigma(d)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=400, help="training galaxies")
    parser.add_argument("--test", type=int, default=96, help="new galaxies scored")
    parser.add_argument("--seed", type=int, default=4242, help="the new galaxies' draw")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="MLP trainings per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json", default="benchmarks/results/pixel_information.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    cfg = PhotTrainConfig.from_yaml(CONFIG)
    lib = load_ssp_library()
    labels = tuple(cfg.labels)
    train = synthesise_galaxies(cfg.galaxies, lib, labels, np.arange(args.train)).at_snr(30.0)
    test_cfg = dataclasses.replace(cfg.galaxies, n_galaxies=args.test, seed=args.seed)
    test = synthesise_galaxies(test_cfg, lib, labels).at_snr(30.0)
    rows = []
    for name in TARGETS:
        for variant in VARIANTS:
            if sfr_only(variant) and name != "log_sfr_surface_density":
                continue
            label, noisy, with_z, encoding, sf = variant
            k = labels.index(name)
            for seed in args.seeds:
                net, mu, sd = train_mlp(train, k, noisy, with_z, args.epochs, seed, encoding, star_forming_only=sf)
                scores = score(net, mu, sd, test, k, name, noisy, with_z, args.seed, encoding)
                rows.append({"target": name, "variant": label, "mlp_seed": seed, **scores})
                log.info(f"{name} {label}: {rows[-1]}")
    report = record(
        "pixel_information", argv, train_galaxies=args.train, test_galaxies=args.test, test_seed=args.seed,
        epochs=args.epochs, mlp_seeds=args.seeds, snr=30.0, seconds=round(time.perf_counter() - started, 1),
        rows=rows,
    )  # fmt: skip
    write_record(report, Path(args.json), markdown, figure)
    return report


def markdown(report: dict) -> str:
    lines = [
        "# What one pixel's ugriz says: a per-pixel MLP as a yardstick for `ugriz-maps`",
        "",
        f"`{report['command']}` ({report['date']}, {report['seconds']:.0f} s). {report['train_galaxies']} "
        f"training galaxies drawn like `ugriz-maps`' training set, {report['test_galaxies']} new galaxies "
        f"(seed {report['test_seed']}) scored noise-free or at S/N {report['snr']:g}; pixels with measured S/N >= 3 "
        "at that depth, Σ_SFR only "
        "where its truth is at least twice the detection floor. Robust σ and median bias in dex, each the "
        f"mean over {len(report.get('mlp_seeds', [0]))} trainings of the MLP (seeds {report.get('mlp_seeds', [0])}; "
        "in brackets the range: how far one training can land from another).",
        "",
        "| target | MLP trained and scored on | n | bias | robust σ |",
        "|---|---|---:|---:|---:|",
    ]
    for (target, variant), rows in _grouped(report["rows"]).items():
        b, s = [r["bias"] for r in rows], [r["robust_sigma"] for r in rows]
        lines.append(
            f"| {target} | {variant} | {rows[0]['n']} | {np.mean(b):+.3f} ({min(b):+.3f} to {max(b):+.3f}) "
            f"| {np.mean(s):.3f} ({min(s):.3f} to {max(s):.3f}) |"
        )
    return "\n".join(lines) + "\n"


def _grouped(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The rows of each (target, variant), in the order they were run."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((r["target"], r["variant"]), []).append(r)
    return out


def figure(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TARGETS), figsize=(14, 5.5), gridspec_kw={"width_ratios": [1, 1.6]})
    for ax, name in zip(axes, TARGETS):
        groups = {v: [r["robust_sigma"] for r in rs] for (t, v), rs in _grouped(report["rows"]).items() if t == name}
        mean = np.array([np.mean(s) for s in groups.values()])
        spread = np.array([[mean[i] - min(s), max(s) - mean[i]] for i, s in enumerate(groups.values())]).T
        rows = np.arange(len(groups))[::-1]  # the first variant on top; long names read across
        ax.barh(rows, mean, xerr=spread, capsize=3, color="tab:blue")
        ax.set_yticks(rows, list(groups), fontsize=7)
        ax.axvline(0.10 if name.startswith("log_mass") else 0.25, color="k", ls="--", lw=1, label="issue 20 target")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("robust σ (dex) on new galaxies")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Per-pixel MLP on ugriz, S/N 30", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
