"""The PNG tail every plotting function shares."""

from __future__ import annotations

import matplotlib.pyplot as plt  # Agg: tests/conftest.py sets MPLBACKEND

from survey_proc.figures import save_figure


def test_save_figure_writes_a_png_and_frees_the_figure(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = save_figure(fig, str(tmp_path / "f.png"), dpi=50)
    assert path == tmp_path / "f.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number)


def test_pyplot_draws_off_screen():
    from survey_proc.figures import pyplot

    assert pyplot() is plt and plt.get_backend().lower() == "agg"


def test_the_quick_look_of_a_fit_shows_chi2_everywhere_and_the_summed_light_fractions():
    """A fit's maps: chi^2 drawn wherever it has a value (its flags come from it), and the light
    fractions over (log age, [M/H]) summed over the unflagged pixels only."""
    import numpy as np
    import xarray as xr

    from survey_proc.analysis._quicklook import quicklook_figure

    ny, nx, age, metal = 3, 4, np.array([8.0, 9.0, 10.0]), np.array([-0.4, 0.0])
    weights = np.zeros((ny, nx, 3, 2), np.float32)
    weights[..., 2, 1] = 1.0  # every pixel old and solar ...
    weights[0, 0] = 0.0
    weights[0, 0, 0, 0] = 1.0  # ... but one, young and poor, which is flagged
    flag = np.zeros((ny, nx), np.uint16)
    flag[0, 0] = 256
    ds = xr.Dataset(
        {
            "log_age": (("y", "x"), np.full((ny, nx), 9.5)),
            "log_age_err": (("y", "x"), np.full((ny, nx), 0.1)),
            "chi2": (("y", "x"), np.full((ny, nx), 1.0)),
            "weights": (("y", "x", "age", "metal"), weights),
            "flag": (("y", "x"), flag),
        },
        coords={"age": age, "metal": metal},
    )
    fig = quicklook_figure(ds)
    titles = {ax.get_title() for ax in fig.axes}
    assert "chi2 (12 of 12 with a value)" in titles and "log_age (11 of 12 unflagged)" in titles
    grid = next(ax for ax in fig.axes if ax.get_title().startswith("light fractions summed over 11"))
    shown = np.asarray(grid.collections[0].get_array()).reshape(2, 3)  # (metal, age)
    assert shown[1, 2] == 1.0 and shown[0, 0] == 0.0
    plt.close(fig)
