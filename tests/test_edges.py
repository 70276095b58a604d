"""Edge de-shrinkage: inverting the calibration curve removes the pull towards the middle of the grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from survey_proc.training import apply_edge_table, fit_edge_table


def _shrinking_estimator(n: int, seed: int):
    """Truths uniform on [0, 1]; a posterior-mean-like estimate: noisy, clipped and pulled inwards
    near the edges, more so when the uncertainty is larger."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(0.0, 1.0, n)
    err = rng.choice([0.03, 0.08], n)
    pulled = 0.5 + (true - 0.5) * (1.0 - 2.0 * err)  # shrink towards the middle
    pred = np.clip(pulled + rng.normal(0.0, err), 0.0, 1.0)
    return pred, true, err


def _apply(table, pred, err, noise=None):
    """The table inverted; here the noise level is the uncertainty itself (as in the toy estimator)."""
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    est, e = apply_edge_table(
        t(pred),
        t(err),
        t(err if noise is None else noise),
        t(table.noise),
        t(table.true),
        t(table.table),
        t(table.factors()),
    )
    return est.numpy().astype(np.float64), e.numpy().astype(np.float64)


def test_inverted_table_removes_the_edge_bias_on_new_data():
    table = fit_edge_table(*_shrinking_estimator(60000, 0), 0.0, 1.0)
    pred, true, err = _shrinking_estimator(40000, 1)  # new draws: not the calibration set
    est, est_err = _apply(table, pred, err)
    for sel in (true < 0.1, true > 0.9):
        raw_bias = abs(np.median(pred[sel] - true[sel]))
        assert raw_bias > 0.03  # the estimator is biased at the edges ...
        assert abs(np.median(est[sel] - true[sel])) < 0.3 * raw_bias  # ... the corrected one far less
    middle = (true > 0.3) & (true < 0.7)
    assert abs(np.median(est[middle] - true[middle])) < 0.01
    # uncertainties scale with the slope of the inverse: still about 68 % coverage
    assert 0.6 < np.mean(np.abs(est - true) <= est_err) < 0.8
    # rows are increasing with bounded slope, so the inverse amplifies noise at most 3x
    steps = np.diff(table.table, axis=1)
    assert (steps >= (table.true[1] - table.true[0]) / 3.0 - 1e-12).all()


def test_identity_estimator_is_left_alone_and_beyond_the_table_slope_is_one():
    rng = np.random.default_rng(2)  # one noise level: a single row
    true = rng.uniform(0.0, 1.0, 30000)
    err = np.full(true.size, 0.01)
    table = fit_edge_table(true + rng.normal(0, 0.01, true.size), true, err, 0.0, 1.0)
    probe = np.array([0.2, 0.5, 0.8, 1.3, -0.4])
    est, e = _apply(table, probe, np.full(probe.size, 0.01))
    np.testing.assert_allclose(est[:3], probe[:3], atol=0.01)
    np.testing.assert_allclose(est[3:], probe[3:], atol=0.02)  # shifted, not stretched, beyond the grid
    np.testing.assert_allclose(e[3:], 0.01, rtol=1e-6)


def test_too_few_calibration_spectra_is_a_clear_error():
    with pytest.raises(ValueError, match="too few"):
        fit_edge_table(np.zeros(100), np.zeros(100), np.ones(100), 0.0, 1.0)


def test_a_flat_stretch_at_one_edge_does_not_shift_the_middle():
    """A curve that is flat near the low edge is stretched there, not lifted everywhere."""
    rng = np.random.default_rng(3)
    true = rng.uniform(0.0, 1.0, 60000)
    err = np.full(true.size, 0.02)
    pred = np.maximum(true, 0.25) + rng.normal(0, 0.005, true.size)  # no information below 0.25
    table = fit_edge_table(pred, true, err, 0.0, 1.0)
    est, _ = _apply(table, np.array([0.4, 0.5, 0.6, 0.9]), np.full(4, 0.02))
    np.testing.assert_allclose(est, [0.4, 0.5, 0.6, 0.9], atol=0.01)


def test_noise_level_is_one_over_the_median_snr_of_unmasked_pixels():
    from survey_proc.training import noise_level

    x = torch.zeros(3, 3, 100)
    x[:, 0] = 1.0
    x[0, 1] = 0.1  # S/N 10 everywhere
    x[1, 1] = 0.05  # S/N 20 ...
    x[1, 1, :60] = 0.0  # ... except 60 pixels without an error (excluded)
    x[1, 2, 60:70] = 1.0  # and 10 masked ones (excluded)
    noise = noise_level(x, 0, 1, 2)
    np.testing.assert_allclose(noise[:2].numpy(), [0.1, 0.05], rtol=1e-6)
    assert torch.isinf(noise[2])  # no usable pixel


