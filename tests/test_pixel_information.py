"""The per-pixel yardstick of `ugriz-maps` (benchmarks/pixel_information.py): a small run writes its
record, and the scoring counts the pixels `survey-proc evaluate` would."""

from __future__ import annotations

import json

import numpy as np
import torch

from benchmarks.pixel_information import TARGETS, VARIANTS, features, main, score, sfr_only


def test_features_are_colours_errors_and_the_redshift_when_asked():
    flux = np.full((1, 2, 2, 5), 100.0, np.float32)
    flux[..., 0] = 10.0  # u one dex below r
    x = features(flux, np.full_like(flux, 4.0), np.array([0.02]), with_z=True)
    assert x.shape == (1, 2, 2, 11)
    assert np.allclose(x[..., 0], 2.0) and np.allclose(x[..., 1], -1.0) and np.allclose(x[..., 2:5], 0.0)
    assert np.allclose(x[..., 5], 0.6) and np.allclose(x[..., 6:], np.log10(2.0) - 2.0)
    assert np.allclose(features(flux, np.full_like(flux, 4.0), np.array([0.02]), with_z=False)[..., 5], 0.0)
    raw = features(flux, np.full_like(flux, 4.0), np.array([0.02]), True, "asinh")
    colours = features(flux, np.full_like(flux, 4.0), np.array([0.02]), True, "colour")
    assert raw.shape == colours.shape == (1, 2, 2, 16) and np.allclose(raw[..., 15], 0.6)
    assert np.allclose(colours[..., 0], raw[..., 0] - raw[..., 2]) and np.allclose(colours[..., 2], raw[..., 2])
    assert np.allclose(colours[..., 5], raw[..., 5] - raw[..., 0])  # error minus flux: an inverse S/N


def test_context_features_add_the_galaxy_and_the_neighbourhood():
    flux = np.full((2, 8, 8, 5), 100.0, np.float32)
    flux[1] *= 10.0  # a brighter galaxy ...
    flux[1, :, :, 0] = 100.0  # ... one dex redder in u - r
    flux[0, 4, 4, 2] = 1000.0  # one bright r pixel
    var, z = np.full_like(flux, 4.0), np.array([0.02, 0.02])
    base = features(flux, var, z, True)
    galaxy = features(flux, var, z, True, "log+galaxy")
    local = features(flux, var, z, True, "log+local")
    assert galaxy.shape == local.shape == (2, 8, 8, 16) and np.array_equal(galaxy[..., :11], base)
    assert np.allclose(galaxy[1, ..., 12], -1.0) and np.allclose(galaxy[0, ..., 12], galaxy[0, 0, 0, 12])
    assert galaxy[1, 0, 0, 11] - galaxy[0, 0, 0, 11] > 0.9  # the galaxy's total r, one dex brighter
    assert local[0, 4, 4, 11] < -0.5 and abs(local[0, 0, 0, 11]) < 0.05  # the bright pixel stands out of its
    assert np.allclose(local[1, ..., 11:], [0.0, -1.0, 0.0, 0.0, 0.0], atol=1e-5)  # surroundings; flat: nothing


class _Constant(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 2), self.value)


def test_sfr_is_scored_only_above_twice_the_floor():
    class _Data:  # what score() reads of a GalaxySet
        flux = np.full((1, 4, 4, 5), 1e4, np.float32)
        var = np.ones((1, 4, 4, 5), np.float32)
        redshift = np.array([0.01])
        labels = np.zeros((1, 4, 4, 2), np.float32)

    data = _Data()
    data.labels[..., 1] = -3.5  # quiescent: at the floor
    data.labels[0, 0, :, 1] = -2.0  # four star-forming pixels
    out = score(_Constant(0.0), -2.0, 1.0, data, 1, "log_sfr_surface_density", False, True, 0)
    assert out["n"] == 4 and out["bias"] == 0.0 and out["robust_sigma"] == 0.0
    out = score(_Constant(0.0), 0.5, 1.0, data, 0, "log_mass_surface_density", True, True, 0)
    assert out["n"] == 16 and abs(out["bias"] - 0.5) < 1e-6


def test_a_small_run_writes_json_markdown_and_png(tmp_path):
    path = tmp_path / "pi.json"
    report = main(["--train", "6", "--test", "2", "--epochs", "1", "--seeds", "0", "1", "--json", str(path)])
    assert json.loads(path.read_text())["rows"] == report["rows"]
    assert path.with_suffix(".md").exists() and path.with_suffix(".png").stat().st_size > 0
    asked = {(t, v[0]) for t in TARGETS for v in VARIANTS if not sfr_only(v) or t == "log_sfr_surface_density"}
    assert {(r["target"], r["variant"]) for r in report["rows"]} == asked
    assert len(report["rows"]) == 2 * len(asked) and {r["mlp_seed"] for r in report["rows"]} == {0, 1}
    assert all(r["n"] > 0 and np.isfinite(r["robust_sigma"]) for r in report["rows"])
