"""The fit's driver: many spectra through the Levenberg-Marquardt steps of :mod:`._fitcore`, a batch at a time.

A spectrum that has converged leaves the batch and the next waiting one takes its place (its first solve
made with the others joining then), so every step works on a full batch until the last spectra: the cost
of a step is mostly per spectrum, but a part (torch's per-operation overhead) is per step, and a batch that
empties as its spectra converge pays that part for ever fewer of them (on a CPU, 8 batches of 32 spectra
took 137 steps for 2,338 spectrum-steps; kept full, 85).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from survey_proc.estimators._fitcore import FitLimits, FitState, Templates, _put, _sub, lm_iteration, solve_weights


def fit_stream(
    tpl: Templates, y, W, v0, sigma0, av0, ws0, limits: FitLimits | None = None, moments: int = 2,
    batch: int = 32, group: int | None = None,
) -> Iterator[tuple[torch.Tensor, FitState]]:  # fmt: skip
    """Fit n spectra, y, W (n, L) (W = 1/variance, 0 where masked), from seeds (n,) and starting working
    sets ws0 (n, k), with ``moments`` 2 (a Gaussian LOSVD) or 4 (Gauss-Hermite h3, h4, starting at 0) and
    ``limits`` (default :class:`FitLimits`), at most ``batch`` at a time, the finished ones replaced by
    waiting ones; yields (rows, state): the finished spectra's indices (into y) and their states, in groups of at
    least ``group`` (default ``batch``) spectra, the last one smaller. Each spectrum takes at most
    ``limits.iterations`` steps. The states are whitened (their columns and model times sqrt W)."""
    limits, group = limits or FitLimits(), group or batch
    sw = W.sqrt()
    y = y * sw  # whitened, as every state of the fit (:mod:`._fitcore`)
    waiting = _Waiting(tpl, y, sw, v0, sigma0, av0, ws0, moments, batch)
    rows, s = waiting.draw(batch)
    lam = torch.full_like(s.chi2, 1e-3)
    steps = torch.zeros_like(rows)
    ys, sws = y[rows], sw[rows]
    finished = _Finished(group + batch)
    while rows.numel():
        if limits.iterations > 0:
            s, lam, done = lm_iteration(tpl, s, ys, sws, lam, limits)
            steps += 1
            done = done | (steps >= limits.iterations)
        else:  # no steps: the first solves
            done = torch.ones_like(rows, dtype=torch.bool)
        if not bool(done.any()):
            continue
        free = torch.nonzero(done).flatten()
        finished.add(rows[free], s, free)
        if finished.count >= group:
            yield finished.take()
        new, first = waiting.draw(free.numel())
        if new.numel():  # the waiting spectra take the freed slots, in place
            slots = free[: new.numel()]
            _put(s, slots, first)
            rows[slots], ys[slots], sws[slots] = new, y[new], sw[new]
            lam[slots], steps[slots] = 1e-3, 0
            done[slots] = False
        if bool(done.any()):  # slots no one waits for: the batch shrinks
            keep = torch.nonzero(~done).flatten()
            s, rows, lam, steps, ys, sws = _sub(s, keep), rows[keep], lam[keep], steps[keep], ys[keep], sws[keep]
    if finished.count:
        yield finished.take()


class _Waiting:
    """The spectra not yet in the batch, in order; their first solves made ``batch`` at a time, ahead of
    need (one solve for a few spectra costs nearly what one for a batch does)."""

    def __init__(self, tpl: Templates, y, sw, v0, sigma0, av0, ws0, moments: int, batch: int) -> None:
        self.args, self.moments, self.batch = (tpl, y, sw, v0, sigma0, av0, ws0), moments, batch
        self.next, self.n = 0, y.shape[0]
        self.rows = torch.zeros(0, dtype=torch.int64, device=y.device)
        self.state: FitState | None = None

    def draw(self, m: int) -> tuple[torch.Tensor, FitState | None]:
        """Up to ``m`` waiting spectra (indices) and their first states."""
        rows, states = [], []
        while m > 0 and (self.rows.numel() or self.next < self.n):
            if not self.rows.numel():
                self.rows = torch.arange(self.next, min(self.next + self.batch, self.n), device=self.rows.device)
                self.next += self.rows.numel()
                self.state = _start(*self.args, self.rows, self.moments)
            take = min(m, self.rows.numel())
            rows.append(self.rows[:take])
            states.append(_sub(self.state, slice(0, take)))  # views
            self.rows, self.state = self.rows[take:], _sub(self.state, slice(take, None))
            m -= take
        if not rows:
            return self.rows[:0], None
        return torch.cat(rows), _cat(states)


def _start(tpl: Templates, y, sw, v0, sigma0, av0, ws0, rows: torch.Tensor, moments: int) -> FitState:
    """The first solve of spectra ``rows``: the weights of their starting working sets at the seeds (the
    caller's tensors copied: the state is updated in place)."""
    m = rows.numel()
    c0 = torch.zeros((m, tpl.mdegree), dtype=tpl.dtype, device=y.device)
    h0 = torch.zeros((m, 2 if moments == 4 else 0), dtype=tpl.dtype, device=y.device)
    return solve_weights(tpl, y[rows], sw[rows], ws0[rows], v0[rows], sigma0[rows], av0[rows], c0, h0)


def _cat(states: list[FitState]) -> FitState:
    if len(states) == 1:
        return states[0]
    return FitState(*(torch.cat([getattr(s, name) for s in states]) for name in FitState.FIELDS))


class _Finished:
    """The spectra that have converged, gathered from the batch into a group's own tensors (one copy)
    until the group is taken."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.count = capacity, 0
        self.rows: torch.Tensor | None = None
        self.state: FitState | None = None

    def add(self, rows: torch.Tensor, s: FitState, idx: torch.Tensor) -> None:
        """Rows ``idx`` of the batch state ``s``, the spectra ``rows``."""
        m = idx.numel()
        if self.state is None:
            cap = max(self.capacity, m)
            self.rows = rows.new_empty(cap)
            self.state = FitState(*(f.new_empty((cap, *f.shape[1:])) for f in (getattr(s, n) for n in FitState.FIELDS)))
        part = slice(self.count, self.count + m)
        self.rows[part] = rows
        for name in FitState.FIELDS:
            torch.index_select(getattr(s, name), 0, idx, out=getattr(self.state, name)[part])
        self.count += m

    def take(self) -> tuple[torch.Tensor, FitState]:
        """The group gathered so far (its own tensors); the next starts afresh."""
        out = self.rows[: self.count], _sub(self.state, slice(0, self.count))
        self.rows, self.state, self.count = None, None, 0
        return out
