"""Voronoi binning of a cube to a target S/N (Cappellari & Copin 2003, the ``vorbin`` package).

``survey-proc bin CUBE OUT --target-snr 30`` writes a spectra catalogue (dims ``object, wave``):
one co-added spectrum per bin with its propagated variance, a per-bin ``redshift``, the bin
geometry, and the pixel -> bin map ``bin_id(y, x)`` (-1: spaxel in no bin). ``survey-proc run``
over that catalogue writes per-bin maps and, from ``bin_id``, the same maps on the pixel grid.

S/N is per Angstrom and measured exactly as the engine's ``snr`` map is (median over good pixels,
:func:`survey_proc.preprocess.snr_per_angstrom`), so ``--target-snr 30`` means the S/N a run will
report for the bin. Noise of neighbouring spaxels is taken as independent (no covariance term).

Both passes over the cube go one spatial chunk at a time: memory holds one chunk of the cube plus
the co-added spectra of the bins that cross the chunk being read, whatever the cube's size.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from survey_proc import config
from survey_proc.errors import CubeError, SurveyProcError
from survey_proc.figures import save_figure
from survey_proc.preprocess import masked_median, snr_per_angstrom
from survey_proc.stores import CATALOGUE_DIMS, SPECTRAL_DIM, consolidate, open_spectral_store, stored_chunks, wave_attrs

#: the variable of a binned catalogue mapping each spaxel to its bin (-1: in no bin)
PIXEL_MAP = "bin_id"


@dataclass
class BinConfig:
    """Options of ``survey-proc bin`` (None: the dask.config default ``survey-proc.bin.*``).

    target_snr, min_snr : S/N per Angstrom of a bin, and under which a spaxel is left out.
    wave_range : rest-frame Angstrom (lo, hi) where S/N is measured; None: the whole cube.
    objects_per_chunk : bins per chunk of the catalogue (= per region when it is run).
    """

    target_snr: float | None = None
    min_snr: float | None = None
    wave_range: tuple[float, float] | None = None
    objects_per_chunk: int | None = None
    overwrite: bool = False

    def resolved(self) -> BinConfig:
        get = config.get
        wr = self.wave_range if self.wave_range is not None else get("bin.wave-range")
        return BinConfig(
            target_snr=float(self.target_snr if self.target_snr is not None else get("bin.target-snr")),
            min_snr=float(self.min_snr if self.min_snr is not None else get("bin.min-snr")),
            wave_range=tuple(float(w) for w in wr) if wr else None,
            objects_per_chunk=int(self.objects_per_chunk or get("bin.objects-per-chunk")),
            overwrite=self.overwrite,
        )


def spaxel_signal_noise(
    flux: np.ndarray, var: np.ndarray, mask: np.ndarray, in_window: np.ndarray, step: float
) -> tuple[np.ndarray, np.ndarray]:
    """Signal (median flux) and noise per Angstrom of spectra (n, nwave) inside ``in_window`` (nwave,).

    ``signal / noise`` is :func:`snr_per_angstrom`; spectra without good pixels get NaN.
    """
    with np.errstate(invalid="ignore"):
        good = ~np.asarray(mask, bool) & np.isfinite(flux) & np.isfinite(var) & (var > 0) & in_window[None, :]
    signal = masked_median(np.asarray(flux, np.float64), good)
    snr = snr_per_angstrom(np.asarray(flux, np.float64), np.asarray(var, np.float64), good, step)
    with np.errstate(divide="ignore", invalid="ignore"):
        noise = signal / snr
    return signal, noise


def chunk_blocks(ny: int, nx: int, cy: int, cx: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of the spatial chunks of a cube, row-major."""
    return [(y0, min(y0 + cy, ny), x0, min(x0 + cx, nx)) for y0 in range(0, ny, cy) for x0 in range(0, nx, cx)]


