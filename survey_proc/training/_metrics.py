"""Accuracy metrics against the truth: bias, robust scatter, interval coverage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from survey_proc.stores import robust_sigma


def score_predictions(
    pred: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray], names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per output: median bias, robust sigma (1.4826 MAD) of pred - truth, and the fractions of
    truths inside the predicted 68 % and 95 % intervals (where ``<name>_err`` is given)."""
    out: dict[str, dict[str, float]] = {}
    for name in names:
        p, t = np.asarray(pred[name], np.float64), np.asarray(truth[name], np.float64)
        ok = np.isfinite(p) & np.isfinite(t)
        d = p[ok] - t[ok]
        entry = {
            "bias": float(np.median(d)) if d.size else float("nan"),
            "robust_sigma": robust_sigma(d),
            "n": int(ok.sum()),
        }
        err = pred.get(f"{name}_err")
        if err is not None:
            e = np.asarray(err, np.float64)[ok]
            entry["coverage_68"] = float(np.mean(np.abs(d) <= e)) if d.size else float("nan")
            entry["coverage_95"] = float(np.mean(np.abs(d) <= 1.96 * e)) if d.size else float("nan")
        out[name] = entry
    return out


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for telling ``positive`` from the rest (Mann-Whitney, ties
    halved); NaN where either class is empty."""
    from scipy.stats import rankdata

    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
