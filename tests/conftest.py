"""Shared fixtures: the real SSP library (fetched once per machine), small mock cubes, bundles."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def ssp_lib():
    from survey_proc.ssp import load_ssp_library

    return load_ssp_library()


@pytest.fixture(scope="session")
def mock16(tmp_path_factory, ssp_lib) -> Path:
    """The acceptance mock: 16 x 16, seed 7, S/N 30 (chunks of 8: four regions)."""
    from survey_proc.synth import MockConfig, write_mock

    path = tmp_path_factory.mktemp("mock") / "c.zarr"
    write_mock(path, MockConfig(nx=16, ny=16, seed=7, snr=30.0, chunk=8), ssp_lib)
    return path


@pytest.fixture()
def cube_copy(tmp_path, mock16) -> Path:
    """A private copy of the 16 x 16 mock a test may modify."""
    dst = tmp_path / "c.zarr"
    shutil.copytree(mock16, dst)
    return dst


@pytest.fixture(scope="session")
def default_bundle() -> Path:
    from survey_proc.estimators import resolve_model

    return resolve_model("default").parent


def robust_sigma(x) -> float:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


@pytest.fixture(scope="session")
def run_model(default_bundle) -> str:
    """The model of engine-scale tests (survey, binning, killed workers): the packaged default bundle."""
    return str(default_bundle)


def write_small_mock(path: Path, seed: int, n: int = 12, chunk: int = 8, **kw) -> Path:
    """A small mock cube (n x n spaxels, chunks of ``chunk``) for survey-scale tests."""
    from survey_proc.synth import MockConfig, write_mock

    write_mock(path, MockConfig(nx=n, ny=n, seed=seed, snr=30.0, chunk=chunk, **kw))
    return path


def toy_train_config(trainset: dict | None = None, **overrides):
    """A spectral training run at toy size (a few seconds on one thread): ``trainset`` options and
    :class:`~survey_proc.training.TrainConfig` fields override the toy's."""
    from survey_proc.training import TrainConfig, TrainsetConfig

    options = dict(
        name="toy",
        n_val=256,
        n_test=100,
        epochs=2,
        chunk=512,
        test_snr=(30.0,),
        arch_kwargs={"widths": (8, 8, 8, 8, 8), "activation": "relu"},
        threads=1,
        n_calib=1500,
    )
    sampled = TrainsetConfig(**{"n": 1024, "batch": 512, "seed": 3, **(trainset or {})})
    return TrainConfig(trainset=sampled, **{**options, **overrides})


def is_chunk_key(path: Path, root: Path) -> bool:
    """A finished Zarr chunk file under ``root`` (``c/0/1``), not the temporary file of a write in
    progress or cut short by a kill (``0.<uuid>.partial``)."""
    return path.is_file() and all(part.isdigit() for part in path.relative_to(root).parts)


def crop_minicube(dst: Path, ys: slice = slice(0, 8), xs: slice = slice(0, 8), scale: float = 1.0) -> Path:
    """A small real MUSE FITS cube: spaxels (ys, xs) of the mpdaf minicube, DATA times ``scale``."""
    from astropy.io import fits

    from survey_proc.stores import muse_minicube

    with fits.open(muse_minicube()) as hdul:
        out = fits.HDUList([hdul[0].copy()])
        for hdu in hdul[1:]:
            data = hdu.data[:, ys, xs] * (scale if hdu.name == "DATA" else 1)
            out.append(fits.ImageHDU(data.astype(hdu.data.dtype), header=hdu.header, name=hdu.name))
        out.writeto(dst, overwrite=True)
    return dst
