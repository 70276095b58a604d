"""Re-exporting a bundle from its own TorchScript file (:func:`survey_proc.training.reexport_bundle`):
the network's estimates are kept bit for bit, the new wrapper's rebuild agrees with the old one, and the
new bundle loads and verifies like any other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from survey_proc.errors import ModelError
from survey_proc.estimators import load_estimator, load_manifest, resolve_model
from survey_proc.training import reexport_bundle, rewrap

BUNDLE = resolve_model("muse-mix-recon").parent


def _spectra(module, n: int = 300, seed: int = 1) -> torch.Tensor:
    """Noisy spectra rebuilt by the bundle's own reconstructor (a few with masked pixels)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.softmax(2 * torch.randn(n, module.n_metal * module.n_age, generator=g), 1)
    av, v = 2 * torch.rand(n, generator=g), 150 * torch.randn(n, generator=g)
    sig = 40 + 250 * torch.rand(n, generator=g)
    with torch.no_grad():
        flux = module.reconstructor(w, av, v, sig)
    flux = flux / flux.median(1, keepdim=True).values
    err = flux.abs() / 30 + 1e-3
    x = torch.stack([flux + err * torch.randn(flux.shape, generator=g), err, torch.zeros_like(flux)], 1)
    x[:20, 2, 100:300] = 1.0
    return x


@pytest.fixture(scope="module")
def reexported(tmp_path_factory):
    out = tmp_path_factory.mktemp("reexport") / "muse-mix-recon"
    manifest = reexport_bundle(BUNDLE, out, "test")
    return out, manifest


def test_reexport_keeps_the_estimates_and_the_chi2(reexported):
    out, manifest = reexported
    old = torch.jit.load(str(BUNDLE / "model.pt"))
    new = torch.jit.load(str(out / "model.pt"))
    x = _spectra(old)
    with torch.no_grad():
        a, b = old(x), new(x)
    assert set(a) == set(b)
    for key in a:
        if key in ("chi2", "chi2_floor"):
            np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-4)
        else:  # the network's own outputs: identical
            assert torch.equal(a[key], b[key]), key
    assert 0.7 < float(a["chi2"].median()) < 1.5  # the spectra are ones the model can rebuild
    old_manifest = json.loads((BUNDLE / "manifest.json").read_text())
    assert manifest["reexported"][-1]["from_sha256"] == old_manifest["sha256"] != manifest["sha256"]
    assert manifest["outputs"] == old_manifest["outputs"] and manifest["flags"] == old_manifest["flags"]


def test_a_reexported_bundle_loads_verifies_and_estimates(reexported):
    out, _ = reexported
    estimator = load_estimator(load_manifest(out).path)
    x = _spectra(torch.jit.load(str(out / "model.pt")), n=8).numpy()
    result = estimator.predict(x)
    assert np.isfinite(result["chi2"]).all() and np.isfinite(result["log_age"]).all()


def test_the_rebuild_in_chunks_equals_the_rebuild_at_once():
    scripted = torch.jit.load(str(BUNDLE / "model.pt"))
    wrapped = torch.jit.script(rewrap(scripted).eval())
    x = _spectra(scripted)
    with torch.no_grad():
        wrapped.rebuild_chunk = 1024
        whole = wrapped(x)
        wrapped.rebuild_chunk = 64
        chunked = wrapped(x)
        empty = wrapped(x[:0])
    np.testing.assert_allclose(chunked["chi2"].numpy(), whole["chi2"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(chunked["chi2_floor"].numpy(), whole["chi2_floor"].numpy(), rtol=1e-5)
    assert empty["chi2"].shape == (0,) and empty["log_age"].shape == (0,)


def test_reexport_refuses_a_modified_bundle(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    bundle = BUNDLE
    (src / "manifest.json").write_text((bundle / "manifest.json").read_text())
    (src / "model.pt").write_bytes((bundle / "model.pt").read_bytes() + b"x")
    with pytest.raises(ModelError, match="SHA-256"):
        reexport_bundle(src, tmp_path / "out", "test")


class _Old(torch.nn.Module):
    """A reconstructor as exported before: its buffers and ``velscale`` (all that re-export reads)."""

    def __init__(self, velscale: float, **buffers: torch.Tensor) -> None:
        super().__init__()
        self.velscale = velscale
        for name, value in buffers.items():
            self.register_buffer(name, value)


@pytest.mark.parametrize("form", ["templates, dust_curve, index, frac", "templates, position, dust_ln"])
def test_reexport_reads_the_reconstructors_of_earlier_exports(form):
    from types import SimpleNamespace

    from survey_proc.training._reexport import _reconstructor, _templates_and_dust

    shipped = torch.jit.load(str(BUNDLE / "model.pt")).reconstructor
    buffers = dict(shipped.named_buffers())
    templates, dust, index, frac = _templates_and_dust(shipped, buffers)
    if form.endswith("frac"):
        old = _Old(shipped.velscale, templates=templates.float(), dust_curve=dust.float(), index=index, frac=frac)
    else:
        old = _Old(
            shipped.velscale, templates=templates.float(), position=buffers["position"], dust_ln=buffers["dust_ln"]
        )
    rebuilt = _reconstructor(SimpleNamespace(reconstructor=old))
    g = torch.Generator().manual_seed(3)
    w = torch.softmax(2 * torch.randn(16, templates.shape[0], generator=g), 1)
    args = (
        w,
        2 * torch.rand(16, generator=g),
        150 * torch.randn(16, generator=g),
        40 + 250 * torch.rand(16, generator=g),
    )
    with torch.no_grad():
        np.testing.assert_allclose(rebuilt(*args).numpy(), shipped(*args).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lacks"):
        _reconstructor(SimpleNamespace(reconstructor=_Old(25.0, templates=templates.float())))
