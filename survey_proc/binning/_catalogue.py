"""``survey-proc bin``: a cube's Voronoi bins written as a spectra catalogue, region by region.

``survey-proc bin CUBE OUT --target-snr 30`` writes a spectra catalogue (dims ``object, wave``):
one co-added spectrum per bin with its propagated variance, a per-bin ``redshift``, the bin
geometry, and the pixel -> bin map ``bin_id(y, x)`` (-1: spaxel in no bin). ``survey-proc run``
over that catalogue writes per-bin maps and, from ``bin_id``, the same maps on the pixel grid.

Both passes over the cube go one spatial chunk at a time: memory holds one chunk of the cube plus
the co-added spectra of the bins that cross the chunk being read, and of the catalogue region being
filled, whatever the cube's size. The catalogue is written through the stores' region write path
(:func:`~survey_proc.stores.staged_output`, :func:`~survey_proc.stores.begin_store`,
:func:`~survey_proc.stores.commit_region`, :func:`~survey_proc.stores.finish_store`): a region (a
chunk of bins) is committed, verified, as soon as its last bin is co-added; the store appears at
``OUT`` only once complete, and a binning cut short resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from survey_proc import progress
from survey_proc.binning._voronoi import (
    PIXEL_MAP,
    BinConfig,
    chunk_blocks,
    coadd,
    finish_bins,
    measure_snr,
    order_bins_by_chunk,
    read_block,
    voronoi_bins,
)
from survey_proc.errors import CubeError
from survey_proc.figures import save_figure
from survey_proc.stores import (
    CATALOGUE_DIMS,
    FINGERPRINT_ATTR,
    SIGNATURE_ATTR,
    SPECTRAL_DIM,
    STORE_MARKER,
    Region,
    begin_store,
    check_output,
    commit_region,
    content_fingerprint,
    finish_store,
    make_regions,
    open_spectral_store,
    pending_regions,
    run_signature,
    staged_output,
    stored_chunks,
    wave_attrs,
    with_region_arrays,
)

#: the arrays each region of a binned catalogue writes
_NAMES = ("flux", "var", "mask")


@dataclass(frozen=True)
class BinnedCube:
    """What :func:`bin_cube` wrote (and the bins, for :func:`plot_bins`)."""

    out: str
    bins: int
    spaxels: int
    binned: int
    left_out: int
    single_spaxel_bins: int
    median_bin_snr: float
    max_spaxels_per_bin: int
    seconds: float
    seconds_snr: float
    seconds_vorbin: float
    bin_id: np.ndarray  #: (y, x) bin of each spaxel, -1: in no bin
    geometry: dict[str, np.ndarray]  #: per bin: ``npix``, centroid ``y``, ``x``, expected ``snr``


def bin_cube(cube_path: str | Path, out: str | Path, cfg: BinConfig | None = None) -> BinnedCube:
    """Voronoi-bin a cube to ``cfg.target_snr`` and write the catalogue of bins at ``out``."""
    cfg = (cfg or BinConfig()).resolved()
    cfg.check()
    t0 = time.perf_counter()
    cube_path, out = str(cube_path), str(out)
    cube = open_spectral_store(cube_path)
    if cube["flux"].dims != ("y", "x", SPECTRAL_DIM):
        raise CubeError(
            f"{cube_path} is a spectra catalogue already (dims {cube['flux'].dims}); bin a cube (y, x, wave)"
        )
    check_output(out, [cube_path], replace=cfg.overwrite, what="catalogue of bins")  # before the S/N pass
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    cy, cx = (stored_chunks(cube["flux"]) or (ny, nx, 0))[:2]
    wave = np.asarray(cube[SPECTRAL_DIM].values, np.float64)
    signal, noise = measure_snr(
        cube_path, wave, float(cube.attrs.get("redshift", 0.0)), cfg.wave_range, (cy, cx), (ny, nx)
    )
    t_snr = time.perf_counter()
    bin_id, last_chunk = order_bins_by_chunk(
        voronoi_bins(signal, noise, cfg.target_snr, cfg.min_snr, cfg.covariance_alpha), cy, cx
    )
    t_bins = time.perf_counter()
    geometry = bin_geometry(bin_id, signal, noise)
    template = _catalogue_template(cube, cfg, bin_id, geometry, _attrs(cube, cube_path, cfg, bin_id, (cy, cx)))
    nbins, per_chunk = geometry["npix"].size, min(int(cfg.objects_per_chunk), geometry["npix"].size)
    sizes, chunks = {"object": nbins}, {"object": per_chunk}
    regions = make_regions(sizes, chunks)
    signature = run_signature({"cube": content_fingerprint(cube_path), "binning": template.attrs["binning"]})
    with staged_output(out, inputs=[cube_path], replace=cfg.overwrite, what="catalogue of bins") as staging:
        resumed = begin_store(staging, with_region_arrays(template, sizes, chunks, _NAMES), signature, "catalogue")
        pending = {r.key for r in (pending_regions(staging, regions) if resumed else regions)}
        writer = _RegionWriter(str(staging), regions, pending)
        _write_coadded(cube_path, writer, bin_id, last_chunk, geometry["npix"], (cy, cx), cfg.covariance_alpha)
        finish_store(staging, regions, _NAMES, writer.written)
    npix = geometry["npix"]
    inside = int((bin_id >= 0).sum())
    return BinnedCube(
        out=out,
        bins=nbins,
        spaxels=ny * nx,
        binned=inside,
        left_out=ny * nx - inside,
        single_spaxel_bins=int((npix == 1).sum()),
        median_bin_snr=float(np.median(geometry["snr"])),
        max_spaxels_per_bin=int(npix.max()),
        seconds=time.perf_counter() - t0,
        seconds_snr=t_snr - t0,
        seconds_vorbin=t_bins - t_snr,
        bin_id=bin_id,
        geometry=geometry,
    )


def bin_geometry(bin_id: np.ndarray, signal: np.ndarray, noise: np.ndarray) -> dict[str, np.ndarray]:
    """Per bin: spaxels ``npix``, centroid ``y`` and ``x``, and the ``snr`` expected from its spaxels."""
    inside = bin_id >= 0
    nbins = int(bin_id.max()) + 1
    npix = np.bincount(bin_id[inside], minlength=nbins)
    yy, xx = np.indices(bin_id.shape)
    s_sum = np.bincount(bin_id[inside], signal[inside], minlength=nbins)
    n_sum = np.bincount(bin_id[inside], noise[inside] ** 2, minlength=nbins)
    return {
        "npix": npix,
        "y": np.bincount(bin_id[inside], yy[inside], minlength=nbins) / npix,
        "x": np.bincount(bin_id[inside], xx[inside], minlength=nbins) / npix,
        "snr": s_sum / np.sqrt(n_sum),
    }


def _attrs(cube: xr.Dataset, cube_path: str, cfg: BinConfig, bin_id: np.ndarray, chunks: tuple[int, int]) -> dict:
    """The catalogue's attributes: the cube's (less its store bookkeeping), and how it was binned."""
    inside = bin_id >= 0
    binning = {
        "method": "Voronoi (Cappellari & Copin 2003)",
        "package": f"vorbin {version('vorbin')}",
        "target_snr": cfg.target_snr,
        "min_snr": cfg.min_snr,
        "snr_definition": "median S/N per Angstrom over good pixels, "
        + (
            f"noise of N spaxels x (1 + {cfg.covariance_alpha:g} log10 N) (correlated spaxels)"
            if cfg.covariance_alpha
            else "spaxels independent"
        ),
        "covariance_alpha": cfg.covariance_alpha,
        "wave_range_rest": list(cfg.wave_range) if cfg.wave_range else None,
        "bins": int(bin_id.max()) + 1,
        "spaxels_binned": int(inside.sum()),
        "spaxels_left_out": int((~inside).sum()),
    }
    own = (STORE_MARKER, SIGNATURE_ATTR, FINGERPRINT_ATTR)
    return {
        **{k: v for k, v in cube.attrs.items() if k not in own},
        "binned_from": str(Path(cube_path).resolve()),
        "binning": json.dumps(binning),
        "pixel_chunks": [int(c) for c in chunks],
        "title": "survey-proc Voronoi-binned spectra",
    }


def _catalogue_template(
    cube: xr.Dataset, cfg: BinConfig, bin_id: np.ndarray, geometry: dict[str, np.ndarray], attrs: dict
) -> xr.Dataset:
    """Lazy catalogue Dataset: (object, wave) spectra to be filled, plus the small per-bin arrays."""
    nbins, nwave = geometry["npix"].size, cube.sizes[SPECTRAL_DIM]
    chunks = (min(int(cfg.objects_per_chunk), nbins), nwave)
    data_vars = {**_spectra(cube, (nbins, nwave), chunks), **_per_bin(cube, bin_id, geometry)}
    if "lsf_fwhm" in cube:
        data_vars["lsf_fwhm"] = ((SPECTRAL_DIM,), cube["lsf_fwhm"].values, dict(cube["lsf_fwhm"].attrs))
    coords = {SPECTRAL_DIM: (SPECTRAL_DIM, cube[SPECTRAL_DIM].values, dict(cube[SPECTRAL_DIM].attrs) or wave_attrs())}
    coords.update(_sky_coords(cube, bin_id, geometry["npix"]))
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    for v in _NAMES:
        ds[v].encoding["chunks"] = chunks
    return ds


def _spectra(cube: xr.Dataset, shape: tuple[int, int], chunks: tuple[int, int]) -> dict[str, tuple]:
    import dask.array as da

    flux_units = cube["flux"].attrs.get("units", "")
    return {
        "flux": (
            CATALOGUE_DIMS,
            da.full(shape, np.nan, dtype=np.float32, chunks=chunks),
            {"units": flux_units, "long_name": "co-added flux density of the bin"},
        ),
        "var": (
            CATALOGUE_DIMS,
            da.full(shape, np.nan, dtype=np.float32, chunks=chunks),
            {
                "units": cube["var"].attrs.get("units", f"({flux_units})**2"),
                "long_name": "variance of the co-added flux (propagated, spaxels independent)",
            },
        ),
        "mask": (
            CATALOGUE_DIMS,
            da.ones(shape, dtype=bool, chunks=chunks),
            {"long_name": "bad pixel (True = fewer than half the bin's spaxels are good)"},
        ),
    }


def _per_bin(cube: xr.Dataset, bin_id: np.ndarray, geometry: dict[str, np.ndarray]) -> dict[str, tuple]:
    nbins = geometry["npix"].size
    return {
        "redshift": (
            ("object",),
            np.full(nbins, float(cube.attrs.get("redshift", 0.0))),
            {"units": "1", "long_name": "redshift (the cube's systemic redshift)"},
        ),
        "bin_npix": (("object",), geometry["npix"].astype(np.int32), {"units": "1", "long_name": "spaxels in the bin"}),
        "bin_y": (("object",), geometry["y"], {"units": "pixel", "long_name": "centroid row of the bin"}),
        "bin_x": (("object",), geometry["x"], {"units": "pixel", "long_name": "centroid column of the bin"}),
        "bin_snr": (
            ("object",),
            geometry["snr"].astype(np.float32),
            {"units": "1", "long_name": "S/N per Angstrom of the bin expected from its spaxels"},
        ),
        PIXEL_MAP: (("y", "x"), bin_id, {"units": "1", "long_name": "bin of each spaxel (-1: in no bin)"}),
    }


def _sky_coords(cube: xr.Dataset, bin_id: np.ndarray, npix: np.ndarray) -> dict[str, tuple]:
    """``ra``, ``dec`` of each bin (mean of its spaxels) and of each spaxel (``pixel_ra``, ``pixel_dec``)."""
    coords = {}
    inside = bin_id >= 0
    for c in ("ra", "dec"):
        if c in cube.coords and cube[c].dims == ("y", "x"):
            values = np.asarray(cube[c].values, np.float64)
            mean = np.bincount(bin_id[inside], values[inside], minlength=npix.size) / npix
            name = cube[c].attrs.get("long_name", c)
            coords[c] = (("object",), mean, {**cube[c].attrs, "long_name": f"{name} of the bin (mean of its spaxels)"})
            coords[f"pixel_{c}"] = (("y", "x"), values, dict(cube[c].attrs))
    return coords


class _RegionWriter:
    """Takes finished bins in order and commits each region of the catalogue once its last bin is in."""

    def __init__(self, path: str, regions: list[Region], pending: set[str]) -> None:
        self.path, self.regions, self.pending = path, regions, pending
        self.next = 0  #: the first region not yet committed (or skipped)
        self.parts: list[tuple[np.ndarray, ...]] = []  #: finished bins of that region, in order
        self.written: dict[str, int] = {}

    def add(self, flux: np.ndarray, var: np.ndarray, bad: np.ndarray, stop: int) -> None:
        """Bins up to ``stop`` (exclusive) are finished; these are the latest of them."""
        self.parts.append((flux, var, bad))
        while self.next < len(self.regions) and self.regions[self.next].slices[0][2] <= stop:
            self._commit(self.regions[self.next])
            self.next += 1

    def _commit(self, region: Region) -> None:
        _, start, stop = region.slices[0]
        held = [np.concatenate([p[i] for p in self.parts]) for i in range(3)]  # bins from ``start`` on
        arrays = dict(zip(_NAMES, (a[: stop - start] for a in held)))
        rest = tuple(a[stop - start :] for a in held)
        self.parts = [rest] if len(rest[0]) else []
        if region.key in self.pending:
            self.written[region.key] = commit_region(self.path, region, arrays)


def _write_coadded(
    cube_path: str,
    writer: _RegionWriter,
    bin_id: np.ndarray,
    last_chunk: np.ndarray,
    npix: np.ndarray,
    chunks: tuple[int, int],
    alpha: float = 0.0,
) -> None:
    """Second pass: co-add every bin's spectra chunk by chunk and hand the finished bins on in order
    (variances grown by the covariance factor of ``alpha``)."""
    src = zarr.open_group(cube_path, mode="r")
    open_bins: dict[int, list[np.ndarray]] = {}
    written = 0
    blocks = chunk_blocks(*bin_id.shape, *chunks)
    for k, block in enumerate(progress.track(blocks, "co-adding", unit="chunk")):
        y0, y1, x0, x1 = block
        labels = bin_id[y0:y1, x0:x1].ravel()
        keep = labels >= 0
        if keep.any():
            flux, var, mask = (a.reshape(labels.size, -1)[keep] for a in read_block(src, block))
            for label, f, v, g in zip(*coadd(flux, var, mask, labels[keep])):
                acc = open_bins.get(int(label))
                if acc is None:
                    open_bins[int(label)] = [f, v, g]
                else:
                    acc[0] += f
                    acc[1] += v
                    acc[2] += g
        stop = int(np.searchsorted(last_chunk, k, side="right"))
        if stop > written:
            done = [open_bins.pop(b) for b in range(written, stop)]
            writer.add(
                *finish_bins(
                    np.stack([d[0] for d in done]),
                    np.stack([d[1] for d in done]),
                    np.stack([d[2] for d in done]),
                    npix[written:stop],
                    alpha,
                ),
                stop,
            )
            written = stop
    if written != npix.size or open_bins or writer.next != len(writer.regions):
        raise RuntimeError(f"binning bookkeeping: {written} of {npix.size} bins written, {len(open_bins)} open")


def plot_bins(info: BinnedCube, path: str | Path, title: str = "") -> Path:
    """PNG of the bin map (random colours) and of the expected S/N per bin against radius."""
    from survey_proc.figures import pyplot

    plt = pyplot()
    bin_id, geo = info.bin_id, info.geometry
    rng = np.random.default_rng(0)
    colours = rng.permutation(int(bin_id.max()) + 1)
    shown = np.where(bin_id >= 0, colours[np.maximum(bin_id, 0)], np.nan)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    a.imshow(shown, origin="lower", cmap="tab20", interpolation="nearest")
    a.plot(geo["x"], geo["y"], "k+", ms=3)
    a.set(title=f"{info.bins} bins ({info.left_out} spaxels left out)", xlabel="x (pixel)", ylabel="y (pixel)")
    cy, cx = (np.asarray(bin_id.shape) - 1) / 2
    b.plot(np.hypot(geo["x"] - cx, geo["y"] - cy), geo["snr"], "o", ms=3)
    b.set(
        xlabel="distance of the bin centroid from the centre (pixel)",
        ylabel="expected S/N per Angstrom",
        title="S/N of the bins",
    )
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=100)
