"""Non-negative least squares on normal equations, for many small problems at once: min w'Gw - 2b'w,
w >= 0, with G (n, k, k) and b (n, k) the Gram matrices and right-hand sides of the fit's working sets.

On a CPU each row goes to scipy's compiled Lawson-Hanson solver (a loop of batched torch operations costs
its per-operation overhead, once per variable added, for the slowest row); on a GPU the batch is solved
at once by block principal pivoting, with the one-variable-at-a-time active-set method as its fallback.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _masked_solve(gram: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The solution of the normal equations restricted to the support ``p`` (n, k) (0 off it)."""
    zero = torch.zeros((), dtype=gram.dtype, device=gram.device)
    diag = torch.diagonal(gram, dim1=1, dim2=2).clamp(min=1e-300)
    g = torch.where(p[:, :, None] & p[:, None, :], gram, zero)
    g = g + torch.diag_embed((~p).to(gram.dtype) + 1e-12 * diag * p)
    return torch.linalg.solve(g, torch.where(p, b, zero))


def _dual_tol(gram: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n,) how far below 0 a gradient of the objective may be and still count as 0 (the KKT tests)."""
    diag = torch.diagonal(gram, dim1=1, dim2=2).clamp(min=1e-300)
    return 1e-10 * diag.sqrt().amax(1) * b.abs().amax(1).clamp(min=1e-300).sqrt()


def nnls(gram: torch.Tensor, b: torch.Tensor, passive: torch.Tensor | None = None) -> torch.Tensor:
    """NNLS on the normal equations: min w'Gw - 2b'w, w >= 0 (gram (n, k, k), b (n, k), float64;
    ``passive`` (n, k) bool: a support to start from, used on a GPU). Returns (n, k).

    On a CPU one small problem after another in scipy's compiled Lawson-Hanson solver is ~7x faster
    than any batched loop in torch (whose cost is its per-operation overhead); on a GPU the batch is
    solved at once (:func:`nnls_batched`)."""
    if gram.device.type != "cpu":
        return nnls_batched(gram, b, passive)
    return torch.as_tensor(nnls_rows(gram.numpy(), b.numpy()), dtype=b.dtype)


def nnls_rows(gram: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min w'Gw - 2b'w, w >= 0 for each row, by scipy's NNLS on a square root of G: with A'A = G and
    A'y = b, |Aw - y|^2 = w'Gw - 2b'w + const (G scaled to a unit diagonal first; :func:`square_root`). A
    template with no weight in the Gram matrix (a zero column) gets weight 0; a row with a non-finite entry
    gets NaN (the fit flags it)."""
    from scipy.optimize import nnls as lawson_hanson

    k = b.shape[1]
    out = np.full_like(b, np.nan)
    finite = np.isfinite(gram).all(axis=(1, 2)) & np.isfinite(b).all(axis=1)
    if not finite.any():
        return out
    gram, b = gram[finite], b[finite]
    diag = np.diagonal(gram, axis1=1, axis2=2)
    live = diag > 1e-12 * diag.max(axis=1, keepdims=True)  # zero columns stay out, at weight 0
    scale = np.sqrt(np.where(live, diag, 1.0))
    unit = np.where(live[:, :, None] & live[:, None, :], gram / scale[:, :, None] / scale[:, None, :], 0.0)
    unit[:, np.arange(k), np.arange(k)] = np.where(live, unit[:, np.arange(k), np.arange(k)], 1.0)
    rhs = np.where(live, b / scale, 0.0)
    a, y = square_root(unit, rhs)
    solved = np.zeros_like(b)
    for i in range(b.shape[0]):
        try:
            solved[i] = lawson_hanson(a[i], y[i], maxiter=50 * k)[0] / scale[i]
        except (RuntimeError, ValueError):  # scipy gave up (never seen): the batched solver's answer
            solved[i] = nnls_batched(torch.as_tensor(gram[i : i + 1]), torch.as_tensor(b[i : i + 1]))[0].numpy()
    out[finite] = np.where(live, solved, 0.0)
    return out


