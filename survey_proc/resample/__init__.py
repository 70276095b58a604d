"""Images brought to a model's pixel scale and seeing (``survey-proc resample``): flux-conserving
rebinning and Gaussian PSF matching as separable linear operators, with exact variances."""

from survey_proc.resample._operators import (
    FWHM_SIGMA,
    Resampling,
    gaussian_matrix,
    matching_sigma,
    overlap_matrix,
)
from survey_proc.resample._store import METHOD, Resampled, model_target, resample_store

__all__ = [
    "FWHM_SIGMA",
    "METHOD",
    "Resampled",
    "Resampling",
    "gaussian_matrix",
    "matching_sigma",
    "model_target",
    "overlap_matrix",
    "resample_store",
]
