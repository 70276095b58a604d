"""The training code end to end at toy size: synthesise, train, calibrate, export, run the bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from survey_proc.training._dataset import TrainsetConfig, default_muse_input, make_inputs, synthesise
from survey_proc.training._train import TrainConfig, train


def test_training_set_labels_cover_the_grid(ssp_lib):
    cfg = TrainsetConfig(n=3000, seed=5, batch=1000)
    data = synthesise(cfg, ssp_lib, default_muse_input())
    la, mh = data.labels[:, 0], data.labels[:, 1]
    # not one Gaussian blob: the age-[M/H] plane is covered to its edges
    assert la.min() < 8.0 and la.max() > 10.1
    assert mh.min() < -1.6 and mh.max() > 0.2
    hist, _, _ = np.histogram2d(la, mh, bins=4)
    assert (hist > 0).all()
    x, flags, snr = make_inputs(data, np.random.default_rng(0), cfg, default_muse_input())
    assert x.shape == (3000, 3, 1881) and np.isfinite(x).all()
    # measured S/N follows the drawn S/N
    ok = data.snr < 200
    assert np.median(snr[ok] / data.snr[ok]) == pytest.approx(1.0, abs=0.1)


def test_train_export_and_run(tmp_path, mock16):
    from survey_proc.engine import RunConfig, run
    from survey_proc.estimators import load_estimator

    cfg = TrainConfig(name="toy", trainset=TrainsetConfig(n=1024, batch=512, seed=3), n_val=256, n_test=256,
                      epochs=2, chunk=512, test_snr=(30.0,), arch_kwargs={"widths": (8, 8, 8, 8, 8)}, threads=1)
    bundle = train(cfg, tmp_path / "run", progress=False)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["estimator"] == "torchscript" and manifest["input"]["frame"] == "rest"
    assert manifest["training"]["trainset_hash"] and manifest["training"]["epochs_run"] == 2
    held = manifest["metrics"]["held_out"]["30"]
    assert held["n"] > 200 and set(held) >= {"log_age", "metallicity", "av", "sigma"}
    assert 0.0 <= held["log_age"]["coverage_68"] <= 1.0
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    # a resumed run with the same config trains no further and exports the same weights
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["epoch"] == 2
    est = load_estimator(bundle)
    out = est.predict(np.zeros((3, 3, 1881), np.float32))
    assert out["log_age"].shape == (3,) and np.all(out["log_age_err"] > 0) and "ood_score" in out
    # the engine runs it unchanged
    summary = run(RunConfig(cube=str(mock16), out=str(tmp_path / "m.zarr"), model=str(bundle),
                            cluster="none", progress=False))
    assert summary.verified and summary.spectra == 256
    assert np.isfinite(xr.open_zarr(tmp_path / "m.zarr").log_age.values).mean() > 0.9
