"""Analysis of maps: accuracy against truth, figures."""

from survey_proc.analysis._accuracy import DEFAULT_PROPERTIES, accuracy_vs_truth, plot_maps_vs_truth

__all__ = ["DEFAULT_PROPERTIES", "accuracy_vs_truth", "plot_maps_vs_truth"]
