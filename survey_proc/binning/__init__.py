"""Spatial binning: Voronoi bins of a cube to a target S/N (vorbin) and maps back on the pixel grid."""

from survey_proc.binning._catalogue import BinnedCube, bin_cube, bin_geometry, plot_bins
from survey_proc.binning._pixels import PIXEL_GROUP, write_pixel_maps
from survey_proc.binning._voronoi import (
    PIXEL_MAP,
    BinConfig,
    chunk_blocks,
    coadd,
    covariance_factor,
    finish_bins,
    measure_snr,
    order_bins_by_chunk,
    read_block,
    spaxel_signal_noise,
    voronoi_bins,
)

__all__ = [
    "PIXEL_GROUP",
    "PIXEL_MAP",
    "BinConfig",
    "BinnedCube",
    "bin_cube",
    "bin_geometry",
    "chunk_blocks",
    "coadd",
    "covariance_factor",
    "finish_bins",
    "measure_snr",
    "order_bins_by_chunk",
    "plot_bins",
    "read_block",
    "spaxel_signal_noise",
    "voronoi_bins",
    "write_pixel_maps",
]
