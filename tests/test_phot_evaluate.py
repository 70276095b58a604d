"""Photometric models evaluated the way their papers do: Set A / Set B (`survey-proc evaluate` of a
photometric model), the masked loss that holds Set A out of training, and the message when synthetic
photometry leaves a model's bands empty."""

from __future__ import annotations

import json

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


TOY = {
    "sed": {
        "labels": ["log_age", "metallicity"],
        "galaxies": {"n_galaxies": 16, "size": 10, "filters": "jpas36", "snr_range": [5.0, 20.0], "seed": 3},
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
        "arch_kwargs": {"widths": [4, 8, 8], "pixel_width": 4},
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
