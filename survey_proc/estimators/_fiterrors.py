"""The fit's errors: the covariance of its parameters from the curvature of chi^2 at the solution."""

from __future__ import annotations

import torch

from survey_proc.estimators._fitcore import FitState, Templates, h_penalty, jacobian


def covariance(
    tpl: Templates, s: FitState, good: torch.Tensor, dof: torch.Tensor, hold_av: bool = False, bias: float | None = None
) -> torch.Tensor:
    """Covariance (n, p + k, p + k) of (v, sigma, A_V, h3 and h4 if fitted, polynomial coefficients,
    working-set weights),
    p = ``s.nonlinear``, from the curvature of chi^2 at the solution, scaled by the reduced chi^2 (as
    pPXF's errors in this project); weights at zero, and A_V if ``hold_av``, are held there (rows and
    columns zero)."""
    # float64 throughout: float32 sums moved some spectra's errors by 30 % and more (near-degenerate
    # templates), and zeroed a few
    active = s.w > 0
    p = s.nonlinear
    design = torch.empty((s.w.shape[0], p + s.w.shape[1], s.model.shape[1]), dtype=torch.float64, device=s.w.device)
    design[:, :p], design[:, p:] = jacobian(tpl, s), s.cols  # (n, p + k, L), whitened as the state
    fisher = design @ design.transpose(1, 2)
    if s.h.shape[1]:  # the penalty's curvature as pPXF's errors have it: its residuals' Jacobian, along h
        unit = s.h.double() / s.h.double().norm(dim=1, keepdim=True).clamp(min=1e-12)
        rows = slice(3, 3 + s.h.shape[1])
        fisher[:, rows, rows] += h_penalty(s, good, bias)[:, None, None] * unit[:, :, None] * unit[:, None, :]
    free = torch.ones((s.w.shape[0], s.nonlinear), dtype=torch.bool, device=s.w.device)
    free[:, 2] = not hold_av
    free = torch.cat([free, active], dim=1)
    fisher = torch.where(free[:, :, None] & free[:, None, :], fisher, 0.0) + torch.diag_embed((~free).double())
    factor, info = torch.linalg.cholesky_ex(fisher)
    cov = torch.cholesky_inverse(factor)
    singular = torch.nonzero(info != 0).flatten()
    if singular.numel():  # degenerate directions (collinear templates): the pseudo-inverse there
        cov[singular] = torch.linalg.pinv(fisher[singular], hermitian=True)
    cov = cov * (s.chi2 / dof.clamp(min=1)).double()[:, None, None]
    return cov * (free[:, :, None] & free[:, None, :])
