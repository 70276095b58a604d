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
