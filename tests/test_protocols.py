"""The hooks the engine calls: InputKind and Estimator, their defaults, and a new kind of each
running through the engine without a change to it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import xarray as xr

from survey_proc.engine import CubeJob, RunConfig, RunSummary, estimate_region, run, stream_block
from survey_proc.estimators import IMPLEMENTATIONS, Estimator, load_estimator, load_manifest
from survey_proc.preprocess import (
    INPUT_KINDS,
    BatchMeta,
    ImageInputSpec,
    InputKind,
    InputSpec,
    Prepared,
    SEDInputSpec,
    input_spec,
)
from survey_proc.ssp import air_to_vacuum
from survey_proc.stores import Flag


@dataclass(frozen=True)
class MeanKind(InputKind):
    """A toy kind: each spectrum's mean flux over its good pixels, one channel."""

    kind: ClassVar[str] = "mean"
    scale: float = 1.0

    @classmethod
    def from_manifest(cls, section):
        return cls(scale=float(section.get("scale", 1.0)))

    def to_manifest(self):
        return {"kind": self.kind, "scale": self.scale}

    def prepare_batch(self, flux, var, mask, axis, redshift, shape=None):
        good = ~mask & np.isfinite(flux)
        n_good = good.sum(axis=1)
        mean = np.where(good, flux, 0).sum(axis=1) / np.maximum(n_good, 1)
        flags = np.where(n_good == 0, np.uint8(Flag.NO_DATA), np.uint8(0)).astype(np.uint8)
        x = (self.scale * mean).astype(np.float32)[:, None, None]
        return Prepared(x=x, flags=flags, snr=np.full(flux.shape[0], 50.0), norm=np.ones(flux.shape[0]))


class MeanEstimator(Estimator):
    """A toy estimator: its one output is the input."""

    def __init__(self, manifest, device="cpu", threads=None):
        self.manifest = manifest

    def predict(self, x, meta=None):
        assert isinstance(meta, BatchMeta) and meta.redshift.shape == (x.shape[0],)
        return {"mean_flux": x[:, 0, 0]}


def test_input_kind_defaults():
    kind = MeanKind()
    assert (kind.feature_dim, kind.halo_pixels, kind.whole_regions) == ("wave", 0, False)
    axis = np.array([1.0, 2.0])
    np.testing.assert_array_equal(kind.feature_axis(axis, "air"), axis)
    meta = kind.batch_meta(np.array([0.1, 0.2]), axis, np.ones(2))
    assert meta.lsf_fwhm_model is None and meta.redshift.dtype == np.float64
    assert kind.check_store(None, 0.0, "p", "m") is None and kind.warm_up(axis, 0.0) is None
    with pytest.raises(NotImplementedError):
        InputKind().prepare_batch(axis[None], axis[None], axis[None] > 0, axis, 0.0)


def test_the_registry_builds_specs_of_every_kind(monkeypatch):
    monkeypatch.setitem(INPUT_KINDS, "mean", MeanKind)
    assert input_spec({"kind": "mean", "scale": 2}) == MeanKind(scale=2.0)
    with pytest.raises(ValueError, match="unknown input kind 'nope'"):
        input_spec({"kind": "nope"})
    for model, cls in (("default", InputSpec), ("narrowband", SEDInputSpec), ("ugriz-maps", ImageInputSpec)):
        spec = load_manifest(model).input
        assert isinstance(spec, cls) and isinstance(spec, InputKind) and INPUT_KINDS[spec.kind] is cls


def test_kinds_read_their_feature_axis_and_meta():
    spectrum = load_manifest("default").input  # rest frame, air
    vacuum = air_to_vacuum(spectrum.wave)
    np.testing.assert_allclose(spectrum.feature_axis(vacuum, "vacuum"), spectrum.wave, atol=1e-3)
    np.testing.assert_array_equal(spectrum.feature_axis(spectrum.wave, None), spectrum.wave)
    wave = np.linspace(4000.0, 9500.0, 500)
    meta = spectrum.batch_meta(np.array([0.01, 0.01]), wave, np.full(wave.size, 2.5))
    assert meta.lsf_fwhm_model.shape == spectrum.wave.shape  # one redshift: one FWHM curve
    np.testing.assert_allclose(meta.lsf_fwhm_model, 2.5 / 1.01)  # in the rest frame
    assert spectrum.batch_meta(np.array([0.0, 0.02]), wave, np.full(wave.size, 2.5)).lsf_fwhm_model.shape == (
        2,
        spectrum.wave.size,
    )
    sed, image = load_manifest("narrowband").input, load_manifest("ugriz-maps").input
    assert list(sed.feature_axis(np.array(["u", "g"]))) == ["u", "g"] and sed.feature_dim == "band"
    assert not sed.whole_regions and image.whole_regions and image.halo_pixels > 0
    assert sed.batch_meta(np.zeros(3), np.array(["u"]), None).lsf_fwhm_model is None


def test_estimator_defaults():
    est = MeanEstimator(load_manifest("default"))
    assert est.batch_size is None and est.precision == "" and dict(est.provenance) == {}
    assert est.precision_on("cuda:0") == "" and est.warm_up() is None
    assert stream_block(est, 300) == 300  # no batch: the region at once
    est.batch_size = 128
    assert stream_block(est, 300) == 128
    torch_est = load_estimator("default")
    assert torch_est.precision_on("cpu") == torch_est.precision == "float32"
    assert torch_est.precision_on("cuda:0") == "float32"  # IEEE float32 unless gpu.tf32
    assert stream_block(load_estimator("ugriz-maps"), 300) == 300  # a tile goes in whole


