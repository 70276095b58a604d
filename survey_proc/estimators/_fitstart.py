"""Where each fit starts: the templates of its first working set and its velocity.

The seed network gives sigma, A_V and the (age, [M/H]) the working set is drawn around
(:func:`starting_working_sets`); the velocity is the peak of the cross-correlation of the data with
those templates (:func:`velocity_seed`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from survey_proc.errors import ModelError
from survey_proc.estimators._fitcore import Templates


def starting_working_sets(log_age: np.ndarray, metal: np.ndarray, age: np.ndarray, met: np.ndarray, k: int):
    """(n, k) template indices (age-major, metal minor) each fit starts with: the 3 x 3 block of the grid
    around the seed's (age, [M/H]) (every other age), then a coarse spread over the whole grid; each
    template once, in that order."""
    nage, nmetal = log_age.size, metal.size
    ia = np.clip(np.searchsorted(log_age, age), 0, nage - 1)
    im = np.clip(np.searchsorted(metal, met), 0, nmetal - 1)
    spread = [a * nmetal + m for a in np.linspace(0, nage - 1, 6).round().astype(int) for m in (1, nmetal - 2)]
    spread += list(range(0, nage * nmetal, 7))
    da, dm = np.meshgrid([-2, 0, 2], [-1, 0, 1], indexing="ij")
    block = np.clip(ia[:, None] + da.ravel(), 0, nage - 1) * nmetal + np.clip(im[:, None] + dm.ravel(), 0, nmetal - 1)
    cand = np.concatenate([block, np.broadcast_to(np.asarray(spread), (age.size, len(spread)))], axis=1)
    seen_before = np.tril(cand[:, :, None] == cand[:, None, :], k=-1).any(axis=2)  # (n, m): a repeat
    fewest = int((~seen_before).sum(axis=1).min()) if age.size else k
    if fewest < k:
        raise ModelError(f"fit.working_set {k} is more than the {fewest} templates the starting working sets draw from")
    order = np.argsort(seen_before, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand, order, axis=1).astype(np.int64)


def velocity_seed(tpl: Templates, y, W, sigma0, av0, ws, vmax: float) -> torch.Tensor:
    """A starting velocity (km/s): the peak of the cross-correlation of the data with the mean of the
    working set's templates (continuum divided out), refined by a parabola; 0 where it is undefined."""
    n = y.shape[0]
    good = W > 0
    tmpl = tpl.pixels(tpl.mix(ws) * tpl.kernel(torch.zeros_like(sigma0), sigma0)) * tpl.dust(av0)

    def contrast(a):
        mean = (a * good).sum(1, keepdim=True) / good.sum(1, keepdim=True).clamp(min=1)
        return torch.where(good, a / mean.clamp(min=1e-30) - 1.0, torch.zeros_like(a))

    a = torch.fft.rfft(contrast(y), n=tpl.nfft)
    b = torch.fft.rfft(contrast(tmpl), n=tpl.nfft)
    cc = torch.fft.irfft(a * torch.conj(b), n=tpl.nfft)  # cc[s] = sum_p y'[p + s] t'[p]
    lag = torch.arange(tpl.nfft, device=y.device)
    lag = torch.where(lag > tpl.nfft // 2, lag - tpl.nfft, lag).to(tpl.dtype)
    cc = torch.where((lag.abs() <= vmax / tpl.velscale)[None], cc, torch.full_like(cc, -math.inf))
    j = cc.argmax(1)
    c0 = cc.gather(1, j[:, None])[:, 0]
    cm = cc.gather(1, ((j - 1) % tpl.nfft)[:, None])[:, 0]
    cp = cc.gather(1, ((j + 1) % tpl.nfft)[:, None])[:, 0]
    den = cm - 2 * c0 + cp
    frac = torch.where(den < 0, 0.5 * (cm - cp) / den, torch.zeros_like(den)).clamp(-0.5, 0.5)
    v = (lag[j] + frac) * tpl.velscale
    return torch.where(torch.isfinite(v), v, torch.zeros(n, dtype=tpl.dtype, device=y.device))
