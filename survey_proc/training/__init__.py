"""Training: training sets from the SSP library, architectures, the train loop and bundle export."""

from survey_proc.training._arch import Reconstructor, SpectrumCNN, build, reduced_chi2
from survey_proc.training._dataset import (
    CALZETTI_RV,
    INSTRUMENTS,
    TrainsetConfig,
    default_muse_input,
    make_inputs,
    observe_noisy,
    sdss_observed_input,
    synthesise,
    trainset_from_record,
    wide_muse_input,
    write_trainset,
)
from survey_proc.training._edges import apply_edge_table, fit_edge_table, noise_level
from survey_proc.training._evaluate import evaluate, heldout_config, write_json
from survey_proc.training._evaluate_bins import evaluate_held_out, trainset_of
from survey_proc.training._galaxies import GalaxySetConfig, draw_mock_config
from survey_proc.training._photometric import PhotTrainConfig, train_photometric
from survey_proc.training._train import INPUT_PRESETS, TrainConfig, initial_weights, train

__all__ = [
    "CALZETTI_RV",
    "INPUT_PRESETS",
    "INSTRUMENTS",
    "GalaxySetConfig",
    "PhotTrainConfig",
    "Reconstructor",
    "SpectrumCNN",
    "TrainConfig",
    "TrainsetConfig",
    "apply_edge_table",
    "build",
    "default_muse_input",
    "draw_mock_config",
    "evaluate",
    "evaluate_held_out",
    "fit_edge_table",
    "heldout_config",
    "initial_weights",
    "make_inputs",
    "noise_level",
    "observe_noisy",
    "reduced_chi2",
    "sdss_observed_input",
    "synthesise",
    "train",
    "train_photometric",
    "trainset_from_record",
    "trainset_of",
    "wide_muse_input",
    "write_json",
    "write_trainset",
]
