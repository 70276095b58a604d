"""The training code end to end at toy size: synthesise, train, calibrate, export, run the bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import toy_train_config

from survey_proc.training import (
    TrainConfig,
    TrainsetConfig,
    load_checkpoint,
    make_inputs,
    muse_rest_4750_7100_input,
    synthesise,
    train,
)


def test_training_set_labels_cover_the_grid(ssp_lib):
    cfg = TrainsetConfig(n=3000, seed=5, batch=1000)
    data = synthesise(cfg, ssp_lib, muse_rest_4750_7100_input())
    la, mh = data.labels[:, 0], data.labels[:, 1]
    # not one Gaussian blob: the age-[M/H] plane is covered to its edges
    assert la.min() < 8.0 and la.max() > 10.1
    assert mh.min() < -1.6 and mh.max() > 0.2
    hist, _, _ = np.histogram2d(la, mh, bins=4)
    assert (hist > 0).all()
    x, _flags, snr = make_inputs(data, np.random.default_rng(0), cfg, muse_rest_4750_7100_input())
    assert x.shape == (3000, 3, 1881) and np.isfinite(x).all()
    # measured S/N follows the drawn S/N
    ok = data.snr < 200
    assert np.median(snr[ok] / data.snr[ok]) == pytest.approx(1.0, abs=0.1)


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    return train(toy_train_config(), out), out


def test_train_export_and_run(toy_bundle, tmp_path, mock16):
    from survey_proc.engine import RunConfig, run
    from survey_proc.estimators import load_estimator

    bundle, run_dir = toy_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["estimator"] == "torchscript" and manifest["input"]["frame"] == "rest"
    assert manifest["training"]["trainset_hash"] and manifest["training"]["epochs_run"] == 2
    assert manifest["training"]["config"]["arch_kwargs"]["activation"] == "relu"
    held = manifest["metrics"]["held_out"]
    assert set(held["by_family"]) == {"ssp", "csfh"}
    m30 = held["snr"]["30"]["model"]
    assert m30["n"] >= 180 and set(m30) >= {"log_age", "metallicity", "av", "sigma"}
    assert 0.0 <= m30["log_age"]["coverage_68"] <= 1.0 and "bias_high_edge" in m30["log_age"]
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    assert (run_dir / "heldout_predicted_vs_true.png").stat().st_size > 1000
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["state"]["epoch"] == 2
    est = load_estimator(bundle)
    out = est.predict(np.zeros((3, 3, 1881), np.float32))
    assert out["log_age"].shape == (3,) and np.all(out["log_age_err"] > 0) and "ood_score" in out
    # the engine runs it unchanged
    summary = run(
        RunConfig(cube=str(mock16), out=str(tmp_path / "m.zarr"), model=str(bundle), cluster="none", progress=False)
    )
    assert summary.verified and summary.spectra == 256
    assert np.isfinite(xr.open_zarr(tmp_path / "m.zarr").log_age.values).mean() > 0.9


def test_spectrum_cnn_activations():
    from survey_proc.training import SpectrumCNN

    relu = SpectrumCNN(3, 400, 4, widths=(4, 4, 4, 4, 4), activation="relu")
    assert any(isinstance(m, torch.nn.ReLU) for m in relu.modules())
    assert not any(isinstance(m, torch.nn.GELU) for m in relu.modules())
    assert any(isinstance(m, torch.nn.GELU) for m in SpectrumCNN(3, 400, 4, widths=(4, 4, 4, 4, 4)).modules())
    with pytest.raises(ValueError, match="activation 'tanh': expected one of gelu, relu"):
        SpectrumCNN(3, 400, 4, activation="tanh")


def test_a_finished_run_resumes_to_the_same_bundle(toy_bundle):
    from survey_proc.estimators import load_estimator

    bundle, run_dir = toy_bundle
    x = np.random.default_rng(0).normal(1, 0.1, (4, 3, 1881)).astype(np.float32)
    x[:, 2] = 0
    before = load_estimator(bundle).predict(x)
    again = train(toy_train_config(), run_dir)  # the checkpoint says 2 of 2 epochs: nothing more to train
    assert load_checkpoint(run_dir / "checkpoint.pt")["state"]["epoch"] == 2
    after = load_estimator(again).predict(x)
    for key in ("log_age", "log_age_err", "ood_score"):
        np.testing.assert_allclose(after[key], before[key], rtol=1e-5)


def test_evaluate_cli_writes_the_documented_json(toy_bundle, tmp_path):
    import subprocess
    import sys

    bundle, _ = toy_bundle
    out = tmp_path / "eval.json"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "survey_proc",
            "evaluate",
            str(bundle),
            "--snr",
            "10,30",
            "--n",
            "60",
            "--json",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    data = json.loads(out.read_text())
    for snr in ("10", "30"):
        for name in ("log_age", "metallicity", "av"):
            entry = data["snr"][snr]["model"][name]
            assert set(entry) >= {"bias", "robust_sigma", "coverage_68", "coverage_95"}
    assert set(data["by_family"]) == {"ssp", "csfh"}
    assert (tmp_path / "eval.png").stat().st_size > 1000
    # noisier spectra are not estimated better than cleaner ones (a property of any sane estimator)
    assert (
        data["snr"]["10"]["model"]["log_age"]["robust_sigma"]
        >= 0.8 * data["snr"]["30"]["model"]["log_age"]["robust_sigma"]
    )


def test_galprote_style_model_trains_exports_and_runs_through_the_engine(tmp_path, mock16):
    """The GalProTE-style architecture (parallel kernels 11/21/31/61, attention, transformer) at toy
    size: it predicts the age-[M/H] weight grid, rebuilds the spectrum from the library and writes
    the reduced chi2, whose out-of-distribution rule is in the manifest; the engine runs it unchanged."""
    from survey_proc.engine import RunConfig, run
    from survey_proc.stores import Flag

    cfg = TrainConfig(
        name="toy-galprote",
        arch="galprote",
        arch_kwargs={"d_model": 8, "stride": 16, "heads": 2},
        trainset=TrainsetConfig(n=512, batch=512, seed=4, labels=("log_age", "metallicity", "av", "sigma", "velocity")),
        n_val=128,
        n_test=50,
        epochs=1,
        chunk=512,
        batch_size=64,
        test_snr=(30.0,),
        weight_loss=0.2,
        recon_loss=0.2,
        reconstruct=True,
        threads=1,
        n_calib=1500,
    )
    bundle = train(cfg, tmp_path / "run")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["outputs"]["weights"]["dims"] == ["age", "metal"]
    assert {r["output"] for r in manifest["flags"]["OUT_OF_DISTRIBUTION"]} == {"ood_score"}
    (poor,) = manifest["flags"]["POOR_FIT"]
    assert poor["output"] == "chi2_floor" and poor["above"] >= 3.0
    summary = run(
        RunConfig(cube=str(mock16), out=str(tmp_path / "m.zarr"), model=str(bundle), cluster="none", progress=False)
    )
    assert summary.verified and summary.spectra == 256
    maps = xr.open_zarr(tmp_path / "m.zarr")
    ok = maps.flag.values == 0
    assert ok.mean() > 0.5
    weights = maps.weights.transpose("y", "x", "age", "metal").values[ok]
    assert weights.shape[1:] == (25, 6)
    # light fractions: non-negative, summing to one in every fitted spaxel
    assert (weights >= 0).all() and np.allclose(weights.sum(axis=(1, 2)), 1.0, atol=1e-3)
    chi2 = maps.chi2.values[ok]
    assert np.isfinite(chi2).all() and (chi2 > 0).all()
    # the 2 % model error only lowers chi2; poor_fit marks exactly the spaxels above the rule
    floored = maps.chi2_floor.values
    assert (floored[ok] <= chi2 * (1 + 1e-5)).all()
    flagged = (maps.flag.values & int(Flag.POOR_FIT)) > 0
    assert np.array_equal(flagged, np.nan_to_num(floored, nan=0.0) > poor["above"])
    assert np.isfinite(maps.velocity.values[ok]).all() and (maps.velocity_err.values[ok] > 0).all()


def test_input_presets_by_name_and_their_former_function_names():
    from survey_proc.training import (
        INPUT_PRESETS,
        default_muse_input,
        input_preset,
        muse_rest_4750_8800_input,
        wide_muse_input,
    )

    assert input_preset("muse-rest-4750-7100") == muse_rest_4750_7100_input()
    assert input_preset("muse-rest-4750-8800") == muse_rest_4750_8800_input()
    assert set(INPUT_PRESETS) == {"muse-rest-4750-7100", "muse-rest-4750-8800", "sdss-observed-3800-8900"}
    # the names from when 4750-7100 A was the default's input and 4750-8800 A "wide" still work
    assert default_muse_input() == muse_rest_4750_7100_input() and wide_muse_input() == muse_rest_4750_8800_input()
    with pytest.raises(ValueError, match="unknown input preset 'muse'; known: muse-rest-4750-7100"):
        input_preset("muse")


def test_evaluate_bins_cli_prints_its_table_and_the_progress_log(toy_bundle, tmp_path, capsys):
    from survey_proc.cli import main

    bundle, _ = toy_bundle
    assert main(["evaluate-bins", str(bundle), "--out", str(tmp_path / "eb"), "--n", "40"]) == 0
    out = capsys.readouterr().out
    assert "held-out spectra fitted" in out  # a log line of the library, shown by the CLI
    assert "overall (bias / robust scatter)" in out and "by_class" in out  # the table
    assert json.loads((tmp_path / "eb" / "evaluation.json").read_text())["overall"]["n"] > 0


def test_4750_8800_input_and_weights_from_a_shorter_range_model():
    """The default's input covers rest 4750-8800 A with the red sky lines and telluric bands masked;
    its convolutions can start from a 4750-7100 A bundle (same shapes), the dense layer cannot."""
    from survey_proc.estimators import load_manifest
    from survey_proc.training import build, initial_weights, muse_rest_4750_8800_input

    spec = muse_rest_4750_8800_input()
    assert spec.wave.size == 3241 and spec.wave[-1] == 8800.0
    assert (7590.0, 7700.0) in spec.masks_observed and (7310.0, 7340.0) in spec.masks_rest
    old = load_manifest("muse-7100")
    assert old.input.wave_stop == 7100.0
    net = build("cnn", 3, spec.wave.size, 4, widths=(16, 32, 48, 64, 64))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loaded = initial_weights(net, "muse-7100")
    theirs = torch.jit.load(str(old.file)).net.state_dict()
    assert "features.0.weight" in loaded and "head.1.weight" not in loaded  # flattened length differs
    for k in loaded:
        assert torch.equal(net.state_dict()[k], theirs[k])
    assert torch.equal(net.state_dict()["head.1.weight"], before["head.1.weight"])
    with pytest.raises(ValueError, match="no tensor"):
        initial_weights(
            build("galprote", 3, 64, 3, n_weights=0, kernels=(11,), d_model=8, heads=2, hidden=16), "muse-7100"
        )


def test_sdss_nearby_redshifts_cover_the_nearby_galaxies_sdss_leaves_out():
    """The ``sdss`` n(z) puts about 1 % of its draws below z = 0.01; the SDSS spectra of the real-data
    scoreboard (NGC 3073, 3522, 4636) lie at z = 0.003-0.004, where a network trained so was biased
    by -0.8 dex in [M/H] on its own mocks. ``sdss-nearby`` gives a quarter of its draws to z < 0.03."""
    from survey_proc.training._dataset import TrainsetConfig, draw_redshift

    def draws(kind: str) -> np.ndarray:
        cfg = TrainsetConfig(instrument="sdss", redshift_range=(0.0, 0.3), redshift_distribution=kind)
        rng = np.random.default_rng(0)
        return np.array([draw_redshift(rng, cfg) for _ in range(4000)])

    sdss, nearby = draws("sdss"), draws("sdss-nearby")
    assert (sdss < 0.01).mean() < 0.03 and (nearby < 0.01).mean() > 0.07
    assert 0.2 < (nearby < 0.03).mean() < 0.35 and np.median(nearby) > 0.05
    assert ((nearby >= 0) & (nearby <= 0.3)).all()
    with pytest.raises(ValueError, match=r"uniform \| sdss \| sdss-nearby"):
        draws("everywhere")


def test_flux_distortions_are_smooth_and_off_by_default():
    """``flux_distortion``: a smooth multiplicative calibration error per spectrum and realisation; at 0
    (the default) the flux and the noise stream are those of sets drawn before the option."""
    from survey_proc.training._dataset import distorted

    flux = np.ones((500, 2000), np.float32)
    rng = np.random.default_rng(3)
    assert distorted(flux, rng, 0.0, 3) is flux and rng.random() == np.random.default_rng(3).random()
    ratio = distorted(flux, np.random.default_rng(4), 0.05, 3)
    rms = ratio.std(axis=1)
    assert 0.02 < np.median(rms) < 0.05 and np.abs(np.median(ratio) - 1) < 0.01
    assert np.abs(np.diff(ratio, axis=1)).max() < 0.01  # smooth: no pixel-to-pixel structure
    assert not np.allclose(ratio[0], ratio[1])


@pytest.mark.parametrize(
    "bundle",
    ["default", "muse-7100", "muse-cnn-wide", "muse-av3", "muse-recon", "muse-mix", "muse-mix-recon", "sdss-cnn"],
)
def test_exported_at_limit_rules_are_the_shipped_ones(bundle, ssp_lib):
    """The exporter writes AT_LIMIT rules from the training ranges; for every shipped network they are the
    thresholds its manifest was given by hand (grid edges +- 0.03 dex, sigma and velocity +- 10 km/s, top
    tenth of dust)."""
    from survey_proc.estimators import load_manifest
    from survey_proc.training._dataset import trainset_from_record
    from survey_proc.training._limits import at_limit_rules, lsf_trained

    raw = load_manifest(bundle).raw
    cfg = trainset_from_record(raw["training"]["config"]["trainset"])
    made = {r["output"]: (r["above"], r.get("below")) for r in at_limit_rules(cfg, ssp_lib)}
    shipped = {r["output"]: (r["above"], r.get("below")) for r in raw["flags"]["AT_LIMIT"]}
    assert made == shipped
    assert lsf_trained(cfg) == raw["input"]["lsf_trained"]


def test_a_set_can_draw_from_several_ssp_libraries(ssp_lib):
    """``trainset.libraries``: a share of the batches from other calibration libraries, labelled on their own
    grids (no weight grid), every input finite; evaluation libraries and reconstruction refused; the
    AT_LIMIT ranges span every library; held-out scoring stays in the model's own library."""
    from survey_proc.ssp import LibraryRoleError, load_ssp_library
    from survey_proc.training import input_preset
    from survey_proc.training._dataset import batch_library, make_inputs, synthesise_batch
    from survey_proc.training._evaluate import heldout_config
    from survey_proc.training._limits import at_limit_rules

    spec = input_preset("muse-rest-4750-7100")
    cfg = TrainsetConfig(n=640, batch=32, seed=106, libraries={"m11-miles": 0.25, "m11-marcs": 0.1})
    names = [batch_library(cfg, ssp_lib, k).name for k in range(20)]
    assert set(names) == {"emiles", "m11-miles", "m11-marcs"}
    assert TrainsetConfig(n=640, batch=32, seed=106).identity() == {
        k: v for k, v in cfg.identity().items() if k != "libraries"
    }
    for name in ("m11-marcs", "m11-miles"):
        part = synthesise_batch(cfg, ssp_lib, spec, names.index(name))
        x, _, _ = make_inputs(part, np.random.default_rng(0), cfg, spec)
        assert np.isfinite(x).all() and x[:, 2].mean() < 0.3  # M11-MILES stops at 7400 A: its tail is filled
        assert part.weights.sum() == 0
        metal = part.labels[:, list(part.label_names).index("metallicity")]
        grid = load_ssp_library(name).metal
        assert metal.min() >= grid.min() - 1e-6 and metal.max() <= grid.max() + 1e-6
    own = synthesise_batch(cfg, ssp_lib, spec, names.index("emiles"))
    assert np.allclose(own.weights.sum(axis=(1, 2)), 1.0)
    rules = {r["output"]: r for r in at_limit_rules(cfg, ssp_lib)}
    top = max(float(load_ssp_library(n).metal.max()) for n in ("emiles", "m11-miles", "m11-marcs"))
    assert top > 0.3 and rules["metallicity"]["above"] == pytest.approx(top - 0.03)
    assert rules["metallicity"]["below"] == pytest.approx(-1.71 + 0.03)
    assert heldout_config(cfg, "ssp", 100, 5).libraries is None
    with pytest.raises(LibraryRoleError):
        synthesise_batch(TrainsetConfig(n=64, batch=32, libraries={"bc03": 0.9}), ssp_lib, spec, 0)
    with pytest.raises(ValueError, match="leave a share"):
        synthesise_batch(TrainsetConfig(n=64, batch=32, libraries={"m11-miles": 1.0}), ssp_lib, spec, 0)
    from survey_proc.training._train import grid_cross_entropy

    # a grid model on several libraries learns the grid from the rows that have one (the own library's)
    TrainConfig(trainset=TrainsetConfig(libraries={"m11-miles": 0.3}), reconstruct=True, weight_loss=0.3)
    pred = torch.softmax(torch.randn(4, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    true = torch.zeros(4, 6)
    true[0, 1] = true[2, 3] = 1.0  # rows 1 and 3 come from another library: no grid
    assert float(grid_cross_entropy(pred, true)) == pytest.approx(-0.5 * float(pred[0, 1].log() + pred[2, 3].log()))
    assert float(grid_cross_entropy(pred, torch.zeros(4, 6))) == 0.0
    # a library stopping inside the model's range (M11-ELODIE: 6795 A) is refused, never padded
    with pytest.raises(ValueError, match="'m11-elodie' does not cover the model's range 4750-7100 A"):
        synthesise_batch(TrainsetConfig(n=64, batch=32, libraries={"m11-elodie": 0.9}), ssp_lib, spec, 0)
    # the order of the shares decides the batches' draws, so it is part of the set's identity
    swapped = TrainsetConfig(n=640, batch=32, seed=106, libraries={"m11-marcs": 0.1, "m11-miles": 0.25})
    assert swapped.digest(ssp_lib, spec) != cfg.digest(ssp_lib, spec)
    assert TrainsetConfig(libraries={}).identity() == TrainsetConfig().identity()


@pytest.mark.parametrize(
    "bundle", ["default", "muse-7100", "muse-av3", "muse-recon", "muse-mix", "muse-mix-recon", "sdss-cnn"]
)
def test_the_recorded_training_sets_are_the_ones_drawn_now(bundle, ssp_lib):
    """Each shipped network's trainset_hash is the digest of its recorded set under today's code: options added
    since, and sets drawn from several libraries, keep the sets they name."""
    from survey_proc.estimators import load_manifest
    from survey_proc.training import input_preset
    from survey_proc.training._dataset import trainset_from_record

    raw = load_manifest(bundle).raw["training"]
    cfg = trainset_from_record(raw["config"]["trainset"])
    assert cfg.digest(ssp_lib, input_preset(raw["config"]["input"])) == raw["trainset_hash"]
