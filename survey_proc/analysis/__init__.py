"""Analysis of maps: accuracy against truth, comparison of two runs, radial gradients, figures.

Every result is a record (a dataclass) whose ``to_json()`` gives the JSON the commands write.
"""

from survey_proc.analysis._accuracy import (
    DEFAULT_PROPERTIES,
    Accuracy,
    PropertyAccuracy,
    accuracy_vs_truth,
    plot_maps_vs_truth,
)
from survey_proc.analysis._compare import (
    COMPARED,
    Comparison,
    DifferenceStats,
    RunningDifference,
    compare_maps,
    compare_stores,
    difference_stats,
    good_pixels,
    pearson,
    plot_comparison,
    running_difference,
)
from survey_proc.analysis._gradients import (
    DEFAULT_GRADIENT_PROPERTIES,
    Geometry,
    GradientComparison,
    GradientDifference,
    GradientFit,
    GradientOptions,
    GradientReport,
    compare_gradients,
    geometry_from,
    gradient_report,
    gradients_of,
    linear_fit,
    plot_gradients,
    radial_gradient,
)

__all__ = [
    "COMPARED",
    "DEFAULT_GRADIENT_PROPERTIES",
    "DEFAULT_PROPERTIES",
    "Accuracy",
    "Comparison",
    "DifferenceStats",
    "Geometry",
    "GradientComparison",
    "GradientDifference",
    "GradientFit",
    "GradientOptions",
    "GradientReport",
    "PropertyAccuracy",
    "RunningDifference",
    "accuracy_vs_truth",
    "compare_gradients",
    "compare_maps",
    "compare_stores",
    "difference_stats",
    "geometry_from",
    "good_pixels",
    "gradient_report",
    "gradients_of",
    "linear_fit",
    "pearson",
    "plot_comparison",
    "plot_gradients",
    "plot_maps_vs_truth",
    "radial_gradient",
    "running_difference",
]
