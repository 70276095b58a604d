"""Which model bundles survey-proc runs: shipped ones as released, foreign ones only with a checked hash."""

from __future__ import annotations

import json
import shutil

import dask.config
import pytest

from survey_proc.errors import ModelError
from survey_proc.estimators import (
    PACKAGED,
    PACKAGED_SUMS,
    compute_packaged_sums,
    load_manifest,
    packaged_models,
    packaged_sums,
)
from survey_proc.fetch import sha256_of


def test_the_recorded_sums_are_those_of_the_shipped_files():
    """SHA256SUMS lists every file of every shipped bundle with its hash (regenerate it after re-exporting)."""
    assert PACKAGED_SUMS.read_text() == compute_packaged_sums()
    names = {key.split("/")[0] for key in packaged_sums()}
    assert names == set(packaged_models())
    for name in packaged_models():
        load_manifest(name)


@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    """A copy of the shipped models folder that the loader takes for the package's own."""
    import survey_proc.estimators._load as load

    root = tmp_path / "models"
    shutil.copytree(PACKAGED, root)
    monkeypatch.setattr(load, "PACKAGED", root)
    monkeypatch.setattr(load, "PACKAGED_SUMS", root / "SHA256SUMS")
    return root


def test_a_modified_shipped_bundle_is_refused_even_with_its_manifest_hash_updated(fake_package):
    """The attack of issue 16: change the weights (label_mean doubled, say) and write the new hash into the
    manifest. The manifest agrees with the file, but the package's record does not."""
    bundle = fake_package / "default"
    with open(bundle / "model.pt", "ab") as f:
        f.write(b"\0")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["sha256"] = sha256_of(bundle / "model.pt")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="packaged model 'default' was modified"):
        load_manifest("default")


def test_a_changed_shipped_manifest_is_refused(fake_package):
    manifest = json.loads((fake_package / "ppxf" / "manifest.json").read_text())
    manifest["min_snr"] = 0.0
    (fake_package / "ppxf" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="packaged model 'ppxf' was modified"):
        load_manifest("ppxf")


def test_a_foreign_bundle_without_a_hash_needs_trust(tmp_path, default_bundle):
    bundle = tmp_path / "mine"
    shutil.copytree(default_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["sha256"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"records no SHA-256.*--trust-model"):
        load_manifest(bundle)
    assert load_manifest(bundle, trust=True).file == bundle / "model.pt"
    with dask.config.set({"survey-proc.run.trust-model": True}):
        load_manifest(bundle)


def test_a_foreign_bundle_with_a_matching_hash_runs_and_a_wrong_one_is_refused(tmp_path, default_bundle):
    bundle = tmp_path / "mine"
    shutil.copytree(default_bundle, bundle)
    assert load_manifest(bundle).sha256 == sha256_of(bundle / "model.pt")
    with open(bundle / "model.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="is corrupt"):
        load_manifest(bundle, trust=True)  # trust never skips a hash that is there


def test_the_run_verb_takes_trust_model(tmp_path, default_bundle, mock16):
    """`survey-proc run --model UNHASHED` stops with a one-line error naming --trust-model; with the flag
    the run goes through."""
    from survey_proc.cli import main

    bundle = tmp_path / "mine"
    shutil.copytree(default_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["sha256"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    args = ["run", "--cube", str(mock16), "--model", str(bundle), "--cluster", "none", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a.zarr")]) == 2
    assert main([*args, "--out", str(tmp_path / "b.zarr"), "--trust-model"]) == 0
