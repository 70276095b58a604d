"""Analysis of maps: accuracy against truth, comparison of two runs, figures."""

from survey_proc.analysis._accuracy import DEFAULT_PROPERTIES, accuracy_vs_truth, plot_maps_vs_truth
from survey_proc.analysis._compare import (
    COMPARED,
    Comparison,
    compare_maps,
    compare_stores,
    difference_stats,
    pearson,
    plot_comparison,
    running_difference,
)

__all__ = [
    "COMPARED", "Comparison", "DEFAULT_PROPERTIES", "accuracy_vs_truth", "compare_maps", "compare_stores",
    "difference_stats", "pearson", "plot_comparison", "plot_maps_vs_truth", "running_difference",
]
