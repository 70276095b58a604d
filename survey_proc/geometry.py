"""Galaxy geometry on the pixel grid: deprojected radius, azimuth, half-light radius (pure NumPy).

Conventions (shared by the mocks and the gradient analysis): pixel (y, x) indices; the position angle
is that of the major axis, measured from +y towards +x, in degrees; inclination 0 = face-on. A thin
disc at inclination i has its minor-axis distances shortened by cos i.
"""

from __future__ import annotations

import numpy as np


def disc_coordinates(
    shape: tuple[int, int], x0: float, y0: float, inclination_deg: float, position_angle_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(deprojected radius, azimuth in the disc plane (rad), major-axis coordinate), each (ny, nx), pixels."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    pa = np.deg2rad(position_angle_deg)
    major = (x - x0) * np.sin(pa) + (y - y0) * np.cos(pa)
    minor = -(x - x0) * np.cos(pa) + (y - y0) * np.sin(pa)
    cos_i = np.cos(np.deg2rad(inclination_deg))
    return np.hypot(major, minor / cos_i), np.arctan2(minor / cos_i, major), major


def half_light_radius(radius: np.ndarray, light: np.ndarray) -> float:
    """Radius enclosing half the summed ``light`` (same units as ``radius``); NaN light is ignored."""
    r, f = np.asarray(radius, np.float64).ravel(), np.asarray(light, np.float64).ravel()
    ok = np.isfinite(r) & np.isfinite(f)
    order = np.argsort(r[ok])
    cum = np.cumsum(f[ok][order])
    return float(r[ok][order][np.searchsorted(cum, 0.5 * cum[-1])])
