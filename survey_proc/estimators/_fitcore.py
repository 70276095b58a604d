"""Batched full-spectrum fitting in torch: pPXF's model, solved for many spectra at once.

The model of spectrum i on the ln-lambda grid of the data (``velscale`` km/s per pixel)::

    m_i = D(A_V) * [ LOSVD(v, sigma) (x) sum_j w_j T_j ],   w_j >= 0

with T_j the SSP templates (LSF-matched to the data, on a longer ln grid), D a screen of the
dust law ``k(lambda) = A(lambda)/A_V``, and a Gaussian LOSVD applied in Fourier space (exact also
below a pixel, as in pPXF). For each spectrum it minimises chi^2 = sum W (y - m)^2 with W the
inverse variance (0 where masked):

- the weights by non-negative least squares on a *working set* of templates (on the normal equations:
  scipy's Lawson-Hanson solver row by row on a CPU, Kim & Park's block principal pivoting batched on a
  GPU); the set is refreshed from the gradient of chi^2 over every template (no two grid neighbours
  entering together), so at convergence the solution satisfies the KKT conditions of the NNLS over all
  templates, as pPXF's does, whenever the optimum uses at most ``working_set`` templates;
- (v, sigma, A_V) by Levenberg-Marquardt on the variable-projection functional (Kaufman's Jacobian:
  the derivative of the model, projected out of the span of the active templates), each step taken
  together with the working set's refresh; it stops as pPXF does, when chi^2 changes by less than
  ``tol`` (relative; pPXF's ftol).

Everything is batched over spectra: the cost per spectrum is a few k x L Gram matrices and k FFTs
per iteration (k the working set, L the pixels), on a CPU or a GPU. The data, the columns and the model
are whitened (times sqrt W, folded into the dust screen) once, so no product in a step weights by W
(6-7 % of the fit's time, measured on one thread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from survey_proc.estimators._nnls import nnls

LN10 = math.log(10.0)

C_KMS = 299792.458


@dataclass(frozen=True)
class FitLimits:
    """Bounds of the non-linear parameters and the stopping rule."""

    sigma: tuple[float, float] = (5.0, 1000.0)  #: km/s
    av: tuple[float, float] = (0.0, 5.0)  #: mag
    h: float = 0.3  #: |h3|, |h4| at most (Gauss-Hermite fits)
    #: pPXF's penalty on h3, h4 (:func:`h_penalty`; None: pPXF's default 0.7 sqrt(500 / good pixels); 0: none)
    bias: float | None = None
    velocity: float = 1500.0  #: |v| km/s searched by the cross-correlation seed
    iterations: int = 12  #: Levenberg-Marquardt steps at most
    tol: float = 1e-4  #: relative chi^2 change under which a spectrum has converged (pPXF's ftol)

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
        reach: float = 7000.0,
        grid: tuple[int, int] | None = None,
    ) -> None:
        """templates (ntemp, Lt) on ``lam_temp``; ``lam`` (L,) the data grid; ``dust_k`` (L,) A(lam)/A_V;
        ``mdegree``: degree of the multiplicative Legendre polynomial (0: none); ``reach``: km/s, the
        largest |velocity| plus 5 sigma of any LOSVD to be applied (the FFT length leaves that much room,
        so that no template light wraps around into the data's pixels); ``grid``: (ages, metallicities)
        where the templates are an age-major grid of SSPs (their neighbours, :attr:`near`, then enter a
        working set one at a time)."""
        self.device, self.dtype = device, dtype
        self.cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.velscale = float(velscale)
        self.L = int(lam.size)
        shift = math.log(lam[0] / lam_temp[0]) / (velscale / C_KMS)  # data pixel 0 at this template pixel
        self.off = int(math.floor(shift))
        self.frac = float(shift - self.off)
        extent = int(math.ceil(reach / velscale))  # pixels the LOSVD may move light by
        lt = templates.shape[1]
        self.nfft = fast_length(max(lt, lt + extent - self.off, self.off + self.L + extent))
        t = torch.as_tensor(_ramp_padded(templates, self.nfft), dtype=dtype, device=device)
        self.that = torch.fft.rfft(t, dim=-1)  # (ntemp, nf)
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
        self.near = grid_neighbours(grid, self.ntemp, device)
        # (2 nf, ntemp): rows Re(that), -Im(that) interleaved, as view_as_real lays out a complex row
        self._that_ri = torch.stack([self.that.real, -self.that.imag], dim=2).flatten(1).T.contiguous()

    def kernel(self, v: torch.Tensor, sigma: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """The LOSVD in Fourier space (n, nf), including the sub-pixel offset of the two grids: a Gaussian,
        times the Gauss-Hermite series of ``h`` (n, 2) = (h3, h4) where given (:func:`hermite_factor`)."""
        mu = (v / self.velscale - self.frac)[:, None]
        s = (sigma / self.velscale)[:, None]
        gauss = torch.polar(torch.exp(-0.5 * (self.omega[None] * s) ** 2), -self.omega[None] * mu)
        if h is None or h.shape[1] == 0:
            return gauss
        return gauss * hermite_factor(self.omega[None] * s, h)[0]

    def pixels(self, spec_hat: torch.Tensor) -> torch.Tensor:
        """Back from Fourier space onto the data grid: (..., nf) -> (..., L)."""
        return torch.fft.irfft(spec_hat, n=self.nfft, dim=-1)[..., self.off : self.off + self.L]

    def dust(self, av: torch.Tensor) -> torch.Tensor:
        return torch.exp((-0.4 * LN10) * av[:, None] * self.k[None])

    def polynomial(self, c: torch.Tensor) -> torch.Tensor:
        """The multiplicative polynomial 1 + sum_d c_d P_d(x) (n, L) of coefficients ``c`` (n, mdegree)."""
        return 1.0 + c @ self.legendre

    def screen(self, av: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """What multiplies the convolved templates pixel by pixel (n, L): dust, times the polynomial."""
        dust = self.dust(av)
        return dust if c is None or self.mdegree == 0 else dust * self.polynomial(c)

    def columns(self, ws: torch.Tensor, v, sigma, av, c=None, kern=None, screen=None) -> torch.Tensor:
        """The working set's model columns (n, k, L) at (v, sigma, A_V) and polynomial ``c`` (``kern``:
        the LOSVD at (v, sigma), ``screen`` :meth:`screen` at (A_V, c), where the caller has them)."""
        spec = self.gather(ws)
        spec *= (self.kernel(v, sigma) if kern is None else kern)[:, None, :]
        return self.pixels(spec) * (self.screen(av, c) if screen is None else screen)[:, None, :]

    def gather(self, ws: torch.Tensor) -> torch.Tensor:
        """The templates ``ws`` (n, k) in Fourier space: (n, k, nf), a copy."""
        return torch.index_select(self.that, 0, ws.reshape(-1)).view(*ws.shape, -1)

    def mix(self, ws: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """sum_j w_j T_j in Fourier space (n, nf) for working sets ``ws`` with weights ``w`` (n, k); their
        mean without weights (summed in an embedding bag, without copying the rows out)."""
        # a tenth of a gather and a product's time: 1.3 against 16.7 ms for 256 means of 12 templates
        rows = torch.view_as_real(self.that).flatten(1)  # (ntemp, 2 nf), real and imaginary parts in turn
        if w is None:
            out = torch.nn.functional.embedding_bag(ws, rows, mode="mean")
        else:
            out = torch.nn.functional.embedding_bag(ws, rows, per_sample_weights=w.to(self.dtype), mode="sum")
        return torch.view_as_complex(out.view(ws.shape[0], self.that.shape[1], 2))

    def gradient(self, r_w: torch.Tensor, kern: torch.Tensor, screen: torch.Tensor) -> torch.Tensor:
        """sum_p r_w[p] * column_j[p] for every template j (n, ntemp), by correlation in Fourier space
        (``kern``: the LOSVD; ``screen``: :meth:`screen` at the columns' A_V and polynomial)."""
        full = torch.zeros((r_w.shape[0], self.nfft), dtype=self.dtype, device=self.device)
        full[:, self.off : self.off + self.L] = r_w * screen
        a = torch.fft.rfft(full, n=self.nfft, dim=-1).conj_physical_() * kern * self._rfft_weights
        return torch.view_as_real(a).flatten(1) @ self._that_ri  # Re(a @ that.T), as one real product


#: the most grid steps (age, metallicity) apart at which two SSPs are neighbours, never brought into a
#: working set by the same refresh
NEIGHBOURS = (3, 1)


def grid_neighbours(grid: tuple[int, int] | None, ntemp: int, device=None) -> torch.Tensor:
    """(ntemp, ntemp) bool: the SSPs within :data:`NEIGHBOURS` grid steps of each other on an age-major
    ``grid`` of (ages, metallicities) (each template only itself without a grid)."""
    if grid is None:
        return torch.eye(ntemp, dtype=torch.bool, device=device)
    nage, nmetal = grid
    if nage * nmetal != ntemp:
        raise ValueError(f"a grid of {nage} x {nmetal} SSPs does not hold {ntemp} templates")
    idx = torch.arange(ntemp, device=device)
    age, metal = idx // nmetal, idx % nmetal
    return ((age[:, None] - age[None]).abs() <= NEIGHBOURS[0]) & ((metal[:, None] - metal[None]).abs() <= NEIGHBOURS[1])


#: van der Marel & Franx (1993)'s normalisation of the Hermite polynomials H_3, H_4: 1/sqrt(m! 2^m)
HERMITE_NORM = (1.0 / math.sqrt(48.0), 1.0 / math.sqrt(384.0))


def hermite_factor(x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Gauss-Hermite series in Fourier space at x = omega sigma (pixels), as pPXF's ``losvd_rfft``
    (Cappellari 2017, eq. 38): P(x) = 1 + i h3 H3(x) / sqrt(48) + h4 H4(x) / sqrt(384), physicists'
    Hermite polynomials; returns (P, dP/dx, (dP/dh3, dP/dh4) stacked on a new second axis)."""
    c3, c4 = HERMITE_NORM
    h3, h4 = h[:, 0:1], h[:, 1:2]
    x2 = x * x
    H3, H4 = c3 * x * (8.0 * x2 - 12.0), c4 * (16.0 * x2 * x2 - 48.0 * x2 + 12.0)
    dH3, dH4 = c3 * (24.0 * x2 - 12.0), c4 * x * (64.0 * x2 - 96.0)
    p = torch.complex(1.0 + h4 * H4, h3 * H3)
    dp = torch.complex(h4 * dH4, h3 * dH3)
    zero = torch.zeros_like(H3)
    return p, dp, torch.stack([torch.complex(zero, H3), torch.complex(H4, zero)], 1)


def _ramp_padded(templates: np.ndarray, nfft: int) -> np.ndarray:
    """The templates (ntemp, Lt) padded to ``nfft`` with a straight line from each one's last value to its
    first: the periodic extension the FFT sees is then continuous, so a sub-pixel shift does not ring
    from a jump at the ends (zero padding left errors up to 2e-3 of the flux at sigma ~10 km/s; this
    leaves 4e-5, against a 65,536-point reference)."""
    lt = templates.shape[1]
    out = np.empty((templates.shape[0], nfft), np.float64)
    out[:, :lt] = templates
    f = np.arange(1, nfft - lt + 1) / (nfft - lt + 1)
    out[:, lt:] = templates[:, -1:] * (1.0 - f) + templates[:, :1] * f
    return out


def fast_length(n: int) -> int:
    """The smallest 2^a 3^b >= ``n``: the lengths pocketfft (torch's CPU FFT) transforms fastest."""
    best = 1 << int(math.ceil(math.log2(max(n, 1))))
    three = 1
    while three < best:
        best = min(best, three << max(0, int(math.ceil(math.log2(n / three)))))
        three *= 3
    return best


@dataclass
class FitState:
    """The fit of a batch: non-linear parameters, the working set and its weights, model, chi^2."""

    v: torch.Tensor  #: (n,) km/s
    sigma: torch.Tensor  #: (n,) km/s
    av: torch.Tensor  #: (n,) mag
    ws: torch.Tensor  #: (n, k) template indices of the working set
    w: torch.Tensor  #: (n, k) their weights (>= 0)
    cols: torch.Tensor  #: (n, k, L) their model columns, whitened (times sqrt W)
    gram: torch.Tensor  #: (n, k, k) float64, sum_p W cols_i cols_j
    kern: torch.Tensor  #: (n, nf) the LOSVD at (v, sigma) in Fourier space
    model: torch.Tensor  #: (n, L) whitened (times sqrt W)
    chi2: torch.Tensor  #: (n,) float64, sum W (y - model)^2
    c: torch.Tensor  #: (n, mdegree) coefficients of the multiplicative polynomial
    h: torch.Tensor  #: (n, 2) Gauss-Hermite h3, h4; (n, 0) for a Gaussian LOSVD
    screen: torch.Tensor  #: (n, L) dust times polynomial at (A_V, c) (:meth:`Templates.screen`) times sqrt W

    FIELDS = ("v", "sigma", "av", "ws", "w", "cols", "gram", "kern", "model", "chi2", "c", "h", "screen")

    @property
    def nonlinear(self) -> int:
        """How many non-linear parameters: v, sigma, A_V, h3 and h4 if fitted, the polynomial's coefficients
        (their order in steps, Jacobians and covariances)."""
        return 3 + self.h.shape[1] + self.c.shape[1]

    def take(self, better: torch.Tensor, other: FitState) -> None:
        """Where ``better``, take ``other``'s values: its tensors (into which the rows not better are copied
        back) where most rows are better, else the better rows copied into this state's own tensors (in place)."""
        worse = torch.nonzero(~better).flatten()
        if 2 * worse.numel() < better.numel():  # fewer rows to copy the other way: this state's into ``other``'s
            for name in self.FIELDS:
                if worse.numel():
                    getattr(other, name).index_copy_(0, worse, getattr(self, name)[worse])
                setattr(self, name, getattr(other, name))
            return
        rows = torch.nonzero(better).flatten()
        if rows.numel():
            for name in self.FIELDS:
                getattr(self, name).index_copy_(0, rows, getattr(other, name)[rows])


def solve_weights(
    tpl: Templates, y, sw, ws, v, sigma, av, c, h, passive=None, cols=None, kern=None, screen=None
) -> FitState:
    """The NNLS weights of the working set at fixed (v, sigma, A_V, polynomial ``c``, Gauss-Hermite ``h``),
    and the model and chi^2 they give, for whitened data ``y`` (flux x ``sw``, ``sw`` = sqrt(W)); ``cols``
    (n, k, L): the working set's whitened columns there (and ``kern``, ``screen``) when the caller has them."""
    kern = tpl.kernel(v, sigma, h) if kern is None else kern
    screen = tpl.screen(av, c) * sw if screen is None else screen
    if cols is None:
        cols = tpl.columns(ws, v, sigma, av, c, kern, screen)
    gram = (cols @ cols.transpose(1, 2)).double()
    b = (cols * y[:, None, :]).sum(-1).double()  # pairwise summation: a float32 bmm loses the digits chi^2 needs
    w = nnls(gram, b, passive).to(tpl.dtype)
    model = (w[:, None, :] @ cols)[:, 0, :]
    chi2 = ((y - model) ** 2).double().sum(1)
    return FitState(v, sigma, av, ws, w, cols, gram, kern, model, chi2, c, h, screen)


def refresh_working_set(tpl: Templates, s: FitState, y) -> torch.Tensor:
    """Members with zero weight out, in the templates whose chi^2 gradient most wants them, no two of them
    grid neighbours (:attr:`Templates.near`: neighbours are nearly the same column, and the NNLS keeps at
    most one of them, so the others would only churn through the working set) (``y`` whitened, as the
    state)."""
    # on the bench's mock 3.8 steps per spectrum against 4.1 with the top k gradients
    g = tpl.gradient(y - s.model, s.kern, s.screen)  # (n, ntemp): > 0 lowers chi^2 if added
    member = torch.zeros_like(g, dtype=torch.bool).scatter_(1, s.ws, True)
    g_out = torch.where(member, torch.full_like(g, -math.inf), g)
    k = s.ws.shape[1]
    zero = s.w <= 0
    free = zero.sum(1, keepdim=True)
    slots = torch.argsort((~zero).to(torch.int8), dim=1, stable=True)  # zero-weight slots first
    values, indices = _apart(g_out, tpl.near, int(free.max()), k)
    take = (torch.arange(k, device=g.device)[None] < free) & (values > 1e-6 * g.abs().amax(1, keepdim=True))
    ws = s.ws.clone()
    ws.scatter_(1, slots, torch.where(take, indices, s.ws.gather(1, slots)))
    return ws


def _apart(g: torch.Tensor, near: torch.Tensor, m: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest ``m`` values of each row of ``g`` (n, ntemp) and their columns, each chosen after the
    ``near`` ones of those before it are ruled out, padded with -inf to ``k``."""
    values = torch.full((g.shape[0], k), -math.inf, dtype=g.dtype, device=g.device)
    indices = torch.zeros((g.shape[0], k), dtype=torch.int64, device=g.device)
    for i in range(m):
        values[:, i], indices[:, i] = g.max(1)
        g = g.masked_fill(near[indices[:, i]], -math.inf)
    return values, indices


def jacobian(tpl: Templates, s: FitState) -> torch.Tensor:
    """d model / d (v, sigma, A_V, h3, h4 if fitted, polynomial coefficients) at the current weights:
    (n, s.nonlinear, L)."""
    mixed = tpl.mix(s.ws, s.w)
    t_hat = mixed * s.kern
    screen = s.screen
    dv = tpl.pixels(t_hat * (-1j * tpl.omega[None] / tpl.velscale)) * screen
    da = -0.4 * LN10 * tpl.k[None] * s.model
    if s.h.shape[1] == 0:
        ds = tpl.pixels(t_hat * (-(tpl.omega[None] ** 2) * (s.sigma[:, None] / tpl.velscale**2))) * screen
        parts = [dv[:, None], ds[:, None], da[:, None]]
    else:  # the Gaussian times P(omega sigma): d/d sigma takes P's derivative too
        x = tpl.omega[None] * (s.sigma[:, None] / tpl.velscale)
        p, dp, dh = hermite_factor(x, s.h)
        g_hat = mixed * tpl.kernel(s.v, s.sigma)
        ds = tpl.pixels(g_hat * ((tpl.omega[None] / tpl.velscale) * (dp - x * p))) * screen
        dh = tpl.pixels(g_hat[:, None] * dh) * screen[:, None]
        parts = [dv[:, None], ds[:, None], da[:, None], dh]
    if tpl.mdegree:
        parts.append(tpl.legendre[None] * (s.model / tpl.polynomial(s.c))[:, None, :])
    return torch.cat(parts, dim=1)


def projected_normal(tpl: Templates, s: FitState, y) -> tuple[torch.Tensor, torch.Tensor]:
    """J'WJ (n, p, p) and J'W r (n, p) of the variable-projection Jacobian (Kaufman), float64: the
    Jacobian with its part in the span of the active columns projected out (J'J less J'C (C'C)^-1 C'J;
    J'r, the residual being orthogonal to those columns at their least-squares weights)."""
    jac = jacobian(tpl, s)
    active = s.w > 0
    gram = torch.where(active[:, :, None] & active[:, None, :], s.gram, torch.zeros((), dtype=s.gram.dtype))
    gram = gram + torch.diag_embed((~active).double())
    jc = torch.where(active[:, :, None], (s.cols @ jac.transpose(1, 2)).double(), 0.0)  # (n, k, p); 0: inactive
    coef = torch.linalg.solve(gram, jc)  # 0 for the inactive columns, which then add nothing
    # J_p'J_p = J'J - J'C (C'C)^-1 C'J through the small matrices (no (n, p, L) projected copy), and
    # J_p'r taken as J'r: C'r is 0 at the exact optimum, but float32 round-off times A_V's large
    # coefficient (its derivative lies almost in the active columns' span) makes J'r off by 3 % (median)
    # and up to 2x along A_V (64 E-MILES mixtures). Only the steps see it: with the C'r term, 4.12 steps
    # per spectrum against 4.11 on the 64x64 mock, chi^2 net 19 lower over its 4,096 spectra, no stop
    # by damping in either, 3 % slower; the stops and the optima are chi^2's own
    jj = (jac @ jac.transpose(1, 2)).double()
    return jj - jc.transpose(1, 2) @ coef, (jac @ (y - s.model)[:, :, None])[:, :, 0].double()


def h_penalty(s: FitState, good: torch.Tensor, bias: float | None) -> torch.Tensor:
    """kappa (n,) float64 of pPXF's penalty towards a Gaussian LOSVD, kappa (h3^2 + h4^2) added to chi^2:
    pPXF raises every normalised residual by bias x their robust sigma x |h| (Cappellari & Emsellem 2004,
    eq. 9), which adds ~ N bias^2 sigma_r^2 |h|^2, N sigma_r^2 ~ chi^2 (N = ``good`` (n,), the good pixels);
    ``bias`` None is pPXF's default, 0.7 sqrt(500 / N). Zeros without h3, h4."""
    if s.h.shape[1] == 0 or bias == 0:
        return torch.zeros_like(s.chi2)
    b2 = 245.0 / good.clamp(min=1).double() if bias is None else float(bias) ** 2
    return b2 * s.chi2


def _penalised(a: torch.Tensor, g: torch.Tensor, s: FitState, kappa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The normal equations of chi^2 + kappa |h|^2: kappa on the h block's diagonal, -kappa h in J'W r."""
    if s.h.shape[1] == 0:
        return a, g
    a, g = a.clone(), g.clone()
    rows = torch.arange(3, 3 + s.h.shape[1], device=a.device)
    a[:, rows, rows] += kappa[:, None]
    g[:, rows] -= kappa[:, None] * s.h.double()
    return a, g


def _sub(s: FitState, idx: torch.Tensor | slice) -> FitState:
    """The rows ``idx`` of ``s``: copies for an index tensor, views for a slice."""
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


def lm_iteration(tpl: Templates, s: FitState, y, sw, lam, limits: FitLimits):
    """One Levenberg-Marquardt step of (v, sigma, A_V) on the variable-projection functional, taken together
    with a refresh of the working set (the templates the chi^2 gradient wants in for the zero-weight slots):
    one set of columns and one NNLS per step. Where that trial is rejected, the refresh alone is tried at
    the parameters reached (it never raises chi^2 there: the support is kept). Returns (state, damping,
    converged): a spectrum has converged when neither changes chi^2 by ``tol`` (relative; pPXF's ftol,
    1e-4 by default: on the bench's mock at S/N 30 its chi^2 is within 0.01 of a 1e-5 stop for half the
    spectra and within 2.2 for 99 %), the weights then satisfying the KKT conditions of the NNLS over all
    templates as far as the gradient can tell."""
    a, g = projected_normal(tpl, s, y)
    kappa = h_penalty(s, (sw > 0).sum(1), limits.bias)
    a, g = _penalised(a, g, s, kappa)
    if limits.holds_av:
        a, g = _hold(a, g, 2)
    step = torch.linalg.solve(a + torch.diag_embed(lam[:, None] * torch.diagonal(a, dim1=1, dim2=2)), g)
    step = step.to(tpl.dtype)
    lo_s, hi_s = limits.sigma
    lo_a, hi_a = limits.av
    ws = refresh_working_set(tpl, s, y)
    nh = 3 + s.h.shape[1]
    trial = solve_weights(  # (its working sets a copy: ``take`` may write into the trial's tensors)
        tpl, y, sw, ws.clone(), s.v + step[:, 0], (s.sigma + step[:, 1]).clamp(lo_s, hi_s),
        (s.av + step[:, 2]).clamp(lo_a, hi_a), s.c + step[:, nh:], (s.h + step[:, 3:nh]).clamp(-limits.h, limits.h),
        passive=(s.w > 0) & (ws == s.ws),
    )  # fmt: skip
    f_now = s.chi2 + kappa * (s.h.double() ** 2).sum(1)  # the objective: chi^2 and the penalty on h3, h4
    f_trial = trial.chi2 + kappa * (trial.h.double() ** 2).sum(1)
    better = f_trial < f_now
    still = (f_now - f_trial).abs() < limits.tol * f_now
    s.take(better, trial)
    lam = torch.where(better, lam * 0.2, lam * 10.0)
    moved = _refresh(tpl, s, y, sw, ws, ~better, limits.tol)
    return s, lam, (still & ~moved) | (lam > 1e5)


def _refresh(tpl: Templates, s: FitState, y, sw, ws: torch.Tensor, rows: torch.Tensor, tol: float) -> torch.Tensor:
    """Where ``rows``, swap in the working sets ``ws`` at the current parameters if that lowers chi^2;
    returns which spectra it lowered by more than ``tol`` (relative)."""
    changed = torch.nonzero(rows & (ws != s.ws).any(1)).flatten()
    moved = torch.zeros_like(s.chi2, dtype=torch.bool)
    if changed.numel() == 0:
        return moved
    part = _sub(s, changed)  # a copy: its columns become the trial's
    new_ws = ws[changed]
    trial = solve_weights(
        tpl, y[changed], sw[changed], new_ws, part.v, part.sigma, part.av, part.c, part.h,
        passive=(part.w > 0) & (new_ws == part.ws), cols=_swap_columns(tpl, part, new_ws), kern=part.kern,
        screen=part.screen,
    )  # fmt: skip
    better = trial.chi2 < part.chi2
    moved[changed] = better & (part.chi2 - trial.chi2 > tol * part.chi2)
    if bool(better.any()):
        keep = torch.nonzero(better).flatten()
        _put(s, changed[keep], _sub(trial, keep))
    return moved


def _swap_columns(tpl: Templates, s: FitState, ws: torch.Tensor) -> torch.Tensor:
    """The columns of working sets ``ws`` at the parameters of ``s``: those of ``s.cols`` where the
    template is the same, computed afresh (one FFT each) only for the slots that changed; written into
    ``s.cols`` (a copy the caller owns) and returned."""
    rows, slots = torch.nonzero(ws != s.ws, as_tuple=True)
    cols = s.cols
    if rows.numel():
        spec = torch.index_select(tpl.that, 0, ws[rows, slots])
        spec *= s.kern[rows]
        cols[rows, slots] = tpl.pixels(spec) * s.screen[rows]
    return cols
