"""The model inputs a training config can name: rest- or observed-frame grids, masks, normalisation.

A config's ``input`` is a key of :data:`INPUT_PRESETS`; its function returns the
:class:`~survey_proc.preprocess.InputSpec` that the manifest records and the engine prepares data to.
A new input is a function here and an entry in the registry; the engine needs no change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from survey_proc.preprocess import InputSpec

#: rest-frame windows (Angstrom) masked around nebular lines, wide enough for +-400 km/s and
#: the lines' own width (after GalProTE, Anwar et al. 2025, Table 2)
EMISSION_MASKS_REST = (
    (4846.0, 4877.0),
    (4944.0, 4974.0),
    (4992.0, 5022.0),
    (5189.0, 5210.0),
    (5866.0, 5886.0),
    (6285.0, 6316.0),
    (6350.0, 6380.0),
    (6530.0, 6600.0),
    (6700.0, 6747.0),
)
#: observed-frame windows masked around the strongest sky lines (Angstrom)
SKY_MASKS_OBSERVED = ((5570.0, 5585.0), (5885.0, 5900.0), (6295.0, 6306.0), (6358.0, 6369.0), (6860.0, 6868.0))

#: rest-frame lines beyond 7100 A masked by the 4750-8800 A input ([Ar III] 7136, [O II] 7320/7330)
EMISSION_MASKS_REST_RED = ((7126.0, 7146.0), (7310.0, 7340.0))
#: observed-frame sky lines and telluric bands of the red half of MUSE's range (Angstrom)
SKY_MASKS_OBSERVED_RED = (
    (6865.0, 6935.0),
    (7334.0, 7348.0),
    (7590.0, 7700.0),
    (8338.0, 8351.0),
    (8393.0, 8406.0),
    (8821.0, 8834.0),
    (8879.0, 8893.0),
    (8913.0, 8926.0),
)

#: sky-line windows masked in SDSS spectra (observed frame, vacuum Angstrom: [OI]5577, NaD,
#: [OI]6300, [OI]6363, the strongest residuals of the SDSS sky subtraction)
SDSS_SKY_MASKS_VACUUM = ((5572.0, 5586.0), (5885.0, 5904.0), (6295.0, 6310.0), (6359.0, 6373.0))


def muse_rest_4750_7100_input() -> InputSpec:
    """MUSE rest frame 4750-7100 A at 1.25 A (1881 pixels): the input of ``muse-7100``, of the rebuilding
    networks (``muse-mix-recon-k5-distil`` is the fallback for cubes beyond z = 0.062, which the
    4750-8800 A input cannot cover) and of the GalProTE-style model."""
    return InputSpec(
        wave_start=4750.0,
        wave_stop=7100.0,
        wave_step=1.25,
        frame="rest",
        medium="air",
        channels=("flux", "error", "mask"),
        normalise="median",
        masks_rest=EMISSION_MASKS_REST,
        masks_observed=SKY_MASKS_OBSERVED,
        max_masked_fraction=0.5,
        min_coverage=0.99,
        lsf="MUSE, Bacon et al. (2017) eq. 8, in the observed frame",
    )


def muse_rest_4750_8800_input() -> InputSpec:
    """MUSE rest frame 4750-8800 A at 1.25 A (3241 pixels), the input of the default model: the red
    half of MUSE's range adds the dust lever arm and the Ca triplet; it needs z <= 0.062 for MUSE's
    9350 A red end. Telluric bands and the red sky lines are masked in the observed frame."""
    return dataclasses.replace(
        muse_rest_4750_7100_input(),
        wave_stop=8800.0,
        masks_rest=EMISSION_MASKS_REST + EMISSION_MASKS_REST_RED,
        masks_observed=SKY_MASKS_OBSERVED + SKY_MASKS_OBSERVED_RED,
    )


def sdss_observed_input() -> InputSpec:
    """The input of SDSS-like models (after Wang et al. 2024): observed frame 3800-8900 A
    (vacuum) at 1 A (5101 pixels), normalised by the median in 4950-5050 A, no de-redshifting;
    strong sky-line residuals masked."""
    return InputSpec(
        wave_start=3800.0,
        wave_stop=8900.0,
        wave_step=1.0,
        frame="observed",
        medium="vacuum",
        channels=("flux", "error", "mask"),
        normalise="window",
        normalise_window=(4950.0, 5050.0),
        masks_observed=SDSS_SKY_MASKS_VACUUM,
        max_masked_fraction=0.5,
        min_coverage=0.99,
        lsf="SDSS, R ~ 1800-2700 (ssp.sdss_lsf_fwhm), observed frame",
    )


#: the names a training config's ``input`` may take (recorded in manifests as ``training.config.input``)
INPUT_PRESETS: dict[str, Callable[[], InputSpec]] = {
    "muse-rest-4750-7100": muse_rest_4750_7100_input,
    "muse-rest-4750-8800": muse_rest_4750_8800_input,
    "sdss-observed-3800-8900": sdss_observed_input,
}

#: the functions' former names, from when the 4750-7100 A input was the default's and the
#: 4750-8800 A one "wide" (a word the model ``muse-cnn-wide`` uses for its stem): kept for users' code
default_muse_input = muse_rest_4750_7100_input
wide_muse_input = muse_rest_4750_8800_input


def input_preset(name: str) -> InputSpec:
    """The input spec of a preset name (:data:`INPUT_PRESETS`); an unknown name is a ``ValueError``."""
    if name not in INPUT_PRESETS:
        raise ValueError(f"unknown input preset {name!r}; known: {', '.join(INPUT_PRESETS)}")
    return INPUT_PRESETS[name]()
