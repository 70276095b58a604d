"""What a spectral network's manifest says about the range it was trained on: ``AT_LIMIT`` flag rules
and the instrumental resolution it learned (``input.lsf_trained``).

An estimate at the edge of the training range may be a truth beyond it, squeezed in (A_V pinned at
the top of its range must never pass unflagged, issue 17). The rules flag an estimate within
:data:`GRID_MARGIN` of the SSP grid's ends in log age and [M/H], within :data:`SIGMA_MARGIN` km/s of
the sigma and velocity ranges' ends, and in the top tenth of the dust range (A_V or E(B-V); no dust
is a floor, not a limit).
"""

from __future__ import annotations

from typing import Any

from survey_proc.preprocess import LSF_TOLERANCE_KMS
from survey_proc.ssp import SSPLibrary, load_ssp_library
from survey_proc.training._dataset import DUST_LAW_RV, TrainsetConfig, mixed_libraries

GRID_MARGIN = 0.03  #: dex, log age and [M/H]
SIGMA_MARGIN = 10.0  #: km/s, sigma and velocity
DUST_TOP = 0.1  #: the top share of the dust range


def _rule(output: str, above: float, below: float | None, near: str, lo: float, hi: float) -> dict[str, Any]:
    rule: dict[str, Any] = {"output": output, "above": round(above, 6)}
    if below is not None:
        rule["below"] = round(below, 6)
    rule["meaning"] = f"{near}: the truth may lie beyond (training range {lo:.4g}..{hi:.4g})"
    return rule


def at_limit_rules(cfg: TrainsetConfig, lib: SSPLibrary) -> list[dict[str, Any]]:
    """``AT_LIMIT`` rules for the labels of ``cfg`` trained on ``lib``'s grid (and those of the other
    libraries it draws from: the union of their ranges)."""
    libs = [lib, *(load_ssp_library(name) for name in mixed_libraries(cfg))]
    grid = {
        "log_age": (min(float(x.log_age.min()) for x in libs), max(float(x.log_age.max()) for x in libs)),
        "metallicity": (min(float(x.metal.min()) for x in libs), max(float(x.metal.max()) for x in libs)),
    }
    rv = DUST_LAW_RV[cfg.dust_law]
    dust = {"av": tuple(cfg.av_range), "ebv": (cfg.av_range[0] / rv, cfg.av_range[1] / rv)}
    rules: list[dict[str, Any]] = []
    for name in cfg.labels:
        if name in grid:
            lo, hi = grid[name]
            rules.append(_rule(name, hi - GRID_MARGIN, lo + GRID_MARGIN, f"within {GRID_MARGIN:g} of an edge", lo, hi))
        elif name in ("sigma", "velocity"):
            lo, hi = cfg.sigma_range_kms if name == "sigma" else cfg.velocity_range_kms
            near = f"within {SIGMA_MARGIN:g} km/s of an edge"
            rules.append(_rule(name, hi - SIGMA_MARGIN, lo + SIGMA_MARGIN, near, lo, hi))
        elif name in dust:
            lo, hi = dust[name]
            rules.append(_rule(name, hi - DUST_TOP * (hi - lo), None, "in the top tenth of the range", lo, hi))
    return rules


def lsf_trained(cfg: TrainsetConfig) -> dict[str, Any]:
    """``input.lsf_trained``: the instrument's LSF curve the spectra were drawn with, and the offset
    beyond which the engine flags every estimate ``lsf_mismatch``."""
    return {"curve": cfg.instrument, "tolerance_kms": LSF_TOLERANCE_KMS}