def square_root(unit: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A (n, k, k) and y (n, k) with A'A = ``unit`` and A'y = ``rhs``, for Gram matrices with a unit diagonal:
    Cholesky's factor (A = L', y = L^-1 rhs), ~15x cheaper than an eigendecomposition, where every pivot
    is well above round-off; elsewhere the eigendecomposition, its directions below 1e-12 of the largest
    eigenvalue left out (round-off of a float32 Gram matrix)."""
    factor, info = torch.linalg.cholesky_ex(torch.from_numpy(unit))
    pivot = torch.diagonal(factor, dim1=1, dim2=2)
    firm = (info == 0) & (pivot.amin(1) ** 2 > 1e-10 * unit.shape[1])
    y = torch.linalg.solve_triangular(factor, torch.from_numpy(rhs)[:, :, None], upper=False)[:, :, 0]
    a, y = factor.transpose(1, 2).numpy().copy(), y.numpy().copy()
    weak = np.flatnonzero(~firm.numpy())
    if weak.size:
        lam, vec = np.linalg.eigh(unit[weak])
        keep = lam > 1e-12 * lam[:, -1:]
        root = np.sqrt(np.where(keep, lam, 1.0))
        a[weak] = np.where(keep, root, 0.0)[:, :, None] * vec.transpose(0, 2, 1)
        y[weak] = np.where(keep, (vec.transpose(0, 2, 1) @ rhs[weak][:, :, None])[:, :, 0] / root, 0.0)
    return a, y


def nnls_batched(gram: torch.Tensor, b: torch.Tensor, passive: torch.Tensor | None = None, iters: int | None = None):
    """:func:`nnls` for a whole batch at once (a GPU's way).

    Kim & Park's block principal pivoting (SIAM J. Sci. Comput. 33, 3261, 2011): every variable that
    breaks the KKT conditions changes side at once (with their safeguard against cycling), so a support
    is found in a few batched solves rather than one variable per step; the rows it has not settled
    after ``iters`` exchanges (default 3k) are finished by :func:`fnnls` from where they are."""
    n, k = b.shape
    zero = torch.zeros((), dtype=gram.dtype, device=gram.device)
    tol = _dual_tol(gram, b)[:, None]

    def violations(p: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """(n, k): off the KKT conditions, negative on the support or with a negative dual off it."""
        dual = (gram @ w[:, :, None])[:, :, 0] - b  # >= 0 off the support at the optimum
        return (p & (w < 0)) | (~p & (dual < -tol))

    p = passive.clone() if passive is not None else torch.zeros((n, k), dtype=torch.bool, device=b.device)
    alpha = torch.full((n,), 3, dtype=torch.int64, device=b.device)
    beta = torch.full((n,), k + 1, dtype=torch.int64, device=b.device)
    cols = torch.arange(k, device=b.device)
    w = _masked_solve(gram, b, p)
    for _ in range(iters or 3 * k):
        bad = violations(p, w)
        count = bad.sum(1)
        if not bool(count.any()):
            return torch.where(p, w, zero).clamp(min=0)
        fewer = (count > 0) & (count < beta)
        beta = torch.where(fewer, count, beta)
        alpha = torch.where(fewer, torch.full_like(alpha, 3), alpha)
        full = (count > 0) & (fewer | (alpha >= 1))
        alpha = torch.where(full & ~fewer, alpha - 1, alpha)
        last = torch.where(bad, cols, torch.full_like(cols, -1)).amax(1)  # the safeguard: one variable only
        flip = torch.where(full[:, None], bad, (count > 0)[:, None] & (cols[None] == last[:, None]))
        p = p ^ flip
        w = _masked_solve(gram, b, p)
    settled = ~violations(p, w).any(1)
    out = torch.where(p, w, zero).clamp(min=0)
    if not bool(settled.all()):
        rest = torch.nonzero(~settled).flatten()
        out[rest] = fnnls(gram[rest], b[rest], p[rest] & (w[rest] > 0))
    return out


def fnnls(gram: torch.Tensor, b: torch.Tensor, passive: torch.Tensor | None = None, iters: int | None = None):
    """Batched active-set NNLS on the normal equations (Bro & de Jong's FNNLS), one variable in per step:
    min w'Gw - 2b'w, w >= 0. gram (n, k, k), b (n, k), float64; ``passive`` (n, k) bool: a support to
    start from (warm start). Returns (n, k)."""
    n, k = b.shape
    zero = torch.zeros((), dtype=gram.dtype, device=gram.device)
    tol = _dual_tol(gram, b)

    def solve(p: torch.Tensor) -> torch.Tensor:
        return _masked_solve(gram, b, p)

    def back_off(w, p, s, active):
        for _ in range(k):
            bad = p & (s <= 0) & active[:, None]
            anybad = bad.any(1)
            if not anybad.any():
                break
            ratio = torch.where(bad, w / (w - s).clamp(min=1e-300), torch.full_like(w, math.inf))
            alpha = torch.where(anybad, ratio.amin(1), torch.ones_like(ratio[:, 0]))
            w = torch.where(anybad[:, None], w + alpha[:, None] * (s - w), w)
            p = p & ~(anybad[:, None] & (w <= 1e-14 * w.abs().amax(1, keepdim=True)))
            s = solve(p)
        return w, p, s

    w = torch.zeros_like(b)
    p = torch.zeros((n, k), dtype=torch.bool, device=b.device)
    if passive is not None and passive.any():
        p = passive.clone()
        s = solve(p)
        for _ in range(k):  # drop the members that came out negative, one sweep at a time
            bad = p & (s <= 0)
            if not bad.any():
                break
            p = p & ~bad
            s = solve(p)
        w = torch.where(p, s, zero).clamp(min=0)
    active = torch.ones(n, dtype=torch.bool, device=b.device)
    for _ in range(iters or 3 * k):
        grad = b - (gram @ w[:, :, None])[:, :, 0]
        cand = torch.where(~p, grad, torch.full_like(grad, -math.inf))
        gmax, j = cand.max(1)
        active = active & (gmax > tol)
        if not active.any():
            break
        p = p | (active[:, None] & torch.nn.functional.one_hot(j, k).bool())
        w, p, s = back_off(w, p, solve(p), active)
        w = torch.where(active[:, None], torch.where(p, s, zero), w)
    return w.clamp(min=0)
