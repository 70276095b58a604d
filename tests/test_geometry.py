"""Galaxy geometry on the pixel grid: deprojected radius, azimuth, half-light radius."""

from __future__ import annotations

import numpy as np
import pytest

from survey_proc.geometry import disc_coordinates, half_light_radius


def test_deprojected_radius_of_an_inclined_disc():
    # a point on the minor axis at projected distance d lies at d / cos(i) in the disc plane
    r, _, major = disc_coordinates((41, 41), 20.0, 20.0, 60.0, 90.0)  # major axis along +x
    assert r[20, 30] == pytest.approx(10.0) and major[20, 30] == pytest.approx(10.0)
    assert r[30, 20] == pytest.approx(20.0)
    light = np.exp(-r / 5.0)
    assert half_light_radius(r, light) == pytest.approx(5 * 1.678, rel=0.05)  # exponential disc: R_e = 1.678 h


def test_face_on_disc_and_position_angle_convention():
    r, phi, major = disc_coordinates((11, 11), 5.0, 5.0, 0.0, 0.0)  # face-on, major axis along +y
    assert r[5, 5] == 0.0 and r[5, 8] == pytest.approx(3.0) and r[8, 5] == pytest.approx(3.0)
    assert major[8, 5] == pytest.approx(3.0) and major[5, 8] == pytest.approx(0.0, abs=1e-12)
    assert phi[8, 5] == pytest.approx(0.0) and abs(phi[5, 8]) == pytest.approx(np.pi / 2)


def test_half_light_radius_ignores_nan_light():
    r = np.arange(10.0)
    light = np.ones(10)
    assert half_light_radius(r, light) == 4.0
    light[5:] = np.nan
    assert half_light_radius(r, light) == 2.0
