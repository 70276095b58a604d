"""Filter sets: the J-PAS-like design, SDSS ugriz from speclite, subsets and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from survey_proc.ssp import FILTER_SETS, FilterSet, jpas_filters, load_filters


def test_jpas_design():
    jpas = load_filters("jpas")
    assert len(jpas) == 54
    np.testing.assert_allclose(jpas.pivot, 3785 + 100 * np.arange(54), atol=1.0)
    assert np.all(np.abs(jpas.fwhm - 145) <= 1.0)
    j36 = load_filters("jpas36")
    assert len(j36) == 36 and j36.bands[0] == "J3785" and j36.bands[-1] == "J7285"
    assert jpas.in_range(3700, 7000).bands == tuple(f"J{3785 + 100 * k}" for k in range(33))


def test_sdss_curves_come_from_speclite():
    sdss = load_filters("sdss")
    assert sdss.bands == ("u", "g", "r", "i", "z")
    # pivot wavelengths of the Doi et al. (2010) responses through airmass 1.3
    np.testing.assert_allclose(sdss.pivot, [3594, 4701, 6177, 7491, 8946], rtol=0.01)
    assert "Doi" in sdss.provenance["source"]


def test_jpas_bands_have_their_half_power_points_at_the_design_width():
    jpas = jpas_filters((3785.0, 3985.0), step=0.5)
    assert jpas.bands == ("J3785", "J3885", "J3985") and jpas.name == "jpas-subset"
    r = jpas.response[1] / jpas.response[1].max()
    half = jpas.wave[r >= 0.5]
    assert half[0] == pytest.approx(3885 - 72.5, abs=0.5) and half[-1] == pytest.approx(3885 + 72.5, abs=0.5)
    lo, hi = jpas.support[1]
    assert 3885 - 72.5 - 40 < lo < 3885 - 72.5 and 3885 + 72.5 < hi < 3885 + 72.5 + 40  # steep edges
    assert np.all(jpas.response >= 0)


def test_subsets_and_their_errors():
    jpas = load_filters("jpas")
    sub = jpas.select(["J4085", "J3785"])
    assert sub.bands == ("J4085", "J3785") and len(sub) == 2
    np.testing.assert_array_equal(sub.response[1], jpas.response[0])
    with pytest.raises(ValueError, match=r"has no band.*J0001"):
        jpas.select(["J3785", "J0001"])
    with pytest.raises(ValueError, match="no band with a pivot in 100-200 A"):
        jpas.in_range(100, 200)
    with pytest.raises(ValueError, match="unknown filter set 'hst'; known: jpas, jpas36, sdss"):
        load_filters("hst")
    assert set(FILTER_SETS) == {"jpas", "jpas36", "sdss"}


def test_a_filter_set_refuses_responses_of_the_wrong_shape():
    with pytest.raises(ValueError, match="does not match 2 bands x 5 wavelengths"):
        FilterSet("x", ("a", "b"), np.arange(5.0), np.ones((2, 4)))
