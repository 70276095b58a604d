"""Training: training sets from the SSP library, architectures, the train loop and bundle export."""

from survey_proc.training._arch import Reconstructor, SpectrumCNN, build, reduced_chi2
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
from survey_proc.training._evaluate import evaluate, heldout_config, write_json
from survey_proc.training._evaluate_bins import evaluate_held_out, format_evaluation, trainset_of
from survey_proc.training._galaxies import GalaxySetConfig, draw_mock_config
from survey_proc.training._inputs import (
    INPUT_PRESETS,
    default_muse_input,
    input_preset,
    muse_rest_4750_7100_input,
    muse_rest_4750_8800_input,
    sdss_observed_input,
    wide_muse_input,
)
from survey_proc.training._photometric import PhotTrainConfig, train_photometric
from survey_proc.training._store import StoredSet, write_trainset
from survey_proc.training._train import TrainConfig, initial_weights, train

__all__ = [
    "CALZETTI_RV",
    "INPUT_PRESETS",
    "INSTRUMENTS",
    "GalaxySetConfig",
    "NoiseFreeSet",
    "PhotTrainConfig",
    "Reconstructor",
    "SpectrumCNN",
    "StoredSet",
    "TrainConfig",
    "TrainsetConfig",
    "apply_edge_table",
    "build",
    "default_muse_input",
    "draw_mock_config",
    "evaluate",
    "evaluate_held_out",
    "fit_edge_table",
    "format_evaluation",
    "heldout_config",
    "initial_weights",
    "input_preset",
    "make_inputs",
    "muse_rest_4750_7100_input",
    "muse_rest_4750_8800_input",
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
