"""Training sets in Zarr stores: written batch by batch (a rerun resumes), read back on demand.

``survey-proc trainset CONFIG OUT`` writes one; a training config names it in ``trainset_store``.
Each batch is seeded by (seed, batch index), so a store does not depend on how often its writing
was interrupted, and equals the set :func:`~survey_proc.training.synthesise` draws in memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np
import zarr

from survey_proc import progress
from survey_proc.preprocess import InputSpec
from survey_proc.ssp import SSPLibrary, require_use
from survey_proc.training._dataset import (
    NoiseFreeSet,
    TrainsetConfig,
    grid_rows,
    n_batches,
    synthesise_batch,
    trainset_from_record,
)

#: per-spectrum columns besides the spectra, weights and labels: (name, dtype)
_COLUMNS = (
    ("wave_index", "int32"),
    ("redshift", "float64"),
    ("snr", "float32"),
    ("kind", "uint8"),
    ("emission", "bool"),
)


class StoredSet:
    """A training set in a Zarr store: labels and small columns in memory, spectra read on demand.

    Quacks like :class:`NoiseFreeSet` where training needs it (``len``, ``labels``, ``subset``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self.group = zarr.open_group(self.path, mode="r")
        attrs = dict(self.group.attrs)
        done = np.asarray(self.group["batch_done"][...])
        if not done.all():
            raise ValueError(
                f"training set {path} is incomplete ({int(done.sum())} of {done.size} batches); "
                "rerun `survey-proc trainset` with the same arguments to finish it"
            )
        self.config = trainset_from_record(json.loads(attrs["config"]))
        self.digest = attrs["digest"]
        self.label_names = tuple(attrs["label_names"])
        self.labels = np.asarray(self.group["labels"][...])
        self.wave_index = np.asarray(self.group["wave_index"][...])
        self.redshift = np.asarray(self.group["redshift"][...])
        self.snr = np.asarray(self.group["snr"][...])
        self.kind = np.asarray(self.group["kind"][...])
        self.emission = np.asarray(self.group["emission"][...])

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.group["flux"].shape)) * 4 + int(np.prod(self.group["weights"].shape)) * 4

    def load(self) -> NoiseFreeSet:
        """The whole set in memory (when it fits, reading it once beats reading it every epoch)."""
        return NoiseFreeSet(
            np.asarray(self.group["flux"][...]),
            self.wave_index,
            self.redshift,
            self.snr,
            self.labels,
            self.label_names,
            np.asarray(self.group["weights"][...]),
            self.kind,
            self.emission,
        )

    def subset(self, idx: np.ndarray) -> NoiseFreeSet:
        idx = np.asarray(idx)
        order = np.argsort(idx, kind="stable")
        rows = idx[order]
        # read runs of consecutive rows as slices (zarr's fancy indexing is far slower)
        breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
        runs = np.split(rows, breaks)
        flux = np.concatenate([np.asarray(self.group["flux"][r[0] : r[-1] + 1]) for r in runs])
        weights = np.concatenate([np.asarray(self.group["weights"][r[0] : r[-1] + 1]) for r in runs])
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        return NoiseFreeSet(
            flux[inverse],
            self.wave_index[idx],
            self.redshift[idx],
            self.snr[idx],
            self.labels[idx],
            self.label_names,
            weights[inverse],
            self.kind[idx],
            self.emission[idx],
        )


def write_trainset(cfg: TrainsetConfig, lib: SSPLibrary, spec: InputSpec, path: str | os.PathLike) -> StoredSet:
    """Synthesise the set batch by batch into a Zarr store (bounded memory; a rerun resumes the
    batches not yet marked done). An SSP library reserved for evaluation is refused."""
    require_use(lib, "training")
    path = str(path)
    group = _open_store(cfg, lib, spec, path)
    done = np.asarray(group["batch_done"][...])
    todo = [k for k in range(n_batches(cfg)) if not done[k]]
    for k in progress.track(todo, "training set", unit="batch"):
        part = synthesise_batch(cfg, lib, spec, k)
        sl = slice(k * cfg.batch, k * cfg.batch + len(part))
        group["flux"][sl] = part.flux
        group["weights"][sl] = part.weights
        group["labels"][sl] = part.labels
        for name, _ in _COLUMNS:
            group[name][sl] = getattr(part, name)
        group["batch_done"][k : k + 1] = np.ones(1, np.uint8)
    return StoredSet(path)


def _open_store(cfg: TrainsetConfig, lib: SSPLibrary, spec: InputSpec, path: str) -> zarr.Group:
    """The store of this set at ``path``: reopened (when it holds this set's digest) or created."""
    digest = cfg.digest(lib, spec)
    try:
        group = zarr.open_group(path, mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return _create_store(cfg, lib, spec, path, digest)
    if group.attrs.get("digest") != digest:
        raise ValueError(
            f"{path} holds another training set (digest {group.attrs.get('digest')} vs "
            f"{digest}); choose another path or delete it"
        )
    return group


def _create_store(cfg: TrainsetConfig, lib: SSPLibrary, spec: InputSpec, path: str, digest: str) -> zarr.Group:
    group = zarr.open_group(path, mode="w", zarr_format=3)
    b, n_obs = cfg.batch, grid_rows(cfg, spec)
    # noise-free float spectra barely compress (~12 %); uncompressed they stream far faster
    group.create_array("flux", shape=(cfg.n, n_obs), chunks=(b, n_obs), dtype="float32", compressors=None)
    grid = (lib.metal.size, lib.log_age.size)
    group.create_array("weights", shape=(cfg.n, *grid), chunks=(b, *grid), dtype="float32")
    group.create_array("labels", shape=(cfg.n, len(cfg.labels)), chunks=(b, len(cfg.labels)), dtype="float32")
    for name, dtype in _COLUMNS:
        group.create_array(name, shape=(cfg.n,), chunks=(b,), dtype=dtype)
    group.create_array("batch_done", shape=(n_batches(cfg),), chunks=(1,), dtype="uint8", fill_value=0)
    group.attrs.update(
        {
            "config": json.dumps(asdict(cfg), default=list),
            "digest": digest,
            "label_names": list(cfg.labels),
            "instrument": cfg.instrument,
            "input": json.dumps(spec.to_manifest()),
            "ssp_library": lib.provenance.get("source", ""),
            "description": "noise-free observed-frame training spectra; noise is drawn per epoch",
        }
    )
    return group
