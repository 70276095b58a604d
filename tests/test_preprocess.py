"""Preprocessing declared by a manifest: frames, masks, flags, S/N (pure NumPy)."""

from __future__ import annotations

import numpy as np
import pytest

from survey_proc.preprocess import InputSpec, fill_gaps, masked_median, prepare
from survey_proc.stores import Flag

SPEC = InputSpec(
    wave_start=5000.0,
    wave_stop=6000.0,
    wave_step=1.0,
    frame="rest",
    masks_rest=((5400.0, 5410.0),),
    masks_observed=((5577.0, 5580.0),),
)


def test_fill_gaps_interpolates_and_extends():
    v = np.array([[1.0, 0.0, 0.0, 4.0, 0.0], [0.0, 2.0, 0.0, 0.0, 0.0], [0, 0, 0, 0, 0]])
    ok = np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
    np.testing.assert_allclose(fill_gaps(v, ok), [[1, 2, 3, 4, 4], [2, 2, 2, 2, 2], [0, 0, 0, 0, 0]])


def test_masked_median_ignores_bad_entries():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 101))
    good = rng.random((50, 101)) > 0.3
    good[:, :2] = True
    exact = np.array([np.median(r[g]) for r, g in zip(v, good)])
    got = masked_median(v, good)
    # exact up to one rank: compare with neighbouring order statistics
    for r, g, m in zip(v, good, got):
        s = np.sort(r[g])
        k = np.searchsorted(s, m)
        assert abs(k - len(s) / 2) <= 1.0
    assert np.allclose(got, exact, atol=0.2)
    assert np.isnan(masked_median(v[:1], np.zeros((1, 101), bool)))[0]


