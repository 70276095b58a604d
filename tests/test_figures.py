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
