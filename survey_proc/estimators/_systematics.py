"""Systematic error terms a manifest adds to the errors its model reports (``error_systematics``).

A network's ``<name>_err`` is its own uncertainty, calibrated on held-out spectra of its training
library: it cannot know how far another library (or real stars) moves the answer. A manifest says
that part in its optional ``error_systematics``::

    "error_systematics": {
      "terms": {"log_age": 0.05, "metallicity": 0.04},
      "novelty": {"output": "ood_score", "from": 0.9, "to": 1.5, "terms": {"log_age": 0.3, "metallicity": 0.2}},
      "meaning": "..."
    }

and the estimator returns ``sqrt(err^2 + term^2 + (w * novelty_term)^2)``, where ``w`` rises linearly
from 0 at the novelty score ``from`` to 1 at ``to`` (and stays 1 beyond): a term for every spectrum,
and one that grows as the spectrum looks less like the training set, so that errors widen where the
library's systematics bite without widening in library.

Those two are capped so that ``<name>_err`` keeps its 68 % coverage in library; what another
library's scale moves the answer by beyond them is reported on its own, as astronomers quote a
template-library systematic beside the statistical error: ``"library": {"metallicity": 0.2, ...}``
makes the estimator return ``<name>_sys_err`` (that constant wherever ``<name>_err`` is finite). Its
sum in quadrature with ``<name>_err`` is the error to hold an estimate to when comparing it with work
on another SSP library (or with truth on another library's scale). All parts are optional;
``python -m benchmarks.library_calibration`` measures them on mocks from other SSP libraries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from survey_proc.errors import ModelError


@dataclass(frozen=True)
class ErrorSystematics:
    """The parsed ``error_systematics`` of a manifest (empty: nothing added)."""

    terms: Mapping[str, float] = field(default_factory=dict)
    novelty_terms: Mapping[str, float] = field(default_factory=dict)
    novelty_output: str = ""
    novelty_from: float = 0.0
    novelty_to: float = 1.0
    #: the SSP-library systematic of each output, returned on its own as ``<name>_sys_err``
    library_terms: Mapping[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.terms or self.novelty_terms or self.library_terms)

    def names(self) -> set[str]:
        return set(self.terms) | set(self.novelty_terms) | set(self.library_terms)

    def weight(self, score: np.ndarray) -> np.ndarray:
        """0 at or below ``novelty_from``, 1 at or above ``novelty_to``, linear between (NaN: 0)."""
        w = (np.asarray(score, np.float64) - self.novelty_from) / (self.novelty_to - self.novelty_from)
        return np.nan_to_num(np.clip(w, 0.0, 1.0), nan=0.0)

    def add(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``out`` (an estimator's outputs) with the terms added in quadrature to each ``<name>_err``, in
        its own dtype (NaN errors stay NaN), and the library terms as ``<name>_sys_err``. In place, and
        returned."""
        if not self:
            return out
        self._add_library(out)
        w = self.weight(out[self.novelty_output]) if self.novelty_terms else None
        for name in set(self.terms) | set(self.novelty_terms):
            err = out.get(f"{name}_err")
            if err is None:
                continue
            var = np.square(err, dtype=np.float64) + self.terms.get(name, 0.0) ** 2
            if w is not None:
                var = var + np.square(
                    w.reshape(w.shape + (1,) * (err.ndim - w.ndim)) * self.novelty_terms.get(name, 0.0)
                )
            out[f"{name}_err"] = np.sqrt(var).astype(err.dtype, copy=False)
        return out

    def _add_library(self, out: dict[str, np.ndarray]) -> None:
        for name, term in self.library_terms.items():
            err = out.get(f"{name}_err")
            if err is not None:
                out[f"{name}_sys_err"] = np.where(np.isfinite(err), term, np.nan).astype(err.dtype, copy=False)

    def describe(self, name: str) -> dict[str, Any]:
        """The attributes an ``<name>_err`` map gets: what it holds beyond the model's own uncertainty."""
        attrs: dict[str, Any] = {}
        if name in self.terms:
            attrs["systematic_term"] = self.terms[name]
        if name in self.novelty_terms:
            attrs["systematic_novelty_term"] = self.novelty_terms[name]
            attrs["systematic_novelty_ramp"] = f"{self.novelty_output} {self.novelty_from:g} to {self.novelty_to:g}"
        if name in self.library_terms:
            attrs["sys_err_map"] = f"{name}_sys_err: the SSP-library systematic, not included here"
        return attrs

    def describe_library(self, name: str) -> dict[str, Any]:
        """The attributes of a ``<name>_sys_err`` map."""
        return {
            "ssp_library_systematic": self.library_terms[name],
            "comment": f"SSP-library systematic, not in {name}_err: against another library's scale hold "
            f"{name} to sqrt({name}_err^2 + {name}_sys_err^2)",
        }


def _numbers(entry: Any, where: str, problems: list[str]) -> dict[str, float]:
    if not isinstance(entry, Mapping):
        problems.append(f"{where} is not a mapping of output names to numbers")
        return {}
    good = {}
    for key, value in entry.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value >= 0:
            good[key] = float(value)
        else:
            problems.append(f"{where}.{key} is not a number >= 0")
    return good


def parse_systematics(entry: Any, with_error: Iterable[str], outputs: Iterable[str], where: str) -> ErrorSystematics:
    """The :class:`ErrorSystematics` of a manifest's ``error_systematics`` (None: none), every problem
    named in one :class:`~survey_proc.errors.ModelError`."""
    if not entry:
        return ErrorSystematics()
    problems: list[str] = []
    if not isinstance(entry, Mapping):
        raise ModelError(f"{where}: error_systematics is not a mapping")
    terms = _numbers(entry.get("terms", {}), "terms", problems)
    kw: dict[str, Any] = {"library_terms": _numbers(entry.get("library") or {}, "library", problems)}
    novelty = entry.get("novelty") or {}
    if novelty:
        kw["novelty_terms"] = _numbers(novelty.get("terms", {}), "novelty.terms", problems)
        kw["novelty_output"] = novelty.get("output", "")
        if kw["novelty_output"] not in set(outputs):
            problems.append(f"novelty.output {kw['novelty_output']!r} is not an output of the model")
        try:
            kw["novelty_from"], kw["novelty_to"] = float(novelty["from"]), float(novelty["to"])
            if not kw["novelty_to"] > kw["novelty_from"]:
                problems.append("novelty.to is not above novelty.from")
        except (KeyError, TypeError, ValueError):
            problems.append("novelty needs numbers 'from' and 'to'")
    result = ErrorSystematics(terms, **kw)
    unknown = sorted(result.names() - set(with_error))
    if unknown:
        problems.append(f"names outputs without errors ({', '.join(unknown)})")
    if problems:
        raise ModelError(f"{where}: error_systematics: " + "; ".join(problems))
    return result
