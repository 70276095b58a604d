"""Knowledge distillation (``distill_from``): the teacher's outputs in the student's units, the loss,
the refusals, and a toy training that learns from a teacher end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import toy_train_config

from survey_proc.estimators import load_manifest
from survey_proc.training import (
    TrainConfig,
    TrainsetConfig,
    make_inputs,
    muse_rest_4750_7100_input,
    muse_rest_4750_8800_input,
    synthesise,
    train,
)
from survey_proc.training._distill import Teacher, TeacherOutputs, distillation_loss

TEACHER = "muse-mix-recon"
LABELS = ["log_age", "metallicity", "av", "sigma", "velocity"]


@pytest.fixture(scope="module")
def inputs(ssp_lib):
    cfg = TrainsetConfig(n=64, seed=21, batch=64, labels=tuple(LABELS), av_range=(0.0, 3.0))
    spec = muse_rest_4750_7100_input()
    data = synthesise(cfg, ssp_lib, spec)
    x, _, _ = make_inputs(data, np.random.default_rng(0), cfg, spec)
    return torch.from_numpy(x), data.labels


def test_the_teacher_speaks_in_the_students_standardisation(inputs):
    x, labels = inputs
    mean_s, std_s = labels.mean(axis=0), labels.std(axis=0) + 1e-6  # another set's standardisation
    teacher = Teacher(TEACHER, muse_rest_4750_7100_input(), LABELS, mean_s, std_s, torch.device("cpu"))
    said = teacher(x)
    module = torch.jit.load(str(load_manifest(TEACHER).file), map_location="cpu")
    with torch.no_grad():
        mean_t, _, _, _ = module.net(x)
    physical_t = mean_t * module.label_std + module.label_mean
    physical_s = said.mean * torch.as_tensor(std_s, dtype=torch.float32) + torch.as_tensor(mean_s, dtype=torch.float32)
    torch.testing.assert_close(physical_s, physical_t, rtol=1e-5, atol=1e-3)
    assert said.weights.shape == (64, 150) and not said.mean.requires_grad
    torch.testing.assert_close(said.weights.sum(dim=1), torch.ones(64))
    # the grid in the training order (metal-major), the exported module's transposed to (age, metal)
    exported = module(x)["weights"]
    torch.testing.assert_close(said.weights.reshape(64, 6, 25).transpose(1, 2), exported)


def test_the_loss_is_zero_where_the_student_says_what_the_teacher_says():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(8, 5, generator=g)
    weights = torch.softmax(torch.randn(8, 150, generator=g), dim=1)
    teacher = TeacherOutputs(mean.clone(), weights.clone())
    assert float(distillation_loss(mean, weights, teacher)) == pytest.approx(0.0, abs=1e-6)
    student_mean = (mean + 0.5).requires_grad_(True)
    student_logits = torch.randn(8, 150, generator=g, requires_grad=True)
    loss = distillation_loss(student_mean, torch.softmax(student_logits, dim=1), teacher)
    assert float(loss.detach()) > 0.25  # the means alone are 0.25 off on average
    loss.backward()
    assert student_mean.grad.abs().sum() > 0 and student_logits.grad.abs().sum() > 0
    # a student without the grid learns the teacher's means only
    assert float(distillation_loss(mean, mean[:, :0], teacher)) == pytest.approx(0.0, abs=1e-6)


def test_a_teacher_reading_another_input_other_labels_or_grid_is_refused():
    one = np.ones(5)
    with pytest.raises(ValueError, match=r"distill_from muse-mix-recon: its input differs.*wave_stop 7100\.0"):
        Teacher(TEACHER, muse_rest_4750_8800_input(), LABELS, 0 * one, one, torch.device("cpu"))
    with pytest.raises(ValueError, match="labels"):
        Teacher(TEACHER, muse_rest_4750_7100_input(), LABELS[::-1], 0 * one, one, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"grid \(metal x age\) is \(6, 25\), this model's \(6, 12\)"):
        Teacher(TEACHER, muse_rest_4750_7100_input(), LABELS, 0 * one, one, torch.device("cpu"), (6, 12))
    with pytest.raises(ValueError, match="go together"):
        TrainConfig(distill_from=TEACHER)
    with pytest.raises(ValueError, match="go together"):
        TrainConfig(distill_loss=1.0)


def test_the_shipped_bundles_recorded_configs_give_their_digests():
    """The options are left out of a run's identity while unset, so the bundles trained before they existed
    still give their recorded digests (a finished run resumes instead of training again), as does the one
    trained with a teacher."""
    for name in ("muse-mix-recon", "muse-recon", "muse-av3", "muse-mix-recon-k5-distil"):
        training = json.loads(load_manifest(name).file.with_name("manifest.json").read_text())["training"]
        assert TrainConfig.from_dict(dict(training["config"])).digest() == training["config_digest"], name


def test_a_toy_network_trains_with_a_teacher_and_records_it(tmp_path, caplog, monkeypatch):
    import survey_proc.training._train as trainer

    terms = []

    def counted(mean, weights, teacher):
        term = distillation_loss(mean, weights, teacher)
        terms.append(float(term.detach()))
        return term

    monkeypatch.setattr(trainer, "distillation_loss", counted)
    cfg = toy_train_config(
        {"n": 512, "seed": 4, "labels": tuple(LABELS), "av_range": (0.0, 3.0)},
        name="toy-distil",
        n_val=128,
        n_test=50,
        epochs=1,
        weight_loss=0.3,
        reconstruct=True,
        edge_correction=False,
        distill_from=TEACHER,
        distill_loss=1.0,
    )
    assert cfg.digest() != TrainConfig(**{**cfg.__dict__, "distill_loss": 0.5}).digest()
    with caplog.at_level("INFO", logger="survey_proc"):
        bundle = train(cfg, tmp_path / "run")
    assert "distilling from muse-mix-recon (weight 1.0)" in caplog.text
    assert len(terms) == 2 and all(np.isfinite(terms)) and min(terms) > 0  # every batch: 512 spectra of 256
    recorded = json.loads((bundle / "manifest.json").read_text())["training"]["config"]
    assert recorded["distill_from"] == TEACHER and recorded["distill_loss"] == 1.0