def test_rows_below_min_snr_are_left_alone():
    pred, true, err = _shrinking_estimator(60000, 4)
    snr = 1.0 / err  # 33 and 12.5
    table = fit_edge_table(pred, true, err, 0.0, 1.0, snr=snr, min_snr=20.0)  # corrects the err 0.03 row only
    assert table.noise.tolist() == pytest.approx([0.03, 0.08])
    np.testing.assert_allclose(table.table[1], table.true)
    assert np.abs(table.table[0] - table.true).max() > 0.02  # a 6 % pull at the edges
    est, _ = _apply(table, np.array([0.1, 0.9]), np.full(2, 0.08))
    np.testing.assert_allclose(est, [0.1, 0.9], atol=1e-6)


def test_noise_in_the_middle_of_the_grid_is_not_turned_into_a_correction():
    """An unbiased estimator with few spectra per cell: the table stays (close to) the identity,
    and the slopes that scale the uncertainties do not jump from cell to cell."""
    rng = np.random.default_rng(5)
    true = rng.uniform(0.0, 1.0, 1200)  # 50 spectra per cell
    err = np.full(true.size, 0.1)
    table = fit_edge_table(true + rng.normal(0, 0.1, true.size), true, err, 0.0, 1.0, n_err=1, min_count=5)
    assert np.abs(table.table[0] - table.true).max() < 0.035
    # cell medians themselves would give slopes above 2.6 here (60 seeds tried: all of them)
    slopes = np.diff(table.true) / np.diff(table.table[0])
    assert slopes.min() > 0.6 and slopes.max() < 2.3


def test_non_finite_predictions_pass_through():
    table = fit_edge_table(*_shrinking_estimator(60000, 6), 0.0, 1.0)
    est, e = _apply(table, np.array([np.nan, np.inf, 0.5]), np.array([0.05, 0.05, 0.05]))
    assert np.isnan(est[0]) and np.isinf(est[1]) and np.isfinite(est[2]) and np.isfinite(e).all()


def test_the_shipped_model_is_less_biased_at_the_grid_edges_with_its_tables(ssp_lib):
    """Held-out-like spectra at S/N 30 (seeds of their own), the shipped muse-7100 TorchScript file run
    with its edge tables and with them switched off: the edge biases shrink, the scatter barely moves.
    (The default, on rest 4750-8800 A, is hardly shrunk at the edges and is exported without tables.)"""
    import dataclasses

    from survey_proc.estimators import read_manifest, resolve_model
    from survey_proc.training import heldout_config, make_inputs, synthesise, trainset_from_record

    manifest = read_manifest(resolve_model("muse-7100"))
    tcfg = trainset_from_record(manifest.raw["training"]["config"]["trainset"])
    module = torch.jit.load(str(manifest.file))
    assert module.edge_index.numel() == 2
    xs, truths = [], []
    for k, family in enumerate(("ssp", "csfh")):
        cfg = heldout_config(tcfg, family, 600, 9_100_003 + k)
        data = synthesise(cfg, ssp_lib, manifest.input)
        data = dataclasses.replace(data, snr=np.full(len(data), 30.0))
        x, flags, _ = make_inputs(data, np.random.default_rng(k), cfg, manifest.input)
        xs.append(x[flags == 0])
        truths.append(data.labels[flags == 0])
    x, truth = torch.from_numpy(np.concatenate(xs)), np.concatenate(truths)
    with torch.inference_mode():
        on = module(x)
        module.edge_index = torch.zeros(0, dtype=torch.long)
        off = module(x)
    total = {"on": 0.0, "off": 0.0}
    for i, (name, lo, hi) in enumerate(
        (("log_age", ssp_lib.log_age[0], ssp_lib.log_age[-1]), ("metallicity", ssp_lib.metal[0], ssp_lib.metal[-1]))
    ):
        t = truth[:, i]
        edges = [t <= lo + 0.15 * (hi - lo), t >= hi - 0.15 * (hi - lo)]
        for key, out in (("on", on), ("off", off)):
            bias = sum(abs(float(np.median(out[name].numpy()[e] - t[e]))) for e in edges)
            total[key] += bias
        mad = {k: float(np.median(np.abs(out[name].numpy() - t))) for k, out in (("on", on), ("off", off))}
        assert mad["on"] < 1.15 * mad["off"], (name, mad)
    # the four edge biases (|median| at both ends of age and [M/H]) together: roughly halved
    assert total["on"] < 0.7 * total["off"], total


def test_uncertainties_are_calibrated_per_noise_row():
    """Given the predicted uncertainties, each row gets a factor so that 68 % of its spectra fall
    inside the corrected uncertainty; here the toy's errors are 1.5x too large in the noisy row."""
    pred, true, err = _shrinking_estimator(60000, 7)
    claimed = np.where(err > 0.05, 1.5 * err, err)
    table = fit_edge_table(pred, true, err, 0.0, 1.0, err=claimed)
    assert table.factors()[1] == pytest.approx(1 / 1.5, rel=0.1)
    test_pred, test_true, test_err = _shrinking_estimator(40000, 8)
    test_claimed = np.where(test_err > 0.05, 1.5 * test_err, test_err)
    est, est_err = _apply(table, test_pred, test_claimed, noise=test_err)
    for level in (0.03, 0.08):
        sel = test_err == level
        assert 0.64 < np.mean(np.abs(est[sel] - test_true[sel]) <= est_err[sel]) < 0.72