def voronoi_bins(signal: np.ndarray, noise: np.ndarray, target_snr: float, min_snr: float) -> np.ndarray:
    """Bin number (ny, nx) of every spaxel (-1: left out) from Voronoi binning to ``target_snr``.

    Spaxels with no data or S/N below ``min_snr`` are left out. If every spaxel already reaches the
    target, each is its own bin.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = signal / noise
    usable = np.isfinite(snr) & (snr >= min_snr) & (noise > 0) & (signal > 0)
    bin_id = np.full(signal.shape, -1, np.int32)
    yy, xx = np.nonzero(usable)
    if yy.size == 0:
        raise CubeError(f"no spaxel reaches the binning minimum S/N {min_snr:g} per Angstrom: nothing to bin")
    s, n = signal[usable], noise[usable]
    if np.min(s / n) >= target_snr:
        bin_id[usable] = np.arange(yy.size, dtype=np.int32)
        return bin_id
    total = s.sum() / np.sqrt((n**2).sum())
    if total < target_snr:
        raise CubeError(
            f"all {yy.size} usable spaxels together reach S/N {total:.1f} per Angstrom, below "
            f"the target {target_snr:g}: lower --target-snr"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vorbin announces its successor (powerbin) on every call
        try:
            from vorbin.voronoi_2d_binning import voronoi_2d_binning
        except ImportError as exc:
            raise SurveyProcError(
                "survey-proc bin needs the vorbin package, which is not installed (pip install 'survey-proc[binning]')"
            ) from exc
        classe, *_ = voronoi_2d_binning(
            xx.astype(np.float64),
            yy.astype(np.float64),
            s,
            n,
            target_snr,
            cvt=True,
            pixelsize=1.0,
            plot=False,
            quiet=True,
            wvt=False,
        )
    bin_id[usable] = np.asarray(classe, np.int32)
    return bin_id


def order_bins_by_chunk(bin_id: np.ndarray, cy: int, cx: int) -> tuple[np.ndarray, np.ndarray]:
    """Relabel bins so they complete in chunk order; returns (new bin_id, last chunk of each new bin).

    A bin's *last chunk* is the last chunk (row-major) holding one of its spaxels. Numbering bins by
    last chunk, then centroid, makes the bins completed after reading chunk k a contiguous block of
    labels, so the co-added spectra are written in order while only bins crossing the current
    chunk are held in memory.
    """
    ny, nx = bin_id.shape
    yy, xx = np.indices((ny, nx))
    chunk = (yy // cy) * (-(-nx // cx)) + xx // cx
    inside = bin_id >= 0
    labels = bin_id[inside]
    nbins = int(labels.max()) + 1
    last = np.full(nbins, -1, np.int64)
    np.maximum.at(last, labels, chunk[inside])
    npix = np.bincount(labels, minlength=nbins)
    ybar = np.bincount(labels, yy[inside], minlength=nbins) / npix
    xbar = np.bincount(labels, xx[inside], minlength=nbins) / npix
    order = np.lexsort((xbar, ybar, last))
    rank = np.empty(nbins, np.int32)
    rank[order] = np.arange(nbins, dtype=np.int32)
    new = np.where(inside, rank[np.maximum(bin_id, 0)], -1).astype(np.int32)
    return new, last[order]


def coadd(
    flux: np.ndarray, var: np.ndarray, mask: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sums over spectra (m, nwave) sharing a label: (labels, sum flux, sum var, good count) per label.

    Bad pixels (masked, NaN, var <= 0) are left out of the sums and counted out of ``good``.
    """
    with np.errstate(invalid="ignore"):
        good = ~np.asarray(mask, bool) & np.isfinite(flux) & np.isfinite(var) & (var > 0)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    g = good[order]
    f = np.where(g, flux[order], 0.0).astype(np.float64)
    v = np.where(g, var[order], 0.0).astype(np.float64)
    return (
        sorted_labels[starts],
        np.add.reduceat(f, starts, axis=0),
        np.add.reduceat(v, starts, axis=0),
        np.add.reduceat(g.astype(np.int32), starts, axis=0),
    )


