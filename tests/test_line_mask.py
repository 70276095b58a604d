"""Bands holding strong nebular lines left out of a per-pixel photometric model (preprocess._lines)."""

from __future__ import annotations

import numpy as np

from survey_proc.preprocess import STRONG_LINES, LineMask, SEDInputSpec
from survey_proc.ssp import load_filters
from survey_proc.stores import Flag


def _jpas36():
    f = load_filters("jpas36")
    return f, LineMask.of_filters(f.wave, f.response)


def test_the_bands_holding_a_line_move_with_the_redshift():
    f, lm = _jpas36()
    hit = lm.hit(np.array([0.0, 0.02]), 2)
    assert hit.shape == (2, len(f.bands)) and 6 <= hit.sum(axis=1).min() <= hit.sum(axis=1).max() <= 9
    names = [{b for b, h in zip(f.bands, row) if h} for row in hit]
    # H-alpha at rest lies in J6585; at z = 0.02 (6694 A) in J6685, and J6585 is free of lines
    assert "J6585" in names[0] and "J6585" not in names[1] and "J6685" in names[1]
    assert not names[0] & {"J5485", "J5585", "J5685", "J5785", "J5885"}  # no strong line there
    for i, z in enumerate((0.0, 0.02)):
        for line in STRONG_LINES:  # every line falls in a masked band where a band covers it well
            inside = [b for b, (lo, hi) in zip(f.bands, lm.band_edges) if lo <= line * (1 + z) <= hi]
            assert set(inside) <= names[i]
    np.testing.assert_array_equal(lm.hit(0.02, 3), np.repeat(hit[1:], 3, axis=0))  # one z for all rows


def test_a_spec_masks_them_without_counting_them_as_bad_data():
    f, lm = _jpas36()
    spec = SEDInputSpec(bands=f.bands, max_masked_fraction=0.1, line_mask=lm)
    assert SEDInputSpec.from_manifest(spec.to_manifest()) == spec  # the manifest keeps it
    n, nb = 2, len(f.bands)
    flux = np.linspace(1.0, 2.0, nb)[None, :].repeat(n, axis=0).astype(np.float32)
    var, mask = np.full_like(flux, 1e-4), np.zeros((n, nb), bool)
    prep = spec.prepare_batch(flux, var, mask, f.bands, np.array([0.0, 0.02]))
    lines = lm.hit(np.array([0.0, 0.02]), n)
    np.testing.assert_array_equal(prep.x[:, 2] == 1.0, lines)  # the mask channel says which
    assert (prep.flags & int(Flag.MASKED)).sum() == 0  # ~20 % of the bands, yet not "masked" (max 10 %)
    for i in range(n):  # their fluxes are filled in from the neighbours, as for any masked band
        norm = np.median(flux[i, ~lines[i]])
        np.testing.assert_allclose(prep.x[i, 0, lines[i]], flux[i, lines[i]] / norm, rtol=0.05)
    plain = SEDInputSpec(bands=f.bands, max_masked_fraction=0.1)
    assert not (plain.prepare_batch(flux, var, mask, f.bands, 0.0).x[:, 2] == 1.0).any()
    mask[:, :5] = True  # real bad data still counts: 5 of 36 bands is 14 % > 10 %
    assert (spec.prepare_batch(flux, var, mask, f.bands, 0.0).flags & int(Flag.MASKED)).all()
