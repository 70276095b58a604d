"""Training: training sets from the SSP library, architectures, the trainers and bundle export.

Every trainer is a :class:`Trainer` (data, network, the shared epoch loop :func:`fit`, calibrate,
export, evaluate): :class:`SpectrumTrainer` (:func:`train`) for spectra, :class:`SEDTrainer` and
:class:`ImageTrainer` (:func:`train_photometric`) for photometry.
"""

from survey_proc.training._arch import Reconstructor, SpectrumCNN, build, reduced_chi2
from survey_proc.training._calibration import Calibration, error_scale, novelty_stats
from survey_proc.training._dataset import (
    CALZETTI_RV,
    INSTRUMENTS,
    NoiseFreeSet,
    TrainsetConfig,
    make_inputs,
    observe_noisy,
    synthesise,
    trainset_from_record,
)
from survey_proc.training._edges import apply_edge_table, fit_edge_table, noise_level
from survey_proc.training._evaluate import evaluate, heldout_config, predict_noisy, write_json
from survey_proc.training._evaluate_bins import evaluate_held_out, format_evaluation, trainset_of
from survey_proc.training._fit import (
    EpochRecord,
    FitOptions,
    FitState,
    Objective,
    Trainer,
    fit,
    load_checkpoint,
)
from survey_proc.training._galaxies import GalaxySetConfig, draw_configs, draw_mock_config, synthesise_galaxies
from survey_proc.training._image import ImageTrainer
from survey_proc.training._inputs import (
    INPUT_PRESETS,
    default_muse_input,
    input_preset,
    muse_rest_4750_7100_input,
    muse_rest_4750_8800_input,
    sdss_observed_input,
    wide_muse_input,
)
from survey_proc.training._phot_evaluate import evaluate_photometric, format_photometric
from survey_proc.training._phot_trainer import PhotometricTrainer, PhotTrainConfig
from survey_proc.training._photometric import train_photometric
from survey_proc.training._reexport import reexport_bundle, rewrap
from survey_proc.training._sed import SEDTrainer
from survey_proc.training._store import StoredSet, write_trainset
from survey_proc.training._train import SpectrumTrainer, TrainConfig, initial_weights, train

__all__ = [
    "CALZETTI_RV",
    "INPUT_PRESETS",
    "INSTRUMENTS",
    "Calibration",
    "EpochRecord",
    "FitOptions",
    "FitState",
    "GalaxySetConfig",
    "ImageTrainer",
    "NoiseFreeSet",
    "Objective",
    "PhotTrainConfig",
    "PhotometricTrainer",
    "Reconstructor",
    "SEDTrainer",
    "SpectrumCNN",
    "SpectrumTrainer",
    "StoredSet",
    "TrainConfig",
    "Trainer",
    "TrainsetConfig",
    "apply_edge_table",
    "build",
    "default_muse_input",
    "draw_configs",
    "draw_mock_config",
    "error_scale",
    "evaluate",
    "evaluate_held_out",
    "evaluate_photometric",
    "fit",
    "fit_edge_table",
    "format_evaluation",
    "format_photometric",
    "heldout_config",
    "initial_weights",
    "input_preset",
    "load_checkpoint",
    "make_inputs",
    "muse_rest_4750_7100_input",
    "muse_rest_4750_8800_input",
    "noise_level",
    "novelty_stats",
    "observe_noisy",
    "predict_noisy",
    "reduced_chi2",
    "reexport_bundle",
    "rewrap",
    "sdss_observed_input",
    "synthesise",
    "synthesise_galaxies",
    "train",
    "train_photometric",
    "trainset_from_record",
    "trainset_of",
    "wide_muse_input",
    "write_json",
    "write_trainset",
]
