"""Analysis of maps: accuracy against truth, radial gradients, figures."""

from survey_proc.analysis._accuracy import DEFAULT_PROPERTIES, accuracy_vs_truth, plot_maps_vs_truth
from survey_proc.analysis._gradients import (
    DEFAULT_GRADIENT_PROPERTIES,
    Geometry,
    GradientFit,
    compare_gradients,
    geometry_from,
    gradient_report,
    gradients_of,
    linear_fit,
    plot_gradients,
    radial_gradient,
)

__all__ = [
    "DEFAULT_GRADIENT_PROPERTIES", "DEFAULT_PROPERTIES", "Geometry", "GradientFit", "accuracy_vs_truth",
    "compare_gradients", "geometry_from", "gradient_report", "gradients_of", "linear_fit", "plot_gradients",
    "plot_maps_vs_truth", "radial_gradient",
]