def test_estimate_region_flags_and_blanks(tmp_path, monkeypatch):
    monkeypatch.setitem(INPUT_KINDS, "mean", MeanKind)
    est = MeanEstimator(load_manifest(_toy_bundle(tmp_path)))
    flux = np.array([[1.0, 3.0], [np.nan, np.nan], [2.0, 2.0]], np.float32)
    found = estimate_region(flux, np.ones_like(flux), np.zeros(flux.shape, bool), np.array([1.0, 2.0]), 0.0, est, 5.0)
    np.testing.assert_array_equal(found.outputs["mean_flux"], [4.0, np.nan, 4.0])  # twice the mean
    assert list(found.flags) == [0, Flag.NO_DATA, 0] and found.snr.dtype == np.float32
    assert set(found.timings) == {"prepare", "prepare_cpu", "estimator", "estimator_cpu"}


def _toy_bundle(tmp_path) -> str:
    bundle = tmp_path / "toy"
    bundle.mkdir(exist_ok=True)
    manifest = {
        "name": "toy",
        "estimator": "toy",
        "input": {"kind": "mean", "scale": 2.0},
        "outputs": {"mean_flux": {"units": "1", "long_name": "twice the mean flux"}},
        "min_snr": 1.0,
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return str(bundle)


def test_a_new_kind_and_estimator_run_through_the_engine_unchanged(mock16, tmp_path, monkeypatch):
    """Registering a kind in INPUT_KINDS and an estimator in IMPLEMENTATIONS is all it takes."""
    monkeypatch.setitem(INPUT_KINDS, "mean", MeanKind)
    monkeypatch.setitem(IMPLEMENTATIONS, "toy", f"{__name__}:MeanEstimator")
    out = tmp_path / "toy.maps.zarr"
    summary = run(
        RunConfig(cube=str(mock16), out=str(out), model=_toy_bundle(tmp_path), cluster="none", progress=False)
    )
    assert summary.verified and summary.regions_run == 4 and summary.fitted > 0
    maps, cube = xr.open_zarr(out), xr.open_zarr(mock16)
    good = ~cube["mask"] & np.isfinite(cube["flux"])
    expected = 2.0 * cube["flux"].where(good).mean("wave").values
    np.testing.assert_allclose(maps["mean_flux"].values, expected, rtol=1e-5)
    assert maps.attrs["network_precision"] == "" and maps.attrs["model_software"] == {}


def test_a_cube_is_abandoned_after_too_many_failed_regions():
    job = CubeJob(rc=RunConfig(cube="c"), manifest=None, regions=[], pending=[1, 2, 3], opts=None, names=[])
    assert job.failure_summary() is None
    job.submitted = job.returned = 2
    assert not job.fail_region("region-0 failed: boom", limit=2) and not job.settled
    assert job.fail_region("region-1 failed: boom", limit=2) and job.abandoned and job.settled
    assert not job.fail_region("region-2 failed: boom", limit=2)  # abandoned once
    assert job.failure_summary() == (
        "region-0 failed: boom (2 more region(s) failed, the rest not attempted). "
        "Finished regions are kept; rerun to resume."
    )


def test_summary_reads_as_before():
    base = {"cube": "c.zarr", "out": "c.maps.zarr", "model_id": "m@1", "spectra": 100, "fitted": 90}
    done = RunSummary(**base, regions=4, regions_run=0, regions_skipped=4, seconds=0.0, estimator_seconds=0.0)
    assert done.format().splitlines()[0] == "nothing to do: all 4 regions (100 spectra) were already done"
    ran = RunSummary(
        **base,
        regions=4,
        regions_run=2,
        regions_skipped=2,
        seconds=2.0,
        estimator_seconds=1.0,
        flag_counts={"low_snr": 3, "no_data": 0},
        verified=True,
        workers=2,
        setup_seconds=1.5,
        flagged=10,
    )
    text = ran.format()
    assert text.startswith(
        "spectra processed: 50 of 100 in 2.0 s (25 spectra/s with 2 worker(s); cluster start-up and loading "
        "the model on the workers (1.5 s) excluded; 2 regions run, 2 already done)"
    )
    assert "flagged: low_snr 3\n" in text and "every region verified" in text and ran.flagged_fraction == 0.1


def test_summary_says_what_the_time_leaves_out_and_what_it_holds():
    """With batch jobs the workers arrive late: the wait before the first region is named, and workers that
    joined during the run are said to have started inside the timed seconds (issue 16)."""
    base = {"cube": "c.zarr", "out": "c.maps.zarr", "model_id": "m@1", "spectra": 100, "fitted": 90}
    ran = RunSummary(
        **base,
        regions=4,
        regions_run=4,
        regions_skipped=0,
        seconds=4.0,
        estimator_seconds=1.0,
        verified=True,
        workers=4,
        setup_seconds=1.5,
        startup_seconds=62.0,
        workers_at_start=1,
    )
    assert ran.format().splitlines()[0] == (
        "spectra processed: 100 of 100 in 4.0 s (25 spectra/s with 4 worker(s); before that 62.0 s starting the "
        "cluster, waiting for workers and loading the model on them (1.5 s of it); 3 of them joined during the "
        "run, their start-up inside that time; 4 regions run, 0 already done)"
    )
