"""Writing figures: matplotlib set up for files, and the PNG tail every plotting function shares.

matplotlib is imported on first use only (it is slow to import and only the plotting paths need it).
"""

from __future__ import annotations

import os
from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend: figures go to files, never to a screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 90, tight: bool = True) -> Path:
    """Lay ``fig`` out (``tight``), write it as PNG to ``path`` at ``dpi`` and free it; returns the path."""
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


#: the colour of pixels without a value (masked, not fitted), distinct from every colour of the
#: diverging and sequential maps (white is zero in a difference map)
NO_VALUE = "#5a5a5a"
#: the colour of pixels whose estimate exists but is flagged (low S/N, unlike the training set)
FLAGGED = "#c8c8c8"


def colormap(name: str, bad: str = NO_VALUE):
    """A copy of matplotlib colormap ``name`` that draws NaN (masked) pixels in ``bad``, not in the
    background's white (the colour of zero in a diverging map)."""
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=bad)
