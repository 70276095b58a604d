"""Writing figures: one place for the PNG tail every plotting function shares."""

from __future__ import annotations

import os
from pathlib import Path


def save_figure(fig, path: str | os.PathLike, dpi: int = 90, tight: bool = True) -> Path:
    """Lay ``fig`` out (``tight``), write it as PNG to ``path`` at ``dpi`` and free it; returns the path."""
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
