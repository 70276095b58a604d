"""The Estimator interface and the model-bundle manifest.

An estimator takes a batch of preprocessed spectra (see :mod:`survey_proc.preprocess`) and returns
named arrays. The engine only sees this interface and the manifest; which code computes the
numbers (TorchScript, pPXF, ...) is the manifest's ``estimator`` field, resolved by
:func:`survey_proc.estimators.load_estimator`.

A bundle is a folder with ``manifest.json`` and the file(s) it names. The manifest declares
everything the engine needs: input kind and preprocessing (``input``), outputs with units and grid
axes (``outputs``), flag rules (``flags``), systematic error terms (``error_systematics``), and the
provenance of the model (training config, training-set hash, held-out metrics).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from survey_proc.errors import ModelError
from survey_proc.estimators._systematics import ErrorSystematics, parse_systematics
from survey_proc.preprocess import BatchMeta, InputKind, input_spec

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "survey-proc-bundle/1"


@dataclass(frozen=True)
class OutputSpec:
    """One output of an estimator.

    name : variable name in the maps (``log_age``, ``weights``...).
    units, long_name : CF attributes.
    error : the estimator also returns ``<name>_err`` (1-sigma, same units).
    dims : extra dims beyond the spatial ones (e.g. ``("age", "metal")``), with ``coords`` values.
    """

    name: str
    units: str = "1"
    long_name: str = ""
    error: bool = False
    dims: tuple[str, ...] = ()
    coords: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, name: str, entry: dict[str, Any]) -> OutputSpec:
        return cls(
            name=name,
            units=entry.get("units", "1"),
            long_name=entry.get("long_name", ""),
            error=bool(entry.get("error", False)),
            dims=tuple(entry.get("dims", ())),
            coords={k: list(v) for k, v in entry.get("coords", {}).items()},
        )


@dataclass
class Manifest:
    """A parsed bundle manifest (the raw dict is kept for provenance)."""

    path: Path
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return self.raw.get("name", self.path.parent.name)

    @property
    def estimator(self) -> str:
        return self.raw["estimator"]

    @property
    def input_kind(self) -> str:
        return self.raw["input"].get("kind", "spectrum")

    @property
    def input(self) -> InputKind:
        """The input spec of the declared kind (spectrum, sed, image; see ``preprocess.INPUT_KINDS``)."""
        try:
            return input_spec(self.raw["input"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"model manifest {self.path}: its 'input' section is not usable ({exc})") from exc

    @property
    def outputs(self) -> list[OutputSpec]:
        return [OutputSpec.from_manifest(k, v) for k, v in self.raw["outputs"].items()]

    @property
    def output_names(self) -> frozenset[str]:
        """The names of the outputs (without their ``_err``)."""
        return frozenset(self.raw["outputs"])

    def declared(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``values`` the manifest declares: its outputs and, where it says so, their
        ``_err``. An estimator that computes more than a bundle declares (pPXF's h3 and h4 for a bundle
        with a Gaussian LOSVD) returns only these."""
        names = {o.name for o in self.outputs} | {f"{o.name}_err" for o in self.outputs if o.error}
        return {k: v for k, v in values.items() if k in names}

    @property
    def flag_rules(self) -> list[tuple[str, dict[str, Any]]]:
        """[(flag name, rule), ...]: a rule ``{"output": name, "threshold": x}`` (or ``"above": x``) flags where
        the output is above x, ``{"output": name, "below": x}`` where it is below (both keys: either).

        The manifest's ``flags`` maps a :class:`survey_proc.stores.Flag` name to one rule or a list (e.g.
        ``OUT_OF_DISTRIBUTION`` on a novelty score, ``AT_LIMIT`` on the edges of the training ranges,
        ``POOR_FIT`` on chi^2).
        """
        rules = []
        for flag, entry in self.raw.get("flags", {}).items():
            for rule in entry if isinstance(entry, list) else [entry]:
                rules.append((flag, rule))
        return rules

    @property
    def error_systematics(self) -> ErrorSystematics:
        """What the errors the model reports are grown by (the manifest's optional ``error_systematics``:
        terms added in quadrature, one of them growing with a novelty score; see
        :mod:`survey_proc.estimators._systematics`). Empty where the manifest has none."""
        outputs = self.outputs
        with_error = [spec.name for spec in outputs if spec.error]
        names = [spec.name for spec in outputs] + [rule["output"] for _, rule in self.flag_rules]
        return parse_systematics(self.raw.get("error_systematics"), with_error, names, f"model manifest {self.path}")

    @property
    def batch_size(self) -> int | None:
        return self.raw.get("batch_size")

    @property
    def min_snr(self) -> float | None:
        return self.raw.get("min_snr")

    @property
    def file(self) -> Path | None:
        return self.path.parent / self.raw["file"] if self.raw.get("file") else None

    @property
    def sha256(self) -> str | None:
        return self.raw.get("sha256")

    @property
    def digest(self) -> str:
        """SHA-256 of the model file, or of the manifest itself for estimators without one (pPXF)."""
        if self.sha256:
            return self.sha256
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()

    @property
    def manifest_digest(self) -> str:
        """SHA-256 of the manifest's content (its flag rules and calibrations shape the maps too)."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.digest[:12]}"


def read_manifest(path: Path) -> Manifest:
    """Read and check a manifest; ``path`` is the bundle folder or its manifest.json."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.exists():
        raise ModelError(
            f"model manifest {path} does not exist (a bundle is a folder with "
            f"{MANIFEST_NAME} and the model file it names)"
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"model manifest {path} is not valid JSON: {exc}") from exc
    missing = [k for k in ("estimator", "input", "outputs") if k not in raw]
    if missing:
        raise ModelError(f"model manifest {path} lacks {', '.join(missing)}")
    return Manifest(path=path, raw=raw)


