"""The E-MILES library: its grid and tables, subsets, identity, and how a missing library is reported."""

from __future__ import annotations

import numpy as np
import pytest

from survey_proc import ssp
from survey_proc.errors import DataUnavailableError


def test_library_grid_and_tables(ssp_lib):
    assert ssp_lib.flux.shape[:2] == (6, 25)
    assert ssp_lib.n_templates == 150
    np.testing.assert_allclose(ssp_lib.metal, [-1.71, -1.31, -0.71, -0.40, 0.0, 0.22])
    np.testing.assert_allclose(10 ** ssp_lib.log_age[[0, -1]] / 1e9, [0.0631, 15.8489], rtol=1e-3)
    assert ssp_lib.step == pytest.approx(0.9)
    assert ssp_lib.wave[0] <= 2600 and ssp_lib.wave[-1] >= 10400
    # stellar + remnant mass per unit initial mass: below 1, decreasing with age
    assert np.all((ssp_lib.mass > 0.4) & (ssp_lib.mass < 1.0))
    assert np.all(np.diff(ssp_lib.mass, axis=1) < 0.01)
    # old populations are fainter per unit mass in the optical than young ones
    light = ssp_lib.light_in_window()
    assert np.all(light[:, 0] > 10 * light[:, -1])
    assert "sha256" in ssp_lib.provenance or "cache" in ssp_lib.provenance


def test_supplied_folder_with_missing_files_says_how(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DataUnavailableError, match=r"expected 150.*SURVEY_PROC_SSP_DIR"):
        ssp.load_ssp_library(tmp_path)
    with pytest.raises(DataUnavailableError, match="does not exist"):
        ssp.load_ssp_library(tmp_path / "absent")


def test_crop_and_digest(ssp_lib):
    cropped = ssp_lib.crop(4750.0, 5000.0)
    assert cropped.wave[0] >= 4750.0 and cropped.wave[-1] <= 5000.0
    assert cropped.flux.shape == (*ssp_lib.flux.shape[:2], cropped.wave.size)
    assert cropped.flux.flags.c_contiguous and cropped.step == pytest.approx(ssp_lib.step)
    assert cropped.digest() != ssp_lib.digest() and ssp_lib.digest() == ssp_lib.digest()
    assert len(ssp_lib.digest()) == 16
    with pytest.raises(ValueError, match="not 60000-70000 A"):
        ssp_lib.crop(60000.0, 70000.0)


def test_light_in_window_is_per_population(ssp_lib):
    light = ssp_lib.light_in_window()
    assert light.shape == ssp_lib.flux.shape[:2] and np.all(light > 0)
    sel = (ssp_lib.wave >= 5070.0) & (ssp_lib.wave <= 5950.0)
    assert light[2, 3] == pytest.approx(ssp_lib.flux[2, 3, sel].mean())
