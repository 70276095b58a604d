"""Open an engine input store by the feature dim a model declares (``wave`` or ``band``)."""

from __future__ import annotations

import os

import xarray as xr

from survey_proc.errors import CubeError
from survey_proc.stores._cube import open_spectral_store
from survey_proc.stores._photometry import open_photometry_store

#: feature dim -> opener that validates the store's schema
OPENERS = {"wave": open_spectral_store, "band": open_photometry_store}
_WHAT = {
    "wave": "a cube or spectra catalogue (flux over ..., wave)",
    "band": "a photometric store (flux over ..., band)",
}


def open_input_store(
    path: str | os.PathLike, feature_dim: str = "wave", *, require_redshift: bool = True
) -> xr.Dataset:
    """Open and validate the store a model of ``feature_dim`` reads; the error says which kind is expected."""
    if feature_dim not in OPENERS:
        raise CubeError(f"models reading feature dim {feature_dim!r} are not supported (known: {', '.join(OPENERS)})")
    try:
        return OPENERS[feature_dim](path, require_redshift=require_redshift)
    except CubeError as exc:
        raise CubeError(f"{exc}\n(the model reads {_WHAT[feature_dim]})") from exc
