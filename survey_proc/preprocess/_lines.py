"""Bands left out where strong nebular lines fall (a per-pixel photometric model's ``line_mask``).

Narrow bands (J-PAS: ~145 Angstrom wide) that hold a bright emission line measure the gas as much as
the stars, and real galaxies' lines ([OII], [OIII], [NII], [SII] against the Balmer lines) vary far
more than any mock's fixed ratios: a model that learned the mock's lines reads a real galaxy's as
populations. As pPXF masks the gas lines of a spectrum, a model whose manifest declares a
``line_mask`` never sees the bands that hold one at the spectrum's redshift: they are masked (the
mask channel says so and the flux is interpolated from the neighbours), in training and in every run
alike, and they do not count towards ``max_masked_fraction``::

    "line_mask": {"lines": [3727.4, 4861.3, ...],        # rest wavelengths, Angstrom
                  "band_edges": [[3710.0, 3858.0], ...],  # per band: where its response is >= level x its peak
                  "level": 0.3}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the strong optical nebular lines (air, Angstrom): [OII]3726+3729, H-beta, [OIII]4959, 5007,
#: [NII]6548, H-alpha, [NII]6583, [SII]6716, 6731. The weaker Balmer lines (H-gamma, H-delta) are
#: left in: their absorption is a stellar-age feature and their emission a few per cent of H-alpha's.
STRONG_LINES = (3727.4, 4861.3, 4958.9, 5006.8, 6548.1, 6562.8, 6583.5, 6716.4, 6730.8)
#: a band "holds" a line where its response there is at least this share of its peak
RESPONSE_LEVEL = 0.3


@dataclass(frozen=True)
class LineMask:
    """Per band, the observed wavelengths over which a line at ``lines`` x (1 + z) masks it."""

    lines: tuple[float, ...]
    band_edges: tuple[tuple[float, float], ...]
    level: float = RESPONSE_LEVEL

    @classmethod
    def of_filters(
        cls,
        wave: np.ndarray,
        response: np.ndarray,
        lines: Sequence[float] = STRONG_LINES,
        level: float = RESPONSE_LEVEL,
    ) -> LineMask:
        """From filter curves ``response`` (nband, nwave) on ``wave`` (Angstrom)."""
        edges = []
        for r in np.asarray(response, np.float64):
            above = np.flatnonzero(r >= level * r.max())
            edges.append((float(wave[above[0]]), float(wave[above[-1]])))
        return cls(tuple(float(x) for x in lines), tuple(edges), float(level))

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any] | None) -> LineMask | None:
        if not section:
            return None
        edges = tuple((float(lo), float(hi)) for lo, hi in section["band_edges"])
        return cls(tuple(float(x) for x in section["lines"]), edges, float(section.get("level", RESPONSE_LEVEL)))

    def to_manifest(self) -> dict[str, Any]:
        return {
            "lines": list(self.lines),
            "band_edges": [list(e) for e in self.band_edges],
            "level": self.level,
            "meaning": "bands holding a strong nebular line at the spectrum's redshift are masked, in training "
            "and in every run (not counted towards max_masked_fraction)",
        }

    def hit(self, redshift: float | np.ndarray, n: int) -> np.ndarray:
        """(n, nband) bool: the bands holding a line at each row's redshift (one z, or one per row)."""
        z = np.broadcast_to(np.asarray(redshift, np.float64).reshape(-1), (n,))
        observed = np.asarray(self.lines)[None, :] * (1.0 + z[:, None])  # (n, nline)
        edges = np.asarray(self.band_edges)  # (nband, 2)
        inside = (observed[:, None, :] >= edges[None, :, :1]) & (observed[:, None, :] <= edges[None, :, 1:])
        return inside.any(axis=2)
