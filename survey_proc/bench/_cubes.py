"""The cubes a benchmark runs on: mocks with truth (built once, reused), and pPXF's sample of a cube."""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict
from pathlib import Path

import xarray as xr

from survey_proc.stores import consolidate, cube_compressors, open_spectral_store
from survey_proc.synth import MockConfig, write_mock


def mock_cube(path: Path, side: int, chunk: int = 32, seed: int = 1) -> Path:
    """A mock cube of ``side`` x ``side`` spaxels (S/N 30), reused when it already exists."""
    cfg = MockConfig(nx=side, ny=side, seed=seed, snr=30.0, chunk=min(chunk, side))
    if path.exists():
        try:
            ds = open_spectral_store(path, check_data=False)
            if ds.attrs.get("mock_config") == str(asdict(cfg)):
                return path
        except Exception:
            pass
        shutil.rmtree(path)
    write_mock(path, cfg)
    return path


def sample_cube(cube: Path, out: Path, n: int, regions: int = 4) -> Path:
    """~``n`` spectra spread evenly over ``cube`` (a strided grid of spaxels, with its truth) as a
    cube store of at least ``regions`` regions (one per worker, so that every worker fits its share):
    a coarse image of the whole galaxy, so the sample has the cube's mix of surface brightness and S/N
    (catalogues: every k-th object)."""
    ds = xr.open_zarr(cube, consolidated=False)
    has_truth = (cube / "truth").exists()
    sel, chunks = _sample_selection(ds, n, regions)
    sub = ds.isel(sel).compute()
    enc = {v: {"chunks": chunks, "compressors": cube_compressors()} for v in ("flux", "var", "mask")}
    shutil.rmtree(out, ignore_errors=True)
    sub.to_zarr(out, mode="w", zarr_format=3, consolidated=False, encoding=enc)
    if has_truth:
        truth = (
            xr.open_zarr(cube, group="truth", consolidated=False)
            .isel({k: v for k, v in sel.items() if k in ("y", "x")})
            .compute()
        )
        truth.to_zarr(out, group="truth", mode="a", zarr_format=3, consolidated=False)
    consolidate(out)
    return out


def _sample_selection(ds: xr.Dataset, n: int, regions: int) -> tuple[dict[str, slice], tuple[int, ...]]:
    """The strided selection of about ``n`` spectra of ``ds`` and the chunks giving ``regions`` regions."""
    if "object" in ds["flux"].dims:
        stride = max(1, ds.sizes["object"] // n)
        count = len(range(stride // 2, ds.sizes["object"], stride))
        return {"object": slice(stride // 2, None, stride)}, (max(1, -(-count // regions)), ds.sizes["wave"])
    side = max(1, min(math.ceil(math.sqrt(n)), ds.sizes["y"], ds.sizes["x"]))
    sy, sx = max(1, ds.sizes["y"] // side), max(1, ds.sizes["x"] // side)
    y0 = sy // 2 + (ds.sizes["y"] - sy * side) // 2  # centred: the strided grid leaves a margin on each side
    x0 = sx // 2 + (ds.sizes["x"] - sx * side) // 2
    sel = {"y": slice(y0, y0 + sy * side, sy), "x": slice(x0, x0 + sx * side, sx)}
    block = max(1, -(-side // math.ceil(math.sqrt(regions))))
    return sel, (block, block, ds.sizes["wave"])
