"""Preprocessing declared by a model's manifest: data -> the model's input tensor (pure NumPy).

The engine and the training-set generator call the same code, so a model sees at run time exactly
the kind of input it was trained on. A manifest's ``input.kind`` picks a spec class from
:data:`INPUT_KINDS` (:class:`InputSpec` for spectra, :class:`SEDInputSpec` and
:class:`ImageInputSpec` for photometry); every spec is an :class:`InputKind`, whose hooks are all
the engine calls. :func:`prepare` turns spectra into a spectral model's input, through NumPy or
the compiled passes of ``_fused`` (Numba), to the same bits.
"""

from survey_proc.preprocess._bands import BandKind, ImageInputSpec, SEDInputSpec, band_flags, band_snr, select_bands
from survey_proc.preprocess._covariance import batch_error_inflation, error_inflation, resampling_covariance
from survey_proc.preprocess._kinds import BatchMeta, InputKind, Prepared
from survey_proc.preprocess._lines import STRONG_LINES, LineMask
from survey_proc.preprocess._numeric import fill_gaps, in_ranges, masked_median, median_of_filled, snr_per_angstrom
from survey_proc.preprocess._prepare import KNOWN_CHANNELS, NORMALISATIONS, normalisation, prepare
from survey_proc.preprocess._registry import INPUT_KINDS, input_spec
from survey_proc.preprocess._spectrum import LSF_TOLERANCE_KMS, InputSpec, estimator_meta

__all__ = [
    "INPUT_KINDS",
    "KNOWN_CHANNELS",
    "LSF_TOLERANCE_KMS",
    "NORMALISATIONS",
    "STRONG_LINES",
    "BandKind",
    "BatchMeta",
    "ImageInputSpec",
    "InputKind",
    "InputSpec",
    "LineMask",
    "Prepared",
    "SEDInputSpec",
    "band_flags",
    "band_snr",
    "batch_error_inflation",
    "error_inflation",
    "estimator_meta",
    "fill_gaps",
    "in_ranges",
    "input_spec",
    "masked_median",
    "median_of_filled",
    "normalisation",
    "prepare",
    "resampling_covariance",
    "select_bands",
    "snr_per_angstrom",
]