def finish_bins(
    sum_flux: np.ndarray, sum_var: np.ndarray, n_good: np.ndarray, npix: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Co-added flux, its variance and mask of bins (k, nwave) of ``npix`` spaxels each.

    Where some spaxels are bad at a wavelength the sum of the good ones is scaled by
    ``npix / n_good`` (variance by its square); a wavelength where fewer than half the spaxels are
    good is masked.
    """
    npix = np.asarray(npix, np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(n_good > 0, npix / n_good, 0.0)
    bad = 2 * n_good < npix
    flux = np.where(bad, np.nan, sum_flux * scale).astype(np.float32)
    var = np.where(bad, np.nan, sum_var * scale**2).astype(np.float32)
    return flux, var, bad


def _read_block(grp: zarr.Group, block: tuple[int, int, int, int]) -> tuple[np.ndarray, ...]:
    y0, y1, x0, x1 = block
    return tuple(np.asarray(grp[v][y0:y1, x0:x1]) for v in ("flux", "var", "mask"))


def measure_snr(
    cube_path: str,
    wave: np.ndarray,
    redshift: float,
    wave_range: tuple[float, float] | None,
    chunks: tuple[int, int],
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Signal and noise per Angstrom (ny, nx) of every spaxel, one chunk at a time."""
    grp = zarr.open_group(cube_path, mode="r")
    rest = wave / (1.0 + redshift) if grp[SPECTRAL_DIM].attrs.get("frame", "observed") == "observed" else wave
    window = np.ones(wave.size, bool) if wave_range is None else (rest >= wave_range[0]) & (rest <= wave_range[1])
    if window.sum() < 2:
        raise CubeError(
            f"{cube_path}: the S/N window {wave_range} (rest frame) holds {int(window.sum())} "
            f"wavelengths of the cube ({rest[0]:.0f}-{rest[-1]:.0f} A rest frame)"
        )
    step = float(np.median(np.diff(wave)))
    signal = np.full(shape, np.nan)
    noise = np.full(shape, np.nan)
    for block in chunk_blocks(*shape, *chunks):
        y0, y1, x0, x1 = block
        flux, var, mask = _read_block(grp, block)
        n = (y1 - y0) * (x1 - x0)
        s, e = spaxel_signal_noise(flux.reshape(n, -1), var.reshape(n, -1), mask.reshape(n, -1), window, step)
        signal[y0:y1, x0:x1] = s.reshape(y1 - y0, x1 - x0)
        noise[y0:y1, x0:x1] = e.reshape(y1 - y0, x1 - x0)
    return signal, noise


def _catalogue_template(
    cube: xr.Dataset, nbins: int, per_chunk: int, bin_id: np.ndarray, geometry: dict[str, np.ndarray], attrs: dict
) -> xr.Dataset:
    """Lazy catalogue Dataset: (object, wave) spectra to be filled, plus the small per-bin arrays."""
    import dask.array as da

    nwave = cube.sizes[SPECTRAL_DIM]
    shape, chunks = (nbins, nwave), (min(per_chunk, nbins), nwave)
    flux_units = cube["flux"].attrs.get("units", "")
    data_vars = {
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
    if "lsf_fwhm" in cube:
        data_vars["lsf_fwhm"] = ((SPECTRAL_DIM,), cube["lsf_fwhm"].values, dict(cube["lsf_fwhm"].attrs))
    coords = {SPECTRAL_DIM: (SPECTRAL_DIM, cube[SPECTRAL_DIM].values, dict(cube[SPECTRAL_DIM].attrs) or wave_attrs())}
    for c in ("ra", "dec"):
        if c in cube.coords and cube[c].dims == ("y", "x"):
            values = np.asarray(cube[c].values, np.float64)
            inside = bin_id >= 0
            mean = np.bincount(bin_id[inside], values[inside], minlength=nbins) / geometry["npix"]
            coords[c] = (
                ("object",),
                mean,
                {**cube[c].attrs, "long_name": f"{cube[c].attrs.get('long_name', c)} of the bin (mean of its spaxels)"},
            )
            coords[f"pixel_{c}"] = (("y", "x"), values, dict(cube[c].attrs))
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def bin_cube(cube_path: str | Path, out: str | Path, cfg: BinConfig | None = None, progress: bool = False) -> dict:
    """Voronoi-bin a cube to ``cfg.target_snr`` and write the catalogue of bins; returns a summary dict."""
    cfg = (cfg or BinConfig()).resolved()
    t0 = time.perf_counter()
    cube_path, out = str(cube_path), str(out)
    cube = open_spectral_store(cube_path)
    if cube["flux"].dims != ("y", "x", SPECTRAL_DIM):
        raise CubeError(
            f"{cube_path} is a spectra catalogue already (dims {cube['flux'].dims}); bin a cube (y, x, wave)"
        )
    if Path(out).exists() and not cfg.overwrite:
        raise CubeError(f"{out} exists; pass --overwrite to replace it")
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    cy, cx = (stored_chunks(cube["flux"]) or (ny, nx, 0))[:2]
    wave = np.asarray(cube[SPECTRAL_DIM].values, np.float64)
    redshift = float(cube.attrs.get("redshift", 0.0))
    signal, noise = measure_snr(cube_path, wave, redshift, cfg.wave_range, (cy, cx), (ny, nx))
    t_snr = time.perf_counter()
    bin_id, last_chunk = order_bins_by_chunk(voronoi_bins(signal, noise, cfg.target_snr, cfg.min_snr), cy, cx)
    t_bins = time.perf_counter()
    inside = bin_id >= 0
    nbins = int(bin_id.max()) + 1
    npix = np.bincount(bin_id[inside], minlength=nbins)
    yy, xx = np.indices((ny, nx))
    s_sum = np.bincount(bin_id[inside], signal[inside], minlength=nbins)
    n_sum = np.bincount(bin_id[inside], noise[inside] ** 2, minlength=nbins)
    geometry = {
        "npix": npix,
        "y": np.bincount(bin_id[inside], yy[inside], minlength=nbins) / npix,
        "x": np.bincount(bin_id[inside], xx[inside], minlength=nbins) / npix,
        "snr": s_sum / np.sqrt(n_sum),
    }
    binning = {
        "method": "Voronoi (Cappellari & Copin 2003)",
        "package": f"vorbin {version('vorbin')}",
        "target_snr": cfg.target_snr,
        "min_snr": cfg.min_snr,
        "snr_definition": "median S/N per Angstrom over good pixels, spaxels independent",
        "wave_range_rest": list(cfg.wave_range) if cfg.wave_range else None,
        "bins": nbins,
        "spaxels_binned": int(inside.sum()),
        "spaxels_left_out": int((~inside).sum()),
    }
    attrs = {
        **{k: v for k, v in cube.attrs.items()},
        "binned_from": str(Path(cube_path).resolve()),
        "binning": json.dumps(binning),
        "pixel_chunks": [int(cy), int(cx)],
        "title": "survey-proc Voronoi-binned spectra",
    }
    per_chunk = int(cfg.objects_per_chunk)
    template = _catalogue_template(cube, nbins, per_chunk, bin_id, geometry, attrs)
    enc = {v: {"chunks": (min(per_chunk, nbins), wave.size)} for v in ("flux", "var", "mask")}
    template.to_zarr(out, mode="w", compute=False, zarr_format=3, consolidated=False, encoding=enc)
    _write_coadded(cube_path, out, bin_id, last_chunk, npix, (cy, cx), progress)
    consolidate(out)
    return {
        "bins": nbins,
        "spaxels": ny * nx,
        "binned": int(inside.sum()),
        "left_out": int((~inside).sum()),
        "single_spaxel_bins": int((npix == 1).sum()),
        "median_bin_snr": float(np.median(geometry["snr"])),
        "max_spaxels_per_bin": int(npix.max()),
        "seconds": time.perf_counter() - t0,
        "seconds_snr": t_snr - t0,
        "seconds_vorbin": t_bins - t_snr,
        "out": out,
        "bin_id": bin_id,
        "geometry": geometry,
    }


def _write_coadded(
    cube_path: str,
    out: str,
    bin_id: np.ndarray,
    last_chunk: np.ndarray,
    npix: np.ndarray,
    chunks: tuple[int, int],
    progress: bool,
) -> None:
    """Second pass: co-add every bin's spectra chunk by chunk and write the finished bins in order."""
    from tqdm import tqdm

    src = zarr.open_group(cube_path, mode="r")
    dst = zarr.open_group(out, mode="r+")
    open_bins: dict[int, list[np.ndarray]] = {}
    written = 0
    blocks = chunk_blocks(*bin_id.shape, *chunks)
    for k, block in enumerate(tqdm(blocks, desc="co-adding", unit="chunk", disable=not progress)):
        y0, y1, x0, x1 = block
        labels = bin_id[y0:y1, x0:x1].ravel()
        keep = labels >= 0
        if keep.any():
            flux, var, mask = (a.reshape(labels.size, -1)[keep] for a in _read_block(src, block))
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
            flux_b, var_b, bad = finish_bins(
                np.stack([d[0] for d in done]),
                np.stack([d[1] for d in done]),
                np.stack([d[2] for d in done]),
                npix[written:stop],
            )
            dst["flux"][written:stop] = flux_b
            dst["var"][written:stop] = var_b
            dst["mask"][written:stop] = bad
            written = stop
    if written != npix.size or open_bins:
        raise RuntimeError(f"binning bookkeeping: {written} of {npix.size} bins written, {len(open_bins)} open")


def plot_bins(info: dict, path: str | Path, title: str = "") -> Path:
    """PNG of the bin map (random colours) and of the expected S/N per bin against radius."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bin_id, geo = info["bin_id"], info["geometry"]
    rng = np.random.default_rng(0)
    colours = rng.permutation(int(bin_id.max()) + 1)
    shown = np.where(bin_id >= 0, colours[np.maximum(bin_id, 0)], np.nan)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    a.imshow(shown, origin="lower", cmap="tab20", interpolation="nearest")
    a.plot(geo["x"], geo["y"], "k+", ms=3)
    a.set(title=f"{info['bins']} bins ({info['left_out']} spaxels left out)", xlabel="x (pixel)", ylabel="y (pixel)")
    cy, cx = (np.asarray(bin_id.shape) - 1) / 2
    b.plot(np.hypot(geo["x"] - cx, geo["y"] - cy), geo["snr"], "o", ms=3)
    b.set(
        xlabel="distance of the bin centroid from the centre (pixel)",
        ylabel="expected S/N per Angstrom",
        title="S/N of the bins",
    )
    if title:
        fig.suptitle(title)
    path = save_figure(fig, path, dpi=100)
    return path
