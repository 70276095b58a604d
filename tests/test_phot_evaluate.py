"""Photometric models evaluated the way their papers do: Set A / Set B (`survey-proc evaluate` of a
photometric model), the masked loss that holds Set A out of training, and the message when synthetic
photometry leaves a model's bands empty."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from survey_proc.cli import main


def test_masked_loss_leaves_held_out_pixels_out():
    from survey_proc.training._phot_trainer import masked_nll

    mean, log_var = torch.zeros(2, 3, 4, 4, requires_grad=True), torch.zeros(2, 3, 4, 4)
    target = torch.ones(2, 3, 4, 4)
    target[:, :, 0, 0] = float("nan")  # held out (Set A)
    loss = masked_nll(mean, log_var, target)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(1.5)  # 0.5 x 1 x 3 outputs, per counted pixel
    assert float(mean.grad[:, :, 0, 0].abs().sum()) == 0.0 and float(mean.grad.abs().sum()) > 0


@pytest.mark.parametrize("pixel_width", [0, 6])
def test_image_unet_pixel_branch_keeps_the_receptive_field_and_scripts(pixel_width):
    from survey_proc.training._phot_arch import ExportedImageModel, ImageUNet, receptive_radius

    torch.manual_seed(0)
    net = ImageUNet(6, 2, (4, 8, 8), pixel_width=pixel_width).eval()
    assert receptive_radius(ImageUNet(6, 2, (4, 8, 8), pixel_width=pixel_width), 6) == receptive_radius(
        ImageUNet(6, 2, (4, 8, 8)), 6
    )
    nf = pixel_width or 4
    module = ExportedImageModel(
        net, ["a", "b"], torch.zeros(2), torch.ones(2), torch.zeros(nf), torch.eye(nf), torch.ones(2), 4
    )
    x = torch.randn(1, 6, 10, 11)
    eager, scripted = module(x), torch.jit.script(module)(x)
    assert set(eager) == {"ood_score", "a", "a_err", "b", "b_err"}
    assert all(torch.allclose(eager[k], scripted[k]) for k in eager) and eager["a"].shape == (110,)


def test_image_unet_colour_inputs_are_a_fixed_map_that_scripts():
    from survey_proc.training._phot_arch import ImageUNet, colour_transform, receptive_radius

    t = colour_transform(7, 2, reference=1)  # [A_u, A_g, E_u, E_g, M_u, M_g, z]
    x = torch.tensor([2.0, 5.0, 0.5, 0.25, 0.0, 1.0, 0.3])
    torch.testing.assert_close(t @ x, torch.tensor([-3.0, 5.0, -1.5, -4.75, 0.0, 1.0, 0.3]))
    torch.manual_seed(0)
    net = ImageUNet(7, 2, (4, 8, 8), pixel_width=4, n_bands=2, colour_band=1).eval()
    assert receptive_radius(net, 7) == receptive_radius(ImageUNet(7, 2, (4, 8, 8), pixel_width=4), 7)
    image = torch.randn(1, 7, 8, 8)
    plain = ImageUNet(7, 2, (4, 8, 8), pixel_width=4).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if k != "transform"}, strict=False)
    coloured = torch.einsum("oc,bchw->bohw", t, image)
    torch.testing.assert_close(net(image)[0], plain(coloured)[0])
    torch.testing.assert_close(torch.jit.script(net)(image)[0], net(image)[0])


def test_image_spec_can_carry_the_redshift_as_a_channel():
    from survey_proc.preprocess import ImageInputSpec, input_spec

    spec = ImageInputSpec(bands=("u", "g"), softening=(1.0, 2.0), pixel_scale_arcsec=0.396, redshift_scale=30.0)
    section = spec.to_manifest()
    assert section["channels"][-1] == "redshift" and input_spec(section) == spec and spec.n_channels == 7
    flux = np.abs(np.random.default_rng(0).normal(5.0, 1.0, (12, 2))).astype(np.float32)
    prepared = spec.prepare_batch(flux, np.ones_like(flux), np.zeros(flux.shape, bool), ("u", "g"), 0.02, (3, 4))
    assert prepared.x.shape == (1, 7, 3, 4)
    np.testing.assert_allclose(prepared.x[0, -1], 0.6, rtol=1e-6)  # 30 z in every pixel
    np.testing.assert_allclose(prepared.x[0, 0].reshape(-1), np.arcsinh(flux[:, 0]), rtol=1e-6)
    old = ImageInputSpec(bands=("u", "g"), softening=(1.0, 2.0), pixel_scale_arcsec=0.396)
    assert (
        old.prepare_batch(flux, np.ones_like(flux), np.zeros(flux.shape, bool), ("u", "g"), 0.02, (3, 4)).x.shape[1]
        == 6
    )


def test_sed_spec_can_carry_the_redshift_as_a_channel():
    from survey_proc.preprocess import SEDInputSpec, input_spec

    spec = SEDInputSpec(bands=("a", "b", "c"), channels=("flux", "error", "mask", "redshift"), redshift_scale=30.0)
    assert input_spec(spec.to_manifest()) == spec
    assert "redshift_scale" not in SEDInputSpec(bands=("a",)).to_manifest()  # old manifests unchanged
    flux = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]], np.float32)
    z = np.array([0.01, 0.03])
    x = spec.prepare_batch(flux, np.ones_like(flux), np.zeros(flux.shape, bool), ("a", "b", "c"), z).x
    assert x.shape == (2, 4, 3)
    np.testing.assert_allclose(x[:, 3], [[0.3] * 3, [0.9] * 3], rtol=1e-6)
    np.testing.assert_allclose(x[0, 0], [0.5, 1.0, 1.5])  # divided by the median


def test_flux_jitter_scales_training_fluxes_unannounced():
    from survey_proc.preprocess import SEDInputSpec
    from survey_proc.training._sed import Pixels

    n, nb = 20000, 4
    px = Pixels(
        np.ones((n, nb), np.float32), np.full((n, nb), 1e-12, np.float32), np.zeros((n, 1)), np.zeros(n), np.ones(n)
    )
    spec = SEDInputSpec(bands=tuple("abcd"))
    clean = px.inputs(spec, np.random.default_rng(0), 0.0).x
    jittered = px.inputs(spec, np.random.default_rng(0), 0.0, jitter=0.01).x
    np.testing.assert_allclose(clean[:, 0], 1.0, atol=1e-5)
    assert 0.007 < np.std(jittered[:, 0]) < 0.012  # 1 %, a little less after dividing by the median band
    ratio = jittered[:, 1] / clean[:, 1]  # the errors do not announce it: only the median normalisation moved
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), rtol=1e-5)


TOY = {
    "sed": {
        "labels": ["log_age", "metallicity"],
        "galaxies": {"n_galaxies": 16, "size": 10, "filters": "jpas36", "snr_range": [5.0, 20.0], "seed": 3},
        "redshift_input": 30.0,
        "batch_size": 256,
    },
    "image": {
        "labels": ["log_mass_surface_density", "log_sfr_surface_density"],
        "galaxies": {
            "n_galaxies": 10,
            "size": 16,
            "filters": "sdss",
            "pixel_scale_arcsec": 0.396,
            "psf_fwhm_range": [2.0, 3.0],
            "seed": 3,
        },
        "arch_kwargs": {"widths": [4, 8, 8], "pixel_width": 4, "colour_band": 2},
        "redshift_input": 30.0,
        "batch_size": 4,
    },
}


@pytest.fixture(scope="module", params=["sed", "image"])
def toy_bundle(request, tmp_path_factory, ssp_lib):
    from survey_proc.training import PhotTrainConfig, train_photometric

    raw = {"kind": request.param, "name": f"toy-{request.param}", "epochs": 1, "threads": 1, **TOY[request.param]}
    cfg = PhotTrainConfig.from_dict(raw | {"val_fraction": 0.2, "test_fraction": 0.2, "pixel_holdout": 0.2})
    return cfg, train_photometric(cfg, tmp_path_factory.mktemp(request.param) / "run")


def test_set_a_and_set_b_are_scored_per_property_with_coverage(toy_bundle, ssp_lib):
    from survey_proc.training import evaluate_photometric, format_photometric
    from survey_proc.training._galaxies import holdout_pixels, split_galaxies

    cfg, bundle = toy_bundle
    result = evaluate_photometric(str(bundle), snrs=(30.0, 10.0), galaxies=2, set_a_galaxies=3, lib=ssp_lib)
    assert result["galaxies"] == {"set_a": 3, "set_b": 2} and set(result["snr"]) == {"30", "10"}
    train, _, _ = split_galaxies(cfg.galaxies.n_galaxies, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    hold = holdout_pixels((cfg.galaxies.n_galaxies, cfg.galaxies.size, cfg.galaxies.size), train, 0.2, cfg.seed)
    assert 0 < result["pixels_held_out_set_a"] <= hold.sum()  # Set A: only pixels training held out
    for set_name in ("set_a", "set_b"):
        scores = result["snr"]["30"][set_name]["all"]
        for name in cfg.labels:
            assert scores[name]["n"] > 0 and 0 <= scores[name]["coverage_68"] <= 1, (set_name, name)
    table = format_photometric(result)
    assert "| 30 | A | " in table and "| 10 | B | " in table and result["paper"]["reference"] in table
    manifest = json.loads((bundle / "manifest.json").read_text())  # the trainer's own Set A / Set B
    assert set(manifest["metrics"]["held_out"]) == {"set_a", "set_b"}


def test_evaluate_verb_writes_json_markdown_and_figure(toy_bundle, tmp_path, capsys):
    cfg, bundle = toy_bundle
    if cfg.kind != "image":
        pytest.skip("one kind through the CLI is enough")
    out = tmp_path / "ev.json"
    assert main(["evaluate", str(bundle), "--galaxies", "2", "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "log_sfr_surface_density" in printed and "| 30 | B |" in printed
    result = json.loads(out.read_text())
    assert result["kind"] == "image" and out.with_suffix(".md").exists() and out.with_suffix(".png").exists()
    sfr = result["snr"]["30"]["set_b"]["all"]["log_sfr_surface_density"]
    assert sfr["n"] > 0  # scored only above the detection floor