def write_manifest_like(path: Path, raw: dict[str, Any], like: Path | None = None) -> None:
    """``raw`` as JSON in ``path``, in the layout (indent, final newline) of the manifest ``like``
    (default: ``path`` itself) where that exists, else indent 2 and no final newline: an edited or
    re-exported manifest's diff shows only what changed."""
    layout = Path(like or path)
    indent, end = 2, ""
    if layout.exists():
        lines = layout.read_text().splitlines(keepends=True)
        if len(lines) > 1:
            indent = len(lines[1]) - len(lines[1].lstrip(" "))
        end = "\n" if lines and lines[-1].endswith("\n") else ""
    Path(path).write_text(json.dumps(raw, indent=indent) + end)


class Estimator:
    """What the engine calls on an estimator: ``predict``, and the hooks below with their defaults.

    An implementation subclasses it, sets ``manifest`` and implements :meth:`predict`; it overrides a
    hook where its default does not hold (the TorchScript estimator batches, warms up and reports
    its arithmetic; pPXF reports its versions). It is registered by the manifest's ``estimator``
    name in :data:`survey_proc.estimators.IMPLEMENTATIONS` and built as ``cls(manifest,
    device=..., threads=...)``.
    """

    manifest: Manifest
    #: spectra per forward pass: the engine prepares and estimates a region in blocks of it
    #: (None: a region's spectra at once)
    batch_size: int | None = None
    #: the arithmetic of the network on this estimator's device (``float32``, ``bfloat16``, ``tf32``;
    #: empty for estimators without a network)
    precision: str = ""
    #: versions of what computes the numbers beyond the model file (recorded in the maps' attributes)
    provenance: Mapping[str, Any] = MappingProxyType({})

    def predict(self, x: np.ndarray, meta: BatchMeta | None = None) -> dict[str, np.ndarray]:
        """Estimates for a batch.

        x : (n, nchannels, nwave) float32, as made by the ``prepare_batch`` of this estimator's
            ``manifest.input``.
        meta : what the engine knows about the batch beyond the pixels
            (:class:`~survey_proc.preprocess.BatchMeta`: redshifts, the data's instrumental FWHM at
            the model's pixels). Estimators that do not need it ignore it.
        Returns {name: (n, *dims)} for every output in the manifest, ``<name>_err`` for those with
        errors, ``<name>_sys_err`` for those the manifest's ``error_systematics.library`` names (its
        ``add`` makes them), and the scores named by the manifest's flag rules.
        """
        raise NotImplementedError

    #: the estimator can rebuild its model spectra from its maps (:meth:`rebuild`; ``--save-model``)
    rebuilds_spectra: bool = False

    def rebuild(self, x: np.ndarray, meta: BatchMeta | None, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model spectra (n, nwave) on the input grid that ``values`` (this estimator's outputs for
        the n spectra of ``x``, as stored in its maps) stand for; estimators that fit a model override it."""
        raise ModelError(f"model {self.manifest.name!r} ({self.manifest.estimator}) does not rebuild spectra")

    def precision_on(self, device: str) -> str:
        """The arithmetic the network would run in on ``device`` (the engine checks a bundle on the
        CPU and records what the workers' devices run)."""
        return self.precision

    def warm_up(self) -> None:
        """Run what the first batch would pay for once (graph optimisation, kernel builds), before
        the timed regions; called once per worker."""
