"""Batched full-spectrum fitting in torch: pPXF's model, solved for many spectra at once.

The model of spectrum i on the ln-lambda grid of the data (``velscale`` km/s per pixel)::

    m_i = D(A_V) * [ LOSVD(v, sigma) (x) sum_j w_j T_j ],   w_j >= 0

with T_j the SSP templates (LSF-matched to the data, on a longer ln grid), D a screen of the
dust law ``k(lambda) = A(lambda)/A_V``, and a Gaussian LOSVD applied in Fourier space (exact also
below a pixel, as in pPXF). For each spectrum it minimises chi^2 = sum W (y - m)^2 with W the
inverse variance (0 where masked):

- the weights by non-negative least squares on a *working set* of templates (Bro & de Jong's FNNLS on
  the normal equations, batched; the set is refreshed from the gradient of chi^2 over every template,
  so at convergence the solution satisfies the KKT conditions of the NNLS over all templates, as
  pPXF's does, whenever the optimum uses at most ``working_set`` templates);
- (v, sigma, A_V) by Levenberg-Marquardt on the variable-projection functional (Kaufman's Jacobian:
  the derivative of the model, projected out of the span of the active templates).

Everything is batched over spectra: the cost per spectrum is a few k x L Gram matrices and k FFTs
per iteration (k the working set, L the pixels), on a CPU or a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

LN10 = math.log(10.0)

C_KMS = 299792.458


@dataclass(frozen=True)
class FitLimits:
    """Bounds of the non-linear parameters and the stopping rule."""

    sigma: tuple[float, float] = (5.0, 1000.0)  #: km/s
    av: tuple[float, float] = (0.0, 5.0)  #: mag
    velocity: float = 1500.0  #: |v| km/s searched by the cross-correlation seed
    iterations: int = 12  #: Levenberg-Marquardt steps at most
    tol: float = 1e-5  #: relative chi^2 gain under which a spectrum has converged

    @property
    def holds_av(self) -> bool:
        """No dust: A_V is held at the one value its range allows."""
        return self.av[0] == self.av[1]


class Templates:
    """SSP templates in Fourier space, aligned with the data's ln grid, and the dust law on it."""

    def __init__(
        self,
        templates: np.ndarray,
        lam_temp: np.ndarray,
        lam: np.ndarray,
        velscale: float,
        dust_k: np.ndarray,
        device: torch.device,
        dtype=torch.float32,
        mdegree: int = 0,
    ) -> None:
        """templates (ntemp, Lt) on ``lam_temp``; ``lam`` (L,) the data grid; ``dust_k`` (L,) A(lam)/A_V;
        ``mdegree``: degree of the multiplicative Legendre polynomial (0: none)."""
        self.device, self.dtype = device, dtype
        self.cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.velscale = float(velscale)
        self.L = int(lam.size)
        shift = math.log(lam[0] / lam_temp[0]) / (velscale / C_KMS)  # data pixel 0 at this template pixel
        self.off = int(math.floor(shift))
        self.frac = float(shift - self.off)
        self.nfft = 1 << int(math.ceil(math.log2(templates.shape[1] + 64)))
        t = torch.as_tensor(np.ascontiguousarray(templates), dtype=dtype, device=device)
        self.that = torch.fft.rfft(t, n=self.nfft, dim=-1)  # (ntemp, nf)
        self.omega = 2 * math.pi * torch.fft.rfftfreq(self.nfft, device=device, dtype=dtype)
        self.k = torch.as_tensor(dust_k, dtype=dtype, device=device)
        x = np.linspace(-1.0, 1.0, self.L)  # as pPXF: Legendre polynomials over the fitted pixels
        basis = [np.polynomial.legendre.Legendre.basis(d)(x) for d in range(1, mdegree + 1)]
        self.legendre = torch.as_tensor(np.array(basis).reshape(mdegree, self.L), dtype=dtype, device=device)
        self.mdegree = int(mdegree)
        self.ntemp = t.shape[0]
        rw = torch.full((self.omega.numel(),), 2.0, dtype=dtype, device=device)
        rw[0] = 1.0
        if self.nfft % 2 == 0:
            rw[-1] = 1.0
        self._rfft_weights = rw / self.nfft  # sum_p a[p] irfft(X)[p] = sum_f rw[f] Re(conj(A[f]) X[f])

    def kernel(self, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The LOSVD in Fourier space (n, nf), including the sub-pixel offset of the two grids."""
        mu = (v / self.velscale - self.frac)[:, None]
        s = (sigma / self.velscale)[:, None]
        return torch.polar(torch.exp(-0.5 * (self.omega[None] * s) ** 2), -self.omega[None] * mu)

    def pixels(self, spec_hat: torch.Tensor) -> torch.Tensor:
        """Back from Fourier space onto the data grid: (..., nf) -> (..., L)."""
        return torch.fft.irfft(spec_hat, n=self.nfft, dim=-1)[..., self.off : self.off + self.L]

    def dust(self, av: torch.Tensor) -> torch.Tensor:
        return torch.pow(10.0, -0.4 * av[:, None] * self.k[None])

    def polynomial(self, c: torch.Tensor) -> torch.Tensor:
        """The multiplicative polynomial 1 + sum_d c_d P_d(x) (n, L) of coefficients ``c`` (n, mdegree)."""
        return 1.0 + c @ self.legendre

    def screen(self, av: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """What multiplies the convolved templates pixel by pixel (n, L): dust, times the polynomial."""
        dust = self.dust(av)
        return dust if c is None or self.mdegree == 0 else dust * self.polynomial(c)

    def columns(self, ws: torch.Tensor, v, sigma, av, c=None) -> torch.Tensor:
        """The working set's model columns (n, k, L) at (v, sigma, A_V) and polynomial ``c``."""
        spec = self.gather(ws)
        spec *= self.kernel(v, sigma)[:, None, :]
        return self.pixels(spec) * self.screen(av, c)[:, None, :]

    def gather(self, ws: torch.Tensor) -> torch.Tensor:
        """The templates ``ws`` (n, k) in Fourier space: (n, k, nf), a copy."""
        return torch.index_select(self.that, 0, ws.reshape(-1)).view(*ws.shape, -1)

    def mix(self, ws: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """sum_j w_j T_j in Fourier space (n, nf) for working sets ``ws`` with weights ``w`` (n, k)."""
        dense = torch.zeros((w.shape[0], self.ntemp), dtype=self.dtype, device=self.device)
        return dense.scatter_add_(1, ws, w).to(self.cdtype) @ self.that

    def gradient(self, r_w: torch.Tensor, v, sigma, av, c=None) -> torch.Tensor:
        """sum_p r_w[p] * column_j[p] for every template j (n, ntemp), by correlation in Fourier space."""
        full = torch.zeros((r_w.shape[0], self.nfft), dtype=self.dtype, device=self.device)
        full[:, self.off : self.off + self.L] = r_w * self.screen(av, c)
        a = torch.conj(torch.fft.rfft(full, n=self.nfft, dim=-1)) * self.kernel(v, sigma) * self._rfft_weights
        return (a @ self.that.T).real


def nnls(gram: torch.Tensor, b: torch.Tensor, passive: torch.Tensor | None = None, iters: int | None = None):
    """Batched active-set NNLS on the normal equations (FNNLS): min w'Gw - 2b'w, w >= 0.

    gram (n, k, k), b (n, k), float64; ``passive`` (n, k) bool: a support to start from (warm start).
    Returns (n, k)."""
    n, k = b.shape
    zero = torch.zeros((), dtype=gram.dtype, device=gram.device)
    diag = torch.diagonal(gram, dim1=1, dim2=2).clamp(min=1e-300)
    tol = 1e-10 * diag.sqrt().amax(1) * b.abs().amax(1).clamp(min=1e-300).sqrt()

    def solve(p: torch.Tensor) -> torch.Tensor:
        g = torch.where(p[:, :, None] & p[:, None, :], gram, zero)
        g = g + torch.diag_embed((~p).to(gram.dtype) + 1e-12 * diag * p)
        return torch.linalg.solve(g, torch.where(p, b, zero))

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


@dataclass
class FitState:
    """The fit of a batch: non-linear parameters, the working set and its weights, model, chi^2."""

    v: torch.Tensor  #: (n,) km/s
    sigma: torch.Tensor  #: (n,) km/s
    av: torch.Tensor  #: (n,) mag
    ws: torch.Tensor  #: (n, k) template indices of the working set
    w: torch.Tensor  #: (n, k) their weights (>= 0)
    cols: torch.Tensor  #: (n, k, L) their model columns
    model: torch.Tensor  #: (n, L)
    chi2: torch.Tensor  #: (n,) float64, sum W (y - model)^2
    c: torch.Tensor  #: (n, mdegree) coefficients of the multiplicative polynomial
    iterations: int = 0

    FIELDS = ("v", "sigma", "av", "ws", "w", "cols", "model", "chi2", "c")

    @property
    def nonlinear(self) -> int:
        """How many non-linear parameters: v, sigma, A_V and the polynomial's coefficients."""
        return 3 + self.c.shape[1]

    def take(self, better: torch.Tensor, other: FitState) -> None:
        """Where ``better``, take ``other``'s values."""
        for name in self.FIELDS:
            mine = getattr(self, name)
            rows = better.view(-1, *([1] * (mine.dim() - 1)))
            setattr(self, name, torch.where(rows, getattr(other, name), mine))


def solve_weights(tpl: Templates, y, W, ws, v, sigma, av, c, passive=None, cols=None) -> FitState:
    """The NNLS weights of the working set at fixed (v, sigma, A_V, polynomial ``c``), and the model and
    chi^2 they give; ``cols`` (n, k, L): the working set's columns there when the caller has them."""
    if cols is None:
        cols = tpl.columns(ws, v, sigma, av, c)
    cw = cols * W[:, None, :]
    gram = (cw @ cols.transpose(1, 2)).double()
    b = (cw * y[:, None, :]).sum(-1).double()
    w = nnls(gram, b, passive).to(tpl.dtype)
    model = (w[:, None, :] @ cols)[:, 0, :]
    chi2 = ((y - model) ** 2 * W).double().sum(1)
    return FitState(v, sigma, av, ws, w, cols, model, chi2, c)


def refresh_working_set(tpl: Templates, s: FitState, y, W) -> torch.Tensor:
    """Members with zero weight out, the templates whose chi^2 gradient most wants them in, in."""
    g = tpl.gradient(W * (y - s.model), s.v, s.sigma, s.av, s.c)  # (n, ntemp): > 0 lowers chi^2 if added
    member = torch.zeros_like(g, dtype=torch.bool).scatter_(1, s.ws, True)
    g_out = torch.where(member, torch.full_like(g, -math.inf), g)
    k = s.ws.shape[1]
    zero = s.w <= 0
    slots = torch.argsort((~zero).to(torch.int8), dim=1, stable=True)  # zero-weight slots first
    top = torch.topk(g_out, k, dim=1)
    take = (torch.arange(k, device=g.device)[None] < zero.sum(1, keepdim=True)) & (
        top.values > 1e-6 * g.abs().amax(1, keepdim=True)
    )
    ws = s.ws.clone()
    ws.scatter_(1, slots, torch.where(take, top.indices, s.ws.gather(1, slots)))
    return ws


def jacobian(tpl: Templates, s: FitState) -> torch.Tensor:
    """d model / d (v, sigma, A_V, polynomial coefficients) at the current weights: (n, 3 + mdegree, L)."""
    t_hat = tpl.mix(s.ws, s.w) * tpl.kernel(s.v, s.sigma)
    screen = tpl.screen(s.av, s.c)
    dv = tpl.pixels(t_hat * (-1j * tpl.omega[None] / tpl.velscale)) * screen
    ds = tpl.pixels(t_hat * (-(tpl.omega[None] ** 2) * (s.sigma[:, None] / tpl.velscale**2))) * screen
    da = -0.4 * LN10 * tpl.k[None] * s.model
    parts = [dv[:, None], ds[:, None], da[:, None]]
    if tpl.mdegree:
        parts.append(tpl.legendre[None] * (s.model / tpl.polynomial(s.c))[:, None, :])
    return torch.cat(parts, dim=1)


def projected_normal(tpl: Templates, s: FitState, y, W) -> tuple[torch.Tensor, torch.Tensor]:
    """J'WJ (n, 3, 3) and J'W r (n, 3) of the variable-projection Jacobian (Kaufman), float64."""
    jac = jacobian(tpl, s)
    active = s.w > 0
    cols = s.cols * active[:, :, None]
    gram = ((cols * W[:, None, :]) @ cols.transpose(1, 2)).double() + torch.diag_embed((~active).double())
    jw = jac * W[:, None, :]
    coef = torch.linalg.solve(gram, (jw @ cols.transpose(1, 2)).double().transpose(1, 2)).to(tpl.dtype)
    jp = jac - coef.transpose(1, 2) @ cols
    jpw = jp * W[:, None, :]
    return (jpw @ jp.transpose(1, 2)).double(), (jpw * (y - s.model)[:, None, :]).sum(-1).double()


def _sub(s: FitState, idx: torch.Tensor) -> FitState:
    return FitState(*(getattr(s, name)[idx] for name in FitState.FIELDS))


def _put(s: FitState, idx: torch.Tensor, part: FitState) -> None:
    for name in FitState.FIELDS:
        getattr(s, name)[idx] = getattr(part, name)


def _hold(a: torch.Tensor, g: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The normal equations with parameter ``i`` held fixed (its step is 0)."""
    a, g = a.clone(), g.clone()
    a[:, i, :] = 0.0
    a[:, :, i] = 0.0
    a[:, i, i] = 1.0
    g[:, i] = 0.0
    return a, g


def lm_iteration(tpl: Templates, s: FitState, y, W, lam, limits: FitLimits):
    """One Levenberg-Marquardt step of (v, sigma, A_V) on the working set, then a refresh of the working
    set at the parameters reached; returns (state, damping, converged). A spectrum has converged when
    neither the step nor the refresh changes chi^2 by ``tol`` (relative): far less than 1 sigma."""
    a, g = projected_normal(tpl, s, y, W)
    if limits.holds_av:
        a, g = _hold(a, g, 2)
    step = torch.linalg.solve(a + torch.diag_embed(lam[:, None] * torch.diagonal(a, dim1=1, dim2=2)), g)
    step = step.to(tpl.dtype)
    lo_s, hi_s = limits.sigma
    lo_a, hi_a = limits.av
    trial = solve_weights(
        tpl, y, W, s.ws, s.v + step[:, 0], (s.sigma + step[:, 1]).clamp(lo_s, hi_s),
        (s.av + step[:, 2]).clamp(lo_a, hi_a), s.c + step[:, 3:], passive=s.w > 0,
    )  # fmt: skip
    better = trial.chi2 < s.chi2
    still = (s.chi2 - trial.chi2).abs() < limits.tol * s.chi2
    s.take(better, trial)
    lam = torch.where(better, lam * 0.2, lam * 10.0)
    moved = _refresh(tpl, s, y, W, limits.tol)
    return s, lam, (still & ~moved) | (lam > 1e5)


def _refresh(tpl: Templates, s: FitState, y, W, tol: float) -> torch.Tensor:
    """Swap zero-weight templates for those the chi^2 gradient wants, where that lowers chi^2; returns
    which spectra it lowered by more than ``tol`` (relative)."""
    ws = refresh_working_set(tpl, s, y, W)
    changed = torch.nonzero((ws != s.ws).any(1)).flatten()
    moved = torch.zeros_like(s.chi2, dtype=torch.bool)
    if changed.numel() == 0:
        return moved
    part = _sub(s, changed)
    new_ws = ws[changed]
    trial = solve_weights(
        tpl, y[changed], W[changed], new_ws, part.v, part.sigma, part.av, part.c,
        passive=(part.w > 0) & (new_ws == part.ws), cols=_swap_columns(tpl, part, new_ws),
    )  # fmt: skip
    better = trial.chi2 < part.chi2
    moved[changed] = better & (part.chi2 - trial.chi2 > tol * part.chi2)
    part.take(better, trial)
    _put(s, changed, part)
    return moved


def _swap_columns(tpl: Templates, s: FitState, ws: torch.Tensor) -> torch.Tensor:
    """The columns of working sets ``ws`` at the parameters of ``s``: those of ``s.cols`` where the
    template is the same, computed afresh (one FFT each) only for the slots that changed."""
    rows, slots = torch.nonzero(ws != s.ws, as_tuple=True)
    cols = s.cols.clone()
    if rows.numel():
        spec = torch.index_select(tpl.that, 0, ws[rows, slots])
        spec *= tpl.kernel(s.v, s.sigma)[rows]
        cols[rows, slots] = tpl.pixels(spec) * tpl.screen(s.av, s.c)[rows]
    return cols


def fit(tpl: Templates, y, W, v0, sigma0, av0, ws0, limits: FitLimits = FitLimits()) -> FitState:
    """Fit a batch: y, W (n, L) (W = 1/variance, 0 where masked); seeds (n,); ws0 (n, k) templates.
    Each iteration works on the spectra not yet converged only: those that converge leave the batch."""
    c0 = torch.zeros((y.shape[0], tpl.mdegree), dtype=tpl.dtype, device=y.device)
    out = solve_weights(tpl, y, W, ws0, v0, sigma0, av0, c0)
    lam = torch.full_like(out.chi2, 1e-3)
    rows = torch.arange(y.shape[0], device=y.device)
    s = out
    for it in range(limits.iterations):
        s, lam, done = lm_iteration(tpl, s, y, W, lam, limits)
        out.iterations = it + 1
        if bool(done.all()):
            break
        if bool(done.any()):
            if s is not out:
                _put(out, rows[done], _sub(s, done))
            keep = ~done
            s, rows, lam, y, W = _sub(s, keep), rows[keep], lam[keep], y[keep], W[keep]
    if s is not out:
        _put(out, rows, s)
    return out


def velocity_seed(tpl: Templates, y, W, sigma0, av0, ws, vmax: float) -> torch.Tensor:
    """A starting velocity (km/s): the peak of the cross-correlation of the data with the mean of the
    working set's templates (continuum divided out), refined by a parabola; 0 where it is undefined."""
    n = y.shape[0]
    good = W > 0
    tmpl = tpl.pixels(tpl.that[ws].mean(1) * tpl.kernel(torch.zeros_like(sigma0), sigma0)) * tpl.dust(av0)

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


def covariance(tpl: Templates, s: FitState, W, dof: torch.Tensor, hold_av: bool = False) -> torch.Tensor:
    """Covariance (n, p + k, p + k) of (v, sigma, A_V, polynomial coefficients, working-set weights),
    p = ``s.nonlinear``, from the curvature of chi^2 at the solution, scaled by the reduced chi^2 (as
    pPXF's errors in this project); weights at zero, and A_V if ``hold_av``, are held there (rows and
    columns zero)."""
    jac = torch.cat([jacobian(tpl, s), s.cols * (s.w > 0)[:, :, None]], dim=1)  # (n, p + k, L)
    fisher = ((jac * W[:, None, :]) @ jac.transpose(1, 2)).double()
    free = torch.ones((s.w.shape[0], s.nonlinear), dtype=torch.bool, device=s.w.device)
    free[:, 2] = not hold_av
    free = torch.cat([free, s.w > 0], dim=1)
    fisher = fisher + torch.diag_embed((~free).double())
    cov = torch.linalg.pinv(fisher, hermitian=True) * (s.chi2 / dof.clamp(min=1)).double()[:, None, None]
    return cov * (free[:, :, None] & free[:, None, :])
