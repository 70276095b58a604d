"""Spatial binning: Voronoi bins of a cube to a target S/N (vorbin) and maps back on the pixel grid."""

from survey_proc.binning._pixels import PIXEL_GROUP, write_pixel_maps
from survey_proc.binning._voronoi import (
    PIXEL_MAP,
    BinConfig,
    bin_cube,
    coadd,
    finish_bins,
    order_bins_by_chunk,
    plot_bins,
    spaxel_signal_noise,
    voronoi_bins,
)

__all__ = [
    "PIXEL_GROUP",
    "PIXEL_MAP",
    "BinConfig",
    "bin_cube",
    "coadd",
    "finish_bins",
    "order_bins_by_chunk",
    "plot_bins",
    "spaxel_signal_noise",
    "voronoi_bins",
    "write_pixel_maps",
]