def _median_by_definition(row, good, width):
    """masked_median's definition: the plain median of the row padded to ``width`` entries, its
    bad entries replaced alternately by -inf and +inf ((width - n_good) // 2 of them at -inf)."""
    vals = np.sort(row[good].astype(np.float64))
    n_bad = width - vals.size
    if vals.size == 0:
        return np.nan
    full = np.concatenate([np.full(n_bad // 2, -np.inf), vals, np.full(n_bad - n_bad // 2, np.inf)])
    mid = width // 2
    return full[mid] if width % 2 else (full[mid - 1] + full[mid]) / 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_masked_median_matches_its_definition_exactly(dtype):
    """Even and odd widths, ties, all-bad columns, rows with few or no good entries."""
    rng = np.random.default_rng(5)
    for _ in range(400):
        n, length = int(rng.integers(1, 6)), int(rng.integers(1, 14))
        v = rng.integers(-3, 4, (n, length)).astype(dtype)
        good = rng.random((n, length)) < rng.uniform(0.0, 1.0)
        good[:, int(rng.integers(0, length))] = False  # a column bad in every row
        width = length + int(rng.integers(0, 3))
        got = masked_median(v, good, width)
        want = [_median_by_definition(r, g, width) for r, g in zip(v, good)]
        np.testing.assert_array_equal(got, np.array(want, got.dtype))


def _spectra(n=4, z=0.05, snr=40.0, rng=None):
    rng = rng or np.random.default_rng(1)
    wave = np.arange(4800.0, 6600.0, 1.25)
    rest = wave / (1 + z)
    flux = 100.0 * (1 + 0.1 * np.sin(rest / 50.0))
    flux = flux - 60.0 * np.exp(-0.5 * ((rest - 5500.0) / 2.0) ** 2)  # a line at 5500 A rest
    flux = np.tile(flux, (n, 1))
    sigma = 100.0 / (snr * np.sqrt(1.25))
    var = np.full_like(flux, sigma**2)
    return wave, flux + rng.normal(0, sigma, flux.shape), var, np.zeros(flux.shape, bool)


def test_rest_frame_grid_puts_lines_at_rest_wavelengths():
    wave, flux, var, mask = _spectra(z=0.05, snr=1e4)
    p = prepare(flux, var, mask, wave, 0.05, SPEC)
    assert p.x.shape == (4, 3, 1001)
    assert np.all(p.flags == 0)
    line = np.argmin(p.x[0, 0])
    assert SPEC.wave[line] == pytest.approx(5500.0, abs=1.0)
    assert np.median(p.x[:, 0]) == pytest.approx(1.0, abs=0.01)  # median-normalised


def test_declared_masks_are_applied_in_their_frames():
    wave, flux, var, mask = _spectra(z=0.05)
    p = prepare(flux, var, mask, wave, 0.05, SPEC)
    m = p.x[0, 2].astype(bool)
    rest = SPEC.wave
    assert m[(rest >= 5400) & (rest <= 5410)].all()
    assert m[(rest * 1.05 >= 5577) & (rest * 1.05 <= 5580)].all()
    assert m.sum() == pytest.approx(11 + 3, abs=2)


def test_snr_per_angstrom_is_measured():
    wave, flux, var, mask = _spectra(snr=25.0, n=200)
    p = prepare(flux, var, mask, wave, 0.05, SPEC)
    assert np.median(p.snr) == pytest.approx(25.0 * np.median(flux) / 100.0, rel=0.05)


def test_flags_for_unusable_spectra():
    wave, flux, var, mask = _spectra(n=5)
    flux[0] = np.nan  # nothing valid
    mask[1, :] = True  # everything masked
    mask[2, 100:1200] = True  # most of the model range masked
    var[3] = -1.0  # negative variance = bad pixels
    p = prepare(flux, var, mask, wave, 0.05, SPEC)
    assert p.flags[0] & Flag.NO_DATA and p.flags[1] & Flag.NO_DATA and p.flags[3] & Flag.NO_DATA
    assert p.flags[2] & Flag.MASKED
    assert p.flags[4] == 0
    assert np.all(np.isfinite(p.x))
    assert list(p.fit) == [False, False, False, False, True]


def test_out_of_range_when_the_data_miss_the_model_grid():
    wave, flux, var, mask = _spectra(n=2)
    p = prepare(flux, var, mask, wave, 0.2, SPEC)  # at z=0.2 the model needs 6000-7200 A observed
    assert np.all(p.flags & Flag.OUT_OF_RANGE)
    p = prepare(flux, var, mask, wave, np.array([0.05, 0.2]), SPEC)  # per-spectrum redshifts
    assert p.flags[0] == 0 and p.flags[1] & Flag.OUT_OF_RANGE


@pytest.mark.parametrize("model", ["default", "muse-7100", "sdss-cnn"])
def test_fused_pass_gives_the_numpy_numbers_bit_for_bit(model):
    """The compiled per-spectrum pass (spectra sharing one grid, or one grid each) against the NumPy path, on MUSE-like
    spectra with NaN and infinite fluxes, zero and infinite variances, masked runs (also from a
    row's start and to its end), rows without any valid pixel and negative fluxes."""
    from survey_proc.estimators import load_manifest
    from survey_proc.preprocess import _fused

    if not _fused.available():
        pytest.skip("numba is not installed")
    spec = load_manifest(model).input
    rng = np.random.default_rng(11)
    wave = np.arange(3800.0, 9350.0, 1.25)
    n = 300
    flux = (100.0 * (1 + 0.1 * np.sin(wave / 80.0)) + rng.normal(0, 3.0, (n, wave.size))).astype(np.float32)
    var = np.full(flux.shape, 9.0, np.float32)
    mask = np.zeros(flux.shape, bool)
    flux[rng.random(flux.shape) < 0.002] = np.nan
    flux[rng.random(flux.shape) < 0.0005] = np.inf
    var[rng.random(flux.shape) < 0.002] = 0.0
    var[rng.random(flux.shape) < 0.0005] = np.inf
    for i in range(0, n, 5):
        start = int(rng.integers(0, wave.size - 300))
        mask[i, start : start + int(rng.integers(1, 300))] = True
    mask[1, :2000] = True
    mask[2, -2500:] = True
    mask[3] = True
    flux[4] = np.nan
    flux[6] = -50.0
    flux[8] = np.where(rng.random(wave.size) < 0.5, -0.0, 0.0)  # zeros of both signs: medians of +0.0
    per_object = np.linspace(0.0, 0.06, n)  # a catalogue: a grid per spectrum (and some out of range)
    for z in (0.008, 0.0, per_object):
        a = prepare(flux, var, mask, wave, z, spec, fused=False)
        b = prepare(flux, var, mask, wave, z, spec, fused=True)
        where = f"{model}, z={'per object' if np.ndim(z) else z}"
        for name in ("x", "flags", "snr", "norm"):
            np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=f"{where}: {name}")
            np.testing.assert_array_equal(np.signbit(getattr(b, name)), np.signbit(getattr(a, name)))  # bits
        assert a.flags[3] and a.flags[4] and not a.flags[0]  # the case has flagged and clean spectra


@pytest.mark.parametrize("model", ["default", "muse-7100", "sdss-cnn"])
def test_compiled_grids_of_per_object_redshifts_are_numpys(model):
    """A grid per spectrum (a catalogue's redshifts, 0-0.35, some beyond the data): the compiled walk
    gives NumPy's columns, weights, masks (rest and observed frame) and coverage exactly."""
    from survey_proc.estimators import load_manifest
    from survey_proc.preprocess import _fused
    from survey_proc.preprocess._prepare import _resampling

    if not _fused.available():
        pytest.skip("numba is not installed")
    spec = load_manifest(model).input
    wave = (
        10 ** np.arange(np.log10(4000), np.log10(9300), 1e-4)
        if spec.frame == "observed"  # misses the blue
        else np.arange(4750.0, 9350.0, 1.25)
    )
    z = np.linspace(0.0, 0.35, 300)
    z[7] = np.nan  # (the engine refuses such a catalogue; the grids still agree)
    a = _resampling(wave, z, z.size, spec, compiled=False)
    b = _resampling(wave, z, z.size, spec, compiled=True)
    assert a.left.shape == (z.size, spec.wave.size) and a.static_bad.any() and (a.coverage < 1).any()
    for name in ("lo", "hi", "width", "left", "right_w", "static_bad", "native", "coverage"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=f"{model}: {name}")


def _median_trial_values(rng, kind: int, shape: tuple[int, int]) -> np.ndarray:
    """Rows for the median test: normal, ties, outliers, signed zeros, heavy tails, constant, overflows."""
    if kind == 0:
        values = rng.normal(100, 5, shape)
    elif kind == 1:
        values = rng.integers(0, 5, shape)  # ties
    elif kind == 2:
        values = np.where(rng.random(shape) < 0.3, 1e30, rng.normal(0, 1, shape))  # outliers
    elif kind == 3:
        values = np.where(rng.random(shape) < 0.5, -0.0, 0.0)  # signed zeros
    elif kind == 4:
        values = rng.standard_cauchy(shape) * 1e3  # heavy tails
    elif kind == 5:
        values = np.full(shape, 7.0)
    else:  # overflows
        values = np.where(rng.random(shape) < 0.2, np.inf * rng.choice([-1, 1], shape), rng.normal(0, 1, shape))
    return values.astype(np.float32)


def test_compiled_medians_are_the_partition_medians():
    """The compiled radix selection gives median_of_filled's numbers on rows with ties, zeros of
    both signs, far outliers, heavy tails, good values that overflowed to -inf or +inf, constant
    rows, rows without good values, odd and even lengths (the values bit for bit; zeros may differ
    in sign only)."""
    from survey_proc.preprocess import _fused, median_of_filled

    if not _fused.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(5)
    for trial in range(240):
        n, k = int(rng.integers(1, 30)), int(rng.integers(1, 400))
        length = k + int(rng.integers(0, 50))
        values = _median_trial_values(rng, trial % 7, (n, k))
        bad = rng.random((n, k)) < rng.random()
        bad[0] = True  # a row without good values keeps NaN
        filled = np.where(bad, np.float32(np.inf), values)
        n_good = (~bad).sum(axis=1)  # good values that are +inf count as good
        want = median_of_filled(filled.copy(), n_good, length, np.full(n, np.nan, np.float32))
        got = np.full(n, np.nan, np.float32)
        _fused.median_rows(filled.copy(), n_good, length, got)
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")
        assert np.isnan(got[0])


def test_no_spectra_give_empty_inputs():
    """A block without spectra (per-object redshifts: an empty array) gives empty model inputs; a
    redshift array of another length than the spectra is refused."""
    empty = np.zeros((0, 4000), np.float32)
    wave = np.linspace(4000.0, 8000.0, 4000)
    for z in (0.01, np.zeros(0)):
        p = prepare(empty, empty, empty.astype(bool), wave, z, SPEC)
        assert p.x.shape == (0, len(SPEC.channels), SPEC.wave.size) and p.flags.shape == (0,)
    three = np.ones((3, 4000), np.float32)
    with pytest.raises(ValueError, match="2 redshifts for 3 spectra"):
        prepare(three, three, three < 0, wave, np.array([0.01, 0.02]), SPEC)
