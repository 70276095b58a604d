"""--method fit: pPXF's model solved in batches in torch, checked against pPXF and the truth (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from survey_proc.estimators import load_estimator
from survey_proc.stores import Flag


@pytest.mark.parametrize("solver", ["nnls", "nnls_batched", "fnnls"])
@pytest.mark.parametrize("warm", [False, True])
def test_nnls_solvers_are_scipy_nnls(solver, warm):
    """Each NNLS on normal equations (the CPU's row-by-row one, the GPU's batched block pivoting with and
    without a warm start, and the one-variable-at-a-time fallback) gives scipy's NNLS solutions
    (ill-conditioned, collinear columns like SSP templates included)."""
    from scipy.optimize import nnls as scipy_nnls

    from survey_proc.estimators import _nnls

    rng = np.random.default_rng(3)
    n, k, L = 40, 16, 300
    base = np.abs(rng.normal(1, 0.3, (k, L))).cumsum(axis=1)
    a = base + 1e-3 * rng.normal(size=(n, k, L))  # nearly collinear columns
    truth = np.where(rng.random((n, k)) < 0.4, rng.random((n, k)), 0.0)
    y = np.einsum("nk,nkl->nl", truth, a) + 1e-2 * rng.normal(size=(n, L))
    gram = torch.as_tensor(np.einsum("nkl,njl->nkj", a, a))
    b = torch.as_tensor(np.einsum("nkl,nl->nk", a, y))
    passive = torch.as_tensor(rng.random((n, k)) < 0.5) if warm else None
    ours = getattr(_nnls, solver)(gram, b, passive).numpy()
    for i in range(n):
        ref, _ = scipy_nnls(a[i].T, y[i])
        r_ours = np.linalg.norm(a[i].T @ ours[i] - y[i])
        r_ref = np.linalg.norm(a[i].T @ ref - y[i])
        assert (ours[i] >= 0).all() and r_ours <= r_ref * (1 + 1e-6) + 1e-9


def test_square_root_is_choleskys_where_firm_and_the_eigendecomposition_where_singular():
    """nnls_rows's square root of a unit-diagonal Gram matrix: A'A = G and A'y = b (b in G's range), by
    Cholesky (A triangular) where the pivots are firm, by the eigendecomposition where G is singular."""
    from survey_proc.estimators import _nnls

    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 6, 50))
    x[1, 5] = x[1, 4]  # two identical columns
    gram = np.einsum("nkl,njl->nkj", x, x)
    scale = np.sqrt(np.diagonal(gram, axis1=1, axis2=2))
    unit = gram / scale[:, :, None] / scale[:, None, :]
    rhs = (unit @ rng.random((3, 6, 1)))[:, :, 0]
    a, y = _nnls.square_root(unit, rhs)
    at = a.transpose(0, 2, 1)
    np.testing.assert_allclose(at @ a, unit, atol=1e-10)
    np.testing.assert_allclose((at @ y[:, :, None])[:, :, 0], rhs, atol=1e-10)
    assert np.allclose(np.tril(a[0], -1), 0) and np.allclose(np.tril(a[2], -1), 0)
    assert not np.allclose(np.tril(a[1], -1), 0)


def test_nnls_rows_zero_columns_nonfinite_rows_and_a_failing_solver(monkeypatch):
    """The CPU solver: a template with no weight in the Gram matrix gets 0 (not 1e164), a non-finite row
    gets NaN without upsetting the others, and where scipy gives up the batched answer comes back on the
    problem's own scale."""
    from scipy.optimize import nnls as scipy_nnls

    from survey_proc.estimators import _nnls

    rng = np.random.default_rng(4)
    n, k, L = 6, 8, 200
    a = np.abs(rng.normal(1, 0.3, (n, k, L))).cumsum(axis=2) * 10.0 ** rng.uniform(-3, 3, (n, k, 1))
    a[:, 2] = 0.0  # a template zero over every good pixel
    y = np.einsum("nk,nkl->nl", rng.random((n, k)), a) + rng.normal(size=(n, L))
    gram, b = np.einsum("nkl,njl->nkj", a, a), np.einsum("nkl,nl->nk", a, y)
    gram[4, 0, 0] = np.nan
    ours = _nnls.nnls_rows(gram, b)
    assert np.isnan(ours[4]).all() and np.isfinite(np.delete(ours, 4, axis=0)).all()
    for i in (0, 1, 2, 3, 5):
        ref, _ = scipy_nnls(a[i].T, y[i])
        assert ours[i, 2] == 0.0
        assert np.linalg.norm(a[i].T @ ours[i] - y[i]) <= np.linalg.norm(a[i].T @ ref - y[i]) * (1 + 1e-6) + 1e-9

    def gives_up(*args, **kwargs):
        raise RuntimeError("Maximum number of iterations reached.")

    monkeypatch.setattr("scipy.optimize.nnls", gives_up)
    fallback = _nnls.nnls_rows(gram[:1], b[:1])
    ref, _ = scipy_nnls(a[0].T, y[0])
    assert np.linalg.norm(a[0].T @ fallback[0] - y[0]) <= np.linalg.norm(a[0].T @ ref - y[0]) * (1 + 1e-4)


def test_fit_leaves_the_callers_seeds_alone(ssp_lib, monkeypatch):
    """The state is updated in place; the seeds handed to fit_stream() are not, nor do they share its memory;
    every spectrum comes back once."""
    import dataclasses

    import survey_proc.estimators._fit as fit_module

    weights = np.zeros((4, 6, 25))
    weights[:, 4, 19] = 1.0
    av, v, sigma = [0.2, 0.4, 0.6, 0.8], [0, 50, -50, 100], [80, 120, 160, 200]
    flux, var, wave, z, lsf, estimate_region = _observe(ssp_lib, weights, av, v, sigma)
    original, seen = fit_module.fit_stream, {}

    def spy(tpl, y, w8, v0, sigma0, av0, ws0, limits, moments=2, batch=32):
        seeds = (v0, sigma0, av0, ws0)
        before = [t.clone() for t in seeds]
        out = list(original(tpl, y, w8, *seeds, limits, moments, batch=3))  # refilled: 4 spectra, 3 at a time
        seen["unchanged"] = all(torch.equal(x, t) for x, t in zip(before, seeds, strict=True))
        unfitted = list(original(tpl, y, w8, *seeds, dataclasses.replace(limits, iterations=0), batch=3))
        states = [s for _, s in out + unfitted]
        fields = [f for s in states for f in (s.v, s.sigma, s.av, s.ws)]
        seen["shared"] = any(t.data_ptr() == f.data_ptr() for t in seeds for f in fields)
        seen["rows"] = sorted(torch.cat([r for r, _ in out]).tolist()) == list(range(y.shape[0]))
        yield from out

    monkeypatch.setattr(fit_module, "fit_stream", spy)
    estimate_region(flux, var, np.zeros(flux.shape, bool), wave, z, load_estimator("fit", threads=1), 5.0, lsf)
    assert seen == {"unchanged": True, "shared": False, "rows": True}


def test_a_refilled_batch_fits_as_one_batch_does(ssp_lib, monkeypatch):
    """fit_stream with 2 spectra at a time (each converged one replaced by the next waiting) gives each
    spectrum the fit that fitting all 6 together does, to where the stopping rule lets a fit stop: the
    round-off of other batch compositions moves a fit along the flat chi^2 valley (here by up to 3.3 of
    ~2,400 chi^2, 0.5 km/s in sigma); a spectrum fitted against another's data would be far off."""
    import survey_proc.estimators._fit as fit_module

    rng = np.random.default_rng(11)
    n = 6
    av, v, sigma = rng.uniform(0, 1, n), rng.uniform(-150, 150, n), rng.uniform(60, 250, n)
    flux, var, wave, z, lsf, estimate_region = _observe(ssp_lib, _mixtures(rng, n), av, v, sigma, snr=40.0)
    flux = flux + np.sqrt(var) * rng.standard_normal(flux.shape)
    original, seen = fit_module.fit_stream, {}

    def spy(tpl, y, w8, v0, sigma0, av0, ws0, limits, moments=2, batch=32):
        args = (tpl, y, w8, v0, sigma0, av0, ws0, limits, moments)

        def in_order(parts):  # each finished group's values, back in the spectra's order
            order = torch.argsort(torch.cat([r for r, _ in parts]))
            return {k: torch.cat([getattr(s, k) for _, s in parts])[order] for k in ("chi2", "v", "sigma")}

        together = in_order(list(original(*args, batch=n, group=n)))  # all six in one batch
        parts = list(original(*args, batch=2, group=1))
        seen["groups"] = len(parts)
        streamed = in_order(parts)
        seen["chi2"] = float(((streamed["chi2"] - together["chi2"]).abs() / together["chi2"]).max())
        seen["dv"] = float((streamed["v"] - together["v"]).abs().max())
        seen["dsigma"] = float((streamed["sigma"] - together["sigma"]).abs().max())
        yield from original(*args, batch=batch)

    monkeypatch.setattr(fit_module, "fit_stream", spy)
    out = estimate_region(flux, var, np.zeros(flux.shape, bool), wave, z, load_estimator("fit", threads=1), 5.0, lsf)
    assert seen["groups"] >= 3  # finished spectra came back as they converged
    assert seen["chi2"] < 2e-3
    assert seen["dv"] < 0.2 * np.nanmin(out.outputs["velocity_err"])
    assert seen["dsigma"] < 0.5 * np.nanmin(out.outputs["sigma_err"])


def test_a_held_av_is_conditioned_on_not_marginalised(ssp_lib, monkeypatch):
    """With A_V held (fit-mpoly), the weights' covariance is the inverse of their own block of the Fisher
    matrix: A_V's row and column take no part (they used to inflate the weights' errors up to 13x)."""
    import survey_proc.estimators._fit as fit_module
    from survey_proc.estimators import _fitcore, _fiterrors

    weights = _mixtures(np.random.default_rng(2), 2)
    flux, var, wave, z, lsf, estimate_region = _observe(ssp_lib, weights, [0.0, 0.0], [0.0, 40.0], [100.0, 150.0])
    original, seen = _fiterrors.covariance, {}

    def spy(tpl, s, good, dof, hold_av=False, bias=None):
        seen.update(args=(tpl, s, good, dof), hold_av=hold_av)
        return original(tpl, s, good, dof, hold_av, bias)

    monkeypatch.setattr(fit_module, "covariance", spy)
    estimate_region(flux, var, np.zeros(flux.shape, bool), wave, z, load_estimator("fit-mpoly", threads=1), 5.0, lsf)
    assert seen["hold_av"]
    cov = original(*seen["args"], True)
    assert (cov[:, 2, :] == 0).all() and (cov[:, :, 2] == 0).all()
    jacobian = _fitcore.jacobian

    def no_dust(tpl, s):  # the Jacobian without A_V's derivative: what conditioning on A_V means
        jac = jacobian(tpl, s).clone()
        jac[:, 2] = 0.0
        return jac

    monkeypatch.setattr(_fiterrors, "jacobian", no_dust)
    np.testing.assert_allclose(cov.numpy(), original(*seen["args"], True).numpy(), rtol=1e-6, atol=1e-12)


def test_covariance_is_the_float64_inverse_of_the_fisher_matrix(ssp_lib, monkeypatch):
    """The errors are the inverse of the Fisher matrix summed in float64: float32 sums (the columns of
    neighbouring SSPs nearly collinear) moved some spectra's errors by 30 % and zeroed others'."""
    import survey_proc.estimators._fit as fit_module
    from survey_proc.estimators import _fitcore, _fiterrors

    rng = np.random.default_rng(5)
    n = 8
    weights = _mixtures(rng, n)
    av, v, sigma = rng.uniform(0, 1, n), rng.uniform(-100, 100, n), rng.uniform(60, 200, n)
    flux, var, wave, z, lsf, estimate_region = _observe(ssp_lib, weights, av, v, sigma, snr=30.0)
    flux = flux + np.sqrt(var) * rng.standard_normal(flux.shape)
    original, seen = _fiterrors.covariance, []

    def spy(tpl, s, good, dof, hold_av=False, bias=None):
        seen.append((tpl, s, good, dof))
        return original(tpl, s, good, dof, hold_av, bias)

    monkeypatch.setattr(fit_module, "covariance", spy)
    estimate_region(flux, var, np.zeros(flux.shape, bool), wave, z, load_estimator("fit", threads=1), 5.0, lsf)
    for tpl, s, good, dof in seen:
        cov = original(tpl, s, good, dof).numpy()
        design = torch.cat([_fitcore.jacobian(tpl, s), s.cols], 1).double().numpy()  # whitened, as the state
        for i in range(s.w.shape[0]):
            free = np.r_[np.ones(3, bool), s.w[i].numpy() > 0]
            a = design[i][free]
            ref = np.linalg.inv(a @ a.T) * float(s.chi2[i]) / float(dof[i])
            np.testing.assert_allclose(np.diag(cov[i])[free], np.diag(ref), rtol=1e-6)


def test_a_refresh_brings_in_no_two_grid_neighbours():
    """The working set's refresh takes the templates whose gradient is largest, skipping the grid
    neighbours of those already taken (near-twins the NNLS would keep one of); without a grid, the top k."""
    from survey_proc.estimators._fitcore import NEIGHBOURS, _apart, grid_neighbours

    near = grid_neighbours((25, 6), 150)
    assert near.equal(near.T) and near.diagonal().all()
    age, metal = np.divmod(np.arange(150), 6)
    expected = (np.abs(age[:, None] - age) <= NEIGHBOURS[0]) & (np.abs(metal[:, None] - metal) <= NEIGHBOURS[1])
    assert np.array_equal(near.numpy(), expected)
    g = torch.randn(64, 150)
    values, picks = _apart(g, near, 5, 12)
    assert torch.isinf(values[:, 5:]).all() and (values[:, :5] <= g.amax(1, keepdim=True)).all()
    assert (values[:, 0] == g.amax(1)).all() and (values[:, :5].diff(dim=1) <= 0).all()
    for row in picks[:, :5].numpy():
        assert not near[row[:, None], row[None]].fill_diagonal_(False).any()
    values, picks = _apart(g, grid_neighbours(None, 150), 12, 12)
    assert torch.equal(values, torch.topk(g, 12, dim=1).values)
    with pytest.raises(ValueError, match="does not hold"):
        grid_neighbours((25, 5), 150)


def test_mixed_templates_are_the_weighted_sum_and_the_mean():
    """Templates.mix (an embedding bag over the templates' Fourier rows) against the sum it stands for."""
    from survey_proc.estimators._fitcore import Templates

    rng = np.random.default_rng(2)
    lam = np.exp(np.linspace(np.log(5000.0), np.log(6000.0), 400))
    tpl = Templates(
        rng.random((30, 600)), lam * 0.95, lam, 60.0, np.zeros(lam.size), torch.device("cpu"), torch.float64
    )
    ws = torch.as_tensor(rng.integers(0, 30, (7, 5)))
    w = torch.as_tensor(rng.random((7, 5)))
    torch.testing.assert_close(tpl.mix(ws, w), (tpl.that[ws] * w[:, :, None]).sum(1))
    torch.testing.assert_close(tpl.mix(ws), tpl.that[ws].mean(1))


def test_template_columns_at_small_sigma_match_a_long_transform():
    """The FFT length is sized by the LOSVD's reach and the padding is a ramp, not zeros: a sub-pixel shift
    at sigma 10 km/s then matches a 65,536-point transform to 1e-4 of the flux (zero padding rang from
    the templates' ends at 2e-3)."""
    import math

    from survey_proc.estimators._fitcore import Templates
    from survey_proc.estimators._ppxf import prepare_templates
    from survey_proc.ssp import muse_lsf_fwhm

    est = load_estimator("fit", threads=1)
    tem = prepare_templates(est.lib, est.lam, muse_lsf_fwhm(est.lam * 1.008), est.lam_temp)
    tem = tem.reshape(tem.shape[0], -1).T
    args = (tem, est.lam_temp, est.lam, est.velscale, est.dust_k, torch.device("cpu"), torch.float64)
    ours = Templates(*args, reach=est.options.reach())
    long = Templates(*args, reach=est.velscale * (65536 - tem.shape[1]))
    assert ours.nfft < 4096 and long.nfft >= 65536
    ws = torch.arange(0, 150, 7).reshape(1, -1).expand(4, -1)
    v = torch.tensor([0.0, 130.0, -700.0, 1500.0], dtype=torch.float64)
    sigma = torch.tensor([10.0, 10.0, 40.0, 300.0], dtype=torch.float64)
    a, b = (t.columns(ws, v, sigma, torch.zeros(4, dtype=torch.float64)) for t in (ours, long))
    assert float(((a - b).abs().amax(-1) / b.abs().amax(-1)).max()) < 1e-4
    assert math.isclose(ours.frac, long.frac) and ours.off == long.off


def _mixtures(rng, n: int) -> np.ndarray:
    """(n, 6, 25) light weights: three random SSPs per spectrum, none younger than the 5th age."""
    weights = np.zeros((n, 6, 25))
    for i in range(n):
        for _ in range(3):
            weights[i, rng.integers(0, 6), rng.integers(5, 25)] += rng.random()
    return weights


def _assert_agree(fit: dict, ppxf: dict, tolerances: dict[str, float], fraction: float = 0.2) -> None:
    """Within a small ``fraction`` of the fit's own error (or an absolute tolerance): the two solve the same
    problem (stopped tightly, :data:`TIGHT`: at the default stops, where chi^2 is flat along the
    age-metallicity-dust degeneracy, they may stop up to ~1 sigma apart)."""
    for name, tol in tolerances.items():
        diff = np.abs(fit[name] - ppxf[name])
        assert (diff < np.maximum(tol, fraction * fit[f"{name}_err"])).all(), (name, fit[name], ppxf[name])


#: the stop of both pPXF (``ftol``) and the fit (``tol``) where the tests compare their optima: at the default
#: 1e-4 either may stop where a step gains under 1e-4 of chi^2 along the flat age-metallicity-dust valley
#: (measured: a spectrum fitted in a batch of 6 stopped 1.7 in chi^2, 0.65 sigma in A_V, short of where it
#: ends alone), so which optimiser got closer is down to its path's round-off
TIGHT = {"fit": {"tol": 1e-7, "iterations": 60}, "ppxf": {"ftol": 1e-7}}


def _variant_folder(tmp_path, name: str, section: str, *, outputs=None, drop=(), **options):
    """A folder of its own holding a packaged bundle's manifest with ``options`` merged into its
    ``section``, the ``outputs`` added and the outputs named in ``drop`` left out."""
    import json

    from survey_proc.estimators import load_manifest

    raw = json.loads(load_manifest(name).path.read_text())
    raw[section] = {**raw.get(section, {}), **options}
    raw["outputs"] = {k: v for k, v in raw["outputs"].items() if k not in drop} | (outputs or {})
    folder = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(raw))
    return folder


def _variant(tmp_path, name: str, section: str, **kwargs):
    """The estimator of :func:`_variant_folder`'s manifest."""
    return load_estimator(str(_variant_folder(tmp_path, name, section, **kwargs)), threads=1)


def _observe(ssp_lib, weights, av, v, sigma, snr=80.0, z=0.01):
    from survey_proc.engine import estimate_region
    from survey_proc.ssp import muse_lsf_fwhm
    from survey_proc.synth import Synthesiser

    wave = 4750.0 + 1.25 * np.arange(3681)
    synth = Synthesiser(ssp_lib, wave, z, muse_lsf_fwhm)
    flux = synth.observe(weights, np.asarray(av), np.asarray(v), np.asarray(sigma), 100.0)
    var = (flux / snr) ** 2
    return flux, var, wave, z, muse_lsf_fwhm(wave), estimate_region


def test_one_fit_recovers_known_parameters(ssp_lib):
    """A single-SSP spectrum with known kinematics and dust, observed like MUSE (as pPXF's own test)."""
    weights = np.zeros((1, 6, 25))
    weights[0, 4, 19] = 1.0  # [M/H] = 0, log age = 9.7
    flux, var, wave, z, lsf, estimate_region = _observe(ssp_lib, weights, [0.4], [60.0], [120.0])
    est = load_estimator("fit", threads=1)
    found = estimate_region(flux, var, np.zeros(flux.shape, bool), wave, z, est, 5.0, lsf)
    out = found.outputs
    assert found.flags[0] == 0
    assert out["velocity"][0] == pytest.approx(60.0, abs=5.0)
    assert out["sigma"][0] == pytest.approx(120.0, abs=10.0)
    assert out["av"][0] == pytest.approx(0.4, abs=0.05)
    assert out["log_age"][0] == pytest.approx(ssp_lib.log_age[19], abs=0.08)
    assert out["metallicity"][0] == pytest.approx(0.0, abs=0.1)
    assert out["weights"].shape == (1, 25, 6) and out["weights"][0].sum() == pytest.approx(1.0, abs=1e-5)
    for name in ("velocity", "sigma", "av", "log_age", "metallicity"):
        assert 0 < out[f"{name}_err"][0] < {"velocity": 10, "sigma": 10}.get(name, 0.2), name


def test_fit_agrees_with_ppxf_on_the_same_spectra(ssp_lib, tmp_path):
    """Same templates, masks and noise: the fit and pPXF reach the same kinematics, dust and weights (both
    stopped tightly), and at their default stops the same chi^2."""
    pytest.importorskip("ppxf")
    rng = np.random.default_rng(11)
    n = 6
    weights = _mixtures(rng, n)
    av, v, sigma = rng.uniform(0.1, 1.0, n), rng.uniform(-150, 150, n), rng.uniform(60, 250, n)
    flux, var, wave, z, lsf, estimate_region = _observe(ssp_lib, weights, av, v, sigma, snr=60.0)
    flux = flux + rng.normal(size=flux.shape).astype(np.float32) * np.sqrt(var)
    mask = np.zeros(flux.shape, bool)

    def run(est):
        return estimate_region(flux, var, mask, wave, z, est, 5.0, lsf).outputs

    fit = run(_variant(tmp_path, "fit", "fit", **TIGHT["fit"]))
    ppxf = run(_variant(tmp_path, "ppxf", "ppxf", **TIGHT["ppxf"]))
    _assert_agree(fit, ppxf, {"velocity": 2.0, "sigma": 3.0, "av": 0.01, "log_age": 0.02, "metallicity": 0.02})
    # the same chi^2 (pPXF divides by the good pixels, the fit by the degrees of freedom), also at the
    # default stops, which leave the fit within 0.2 % of its optimum
    np.testing.assert_allclose(fit["chi2"], ppxf["chi2"], rtol=0.01)
    fit_default = run(load_estimator("fit", threads=1))
    np.testing.assert_allclose(fit_default["chi2"], run(load_estimator("ppxf", threads=1))["chi2"], rtol=0.01)
    assert (fit_default["chi2"] < fit["chi2"] * 1.002).all()


def test_fit_mpoly_matches_ppxf_mdegree_through_a_flux_calibration_error(ssp_lib, tmp_path):
    """fit-mpoly (a multiplicative Legendre polynomial of degree 8 instead of dust) and pPXF with mdegree=8
    and no reddening, on spectra distorted by a smooth flux-calibration error: the same kinematics and
    populations, the same chi^2 (near 1, where the dusty fit without a polynomial cannot follow the
    distortion), and --save-model's rebuild gives the fit's chi^2 back."""
    pytest.importorskip("ppxf")
    rng = np.random.default_rng(5)
    n = 4
    weights = _mixtures(rng, n)
    v, sigma = rng.uniform(-150, 150, n), rng.uniform(60, 250, n)
    flux, var, wave, z, lsf, estimate_region = _observe(ssp_lib, weights, np.zeros(n), v, sigma, snr=60.0)
    x = np.linspace(-1, 1, flux.shape[-1])
    distortion = (1 + 0.08 * x - 0.06 * (1.5 * x**2 - 0.5)).astype(np.float32)
    flux, var = flux * distortion, var * distortion**2
    flux = flux + rng.normal(size=flux.shape).astype(np.float32) * np.sqrt(var)
    mask = np.zeros(flux.shape, bool)

    def ppxf_mdegree(**options):
        return _variant(tmp_path, "ppxf", "ppxf", drop=("av",), reddening=None, mdegree=8, **options)

    def run(est):
        return estimate_region(flux, var, mask, wave, z, est, 5.0, lsf).outputs

    fit_est = load_estimator("fit-mpoly", threads=1)
    fit = run(fit_est)
    tight, ppxf = run(_variant(tmp_path, "fit-mpoly", "fit", **TIGHT["fit"])), run(ppxf_mdegree(**TIGHT["ppxf"]))
    _assert_agree(tight, ppxf, {"velocity": 2.0, "sigma": 3.0, "log_age": 0.02, "metallicity": 0.02})
    assert "av" not in fit and (np.abs(fit["chi2"] - 1) < 0.15).all()
    np.testing.assert_allclose(fit["chi2"], run(ppxf_mdegree())["chi2"], rtol=0.01)  # the default stops
    dusty = estimate_region(flux, var, mask, wave, z, load_estimator("fit", threads=1), 5.0, lsf).outputs
    assert (dusty["chi2"] > fit["chi2"] + 0.05).all()  # dust alone does not take the distortion out
    _rebuild_matches(fit_est, flux, var, wave, z, lsf, fit)


def _rebuild_matches(est, flux, var, wave, z, lsf, fit):
    """The estimator's rebuild from the maps' values gives back the fit's chi^2."""
    spec = est.manifest.input
    x, rows = spec.prepare_batch(flux, var, np.zeros(flux.shape, bool), wave, z).batch()
    assert rows.size == len(flux)
    meta = spec.batch_meta(np.full(len(flux), z), wave, lsf)
    values = {k: fit[k] for k in ("velocity", "sigma", "weights")} | {"av": np.zeros(len(flux), np.float32)}
    model = est.rebuild(x, meta, values)
    used = (x[:, 2] < 0.5) & (x[:, 1] > 0)
    chi2 = (((x[:, 0] - model) / np.where(used, x[:, 1], 1)) ** 2 * used).sum(1)
    dof = used.sum(1) - est.options.working_set - 3 - 8 + 1
    np.testing.assert_allclose(chi2 / dof, fit["chi2"], rtol=1e-3)


def _gauss_hermite_spectra(ssp_lib, weights, av, v, sigma, h3, h4, snr, rng, z=0.01):
    """Spectra whose LOSVD is a Gauss-Hermite series made by pPXF's own ``losvd_rfft`` (not this
    project's), observed like MUSE with noise: (flux, var, wave, z, lsf)."""
    from ppxf.ppxf import losvd_rfft

    from survey_proc.ssp import muse_lsf_fwhm
    from survey_proc.synth import Synthesiser
    from survey_proc.synth._spectra import resample

    wave = 4750.0 + 1.25 * np.arange(3681)
    synth = Synthesiser(ssp_lib, wave, z, muse_lsf_fwhm)
    rest = weights.reshape(len(av), -1) @ synth.templates * 10.0 ** (-0.4 * av[:, None] * synth.dust_curve[None])
    npad = 2 ** int(np.ceil(np.log2(rest.shape[1] * 1.3)))
    for i in range(len(av)):
        pars = np.array([v[i] / synth.velscale, sigma[i] / synth.velscale, h3[i], h4[i]])
        kernel = losvd_rfft(pars, 1, np.array([4]), npad // 2 + 1, 1, 0.0, 1, 0.0)[:, 0, 0]
        rest[i] = np.fft.irfft(np.fft.rfft(rest[i], npad) * kernel, npad)[: rest.shape[1]]
    flux = resample(synth.wave_log * (1 + z), rest.astype(np.float32), wave).astype(np.float32)
    var = (flux / snr) ** 2
    return flux + rng.normal(size=flux.shape).astype(np.float32) * np.sqrt(var), var, wave, z, muse_lsf_fwhm(wave)


@pytest.mark.parametrize("bias", [0.0, None])
def test_fit_h4_agrees_with_ppxf_moments_4_and_finds_the_losvds_shape(ssp_lib, tmp_path, bias):
    """fit-h4 (Gauss-Hermite h3, h4) against pPXF with moments=4, without a penalty (bias=0) and with
    pPXF's default one, on the same spectra, whose LOSVDs pPXF's own code made: the same v, sigma, h3,
    h4 and errors; without the penalty both near the truth; where the LOSVD is not Gaussian, the
    Gaussian fit's chi^2 is higher."""
    pytest.importorskip("ppxf")
    from survey_proc.engine import estimate_region

    rng = np.random.default_rng(3)
    n = 4
    weights = _mixtures(rng, n)
    av, v, sigma = rng.uniform(0.1, 0.8, n), rng.uniform(-150, 150, n), rng.uniform(150, 250, n)
    h3, h4 = np.array([0.08, -0.06, 0.0, 0.04]), np.array([-0.05, 0.08, 0.06, 0.0])
    flux, var, wave, z, lsf = _gauss_hermite_spectra(ssp_lib, weights, av, v, sigma, h3, h4, 100.0, rng)
    mask = np.zeros(flux.shape, bool)
    found = {}
    h_outputs = {"h3": {"units": "1", "error": True}, "h4": {"units": "1", "error": True}}
    penalty = {} if bias is None else {"bias": bias}
    for name, section, options in (("fit-h4", "fit", TIGHT["fit"]), ("ppxf", "ppxf", {"moments": 4, **TIGHT["ppxf"]})):
        est = _variant(tmp_path, name, section, outputs=h_outputs, **options, **penalty)
        found[name] = estimate_region(flux, var, mask, wave, z, est, 5.0, lsf).outputs
    fit, ppxf = found["fit-h4"], found["ppxf"]
    h_tol = 0.005 if bias == 0 else 0.01  # pPXF's penalty shifts residuals; the fit adds its quadratic mean
    _assert_agree(fit, ppxf, {"velocity": 1.0, "sigma": 2.0, "h3": h_tol, "h4": h_tol, "av": 0.02})
    for name in ("velocity", "sigma", "h3", "h4"):
        np.testing.assert_allclose(fit[f"{name}_err"], ppxf[f"{name}_err"], rtol=0.05 if bias == 0 else 0.1)
    np.testing.assert_allclose(fit["chi2"], ppxf["chi2"], rtol=0.01)
    if bias != 0:
        return
    for name, truth in (("h3", h3), ("h4", h4), ("sigma", sigma), ("velocity", v)):
        assert (np.abs(fit[name] - truth) < 3.5 * fit[f"{name}_err"]).all(), (name, fit[name], truth)
    gauss = estimate_region(flux, var, mask, wave, z, load_estimator("fit", threads=1), 5.0, lsf).outputs
    shaped = np.hypot(h3, h4) > 0.05
    assert (gauss["chi2"][shaped] > fit["chi2"][shaped] + 0.01).all()


@pytest.mark.parametrize(
    ("fit_section", "outputs", "message"),
    [
        ({"moments": 3}, {}, "fit.moments is 2"),
        ({}, {"h3": {"units": "1", "error": True}}, "need fit.moments = 4"),
        ({"moments": 4, "bias": -0.1}, {}, "fit.bias must be >= 0"),
    ],
)
def test_gauss_hermite_options_are_checked(tmp_path, fit_section, outputs, message):
    from survey_proc.errors import ModelError

    folder = _variant_folder(tmp_path, "fit", "fit", outputs=outputs, **fit_section)
    with pytest.raises(ModelError, match=message):
        load_estimator(str(folder), threads=1)


def test_a_rebuild_refuses_maps_without_what_it_needs():
    """The best-fit spectra need every fitted parameter's map: h3 and h4 with 4 moments, A_V unless the
    fit holds it (fit-mpoly: then its held value); never a stand-in that would rebuild wrong spectra."""
    from survey_proc.errors import ModelError

    n = 2
    values = {"velocity": np.zeros(n), "sigma": np.full(n, 100.0), "av": np.zeros(n), "weights": np.ones((n, 25, 6))}
    h4 = load_estimator("fit-h4", threads=1)
    with pytest.raises(ModelError, match="needs its maps' h3, h4"):
        h4._rebuild_values(values, n)
    assert len(h4._rebuild_values(values | {"h3": np.zeros(n), "h4": np.zeros(n)}, n)) == 5
    without_av = {k: v for k, v in values.items() if k != "av"}
    with pytest.raises(ModelError, match="needs its maps' av"):
        load_estimator("fit", threads=1)._rebuild_values(without_av, n)
    held = load_estimator("fit-mpoly", threads=1)._rebuild_values(without_av, n)
    assert (held[2] == 0).all()


def test_gauss_hermite_jacobian_matches_finite_differences():
    """The LOSVD's derivatives with h3, h4 (sigma's takes the Hermite series' derivative too) against
    central differences of the model, at fixed weights."""
    import torch

    from survey_proc.estimators._fitcore import jacobian, solve_weights
    from survey_proc.ssp import muse_lsf_fwhm

    est = load_estimator("fit-h4", threads=1)
    tpl = est.templates_for(muse_lsf_fwhm(est.lam * 1.01))
    ws = torch.arange(20, 150, 11)[None].expand(2, -1)
    v, sigma, av = torch.tensor([40.0, -90.0]), torch.tensor([180.0, 130.0]), torch.tensor([0.3, 0.5])
    h = torch.tensor([[0.07, -0.05], [-0.1, 0.08]])
    y = torch.ones((2, tpl.L))
    s = solve_weights(tpl, y, torch.ones_like(y), ws, v, sigma, av, torch.zeros((2, 0)), h)
    jac = jacobian(tpl, s)
    assert jac.shape == (2, 5, tpl.L)

    def model(params):
        v_, sigma_, h3, h4 = params
        kern = tpl.kernel(v_, sigma_, torch.stack([h3, h4], 1))
        return (s.w[:, None, :] @ tpl.columns(ws, v_, sigma_, av, kern=kern))[:, 0].double()

    base = [v, sigma, h[:, 0], h[:, 1]]
    for row, (i, step) in zip((0, 1, 3, 4), enumerate((2.0, 2.0, 0.02, 0.02)), strict=True):
        up, down = list(base), list(base)
        up[i], down[i] = base[i] + step, base[i] - step
        numeric = (model(up) - model(down)) / (2 * step)
        analytic = jac[:, row].double()
        assert float(((numeric - analytic).norm(dim=1) / analytic.norm(dim=1)).max()) < 2e-3, row


def test_bad_spectra_are_flagged_never_fitted_silently(ssp_lib):
    """All masked, NaN everywhere, zero variance: flagged (no data, masked or fit failed), outputs NaN."""
    weights = np.zeros((4, 6, 25))
    weights[:, 4, 19] = 1.0
    flux, var, wave, z, lsf, estimate_region = _observe(ssp_lib, weights, [0.3] * 4, [0.0] * 4, [100.0] * 4)
    mask = np.zeros(flux.shape, bool)
    mask[0] = True  # all masked
    flux[1] = np.nan  # no finite flux
    var[2] = 0.0  # zero variance: no weight anywhere
    found = estimate_region(flux, var, mask, wave, z, load_estimator("fit", threads=1), 5.0, lsf)
    for i in range(3):
        assert found.flags[i] != 0, i
        assert np.isnan(found.outputs["log_age"][i]) and np.isnan(found.outputs["weights"][i]).all()
    assert found.flags[3] == 0 and np.isfinite(found.outputs["log_age"][3])


def test_run_method_fit_on_a_mock(mock16, tmp_path):
    """`survey-proc run --method fit`: maps with velocity, errors, chi2 and weights, close to the truth,
    reduced chi2 near 1 (the noise model is right), errors that cover about 68 % of the truths."""
    from survey_proc.cli import main

    out = tmp_path / "c.fit.zarr"
    run = ["run", "--cube", str(mock16), "--method", "fit", "--out", str(out), "--cluster", "none", "--save-model"]
    assert main(run) == 0
    maps, truth = xr.open_zarr(out), xr.open_zarr(mock16, group="truth")
    good = maps.flag.values == 0
    assert good.mean() > 0.8 and maps.attrs["model_estimator"] == "fit"
    assert 0.8 < np.median(maps.chi2.values[good]) < 1.3
    for name, bound in {"log_age": 0.12, "metallicity": 0.15, "av": 0.08, "sigma": 12.0, "velocity": 8.0}.items():
        diff = (maps[name].values - truth[name].values)[good]
        assert np.median(np.abs(diff)) < bound, name
        centred = np.abs(diff - np.median(diff))
        assert 0.45 < np.mean(centred < maps[f"{name}_err"].values[good]) < 0.9, name
    assert maps["weights"].dims == ("y", "x", "age", "metal")
    assert Flag.FIT_FAILED.name.lower() in maps.flag.attrs["flag_meanings"]
    # stellar mass surface density from the flux-calibrated mock (no distance needed); at S/N 30 the
    # mass-weighted populations lean old: +0.08 dex measured, scatter 0.10 dex
    diff = (maps.log_mass_surface_density.values - truth.log_mass_surface_density.values)[good]
    assert abs(np.median(diff)) < 0.15 and np.median(np.abs(diff - np.median(diff))) < 0.12
    assert "0.2 arcsec/pixel" in maps.log_mass_surface_density.attrs["derived_from"]
    ml_r = maps.mass_to_light_r.values[good]
    assert 0.2 < np.median(ml_r) < 8 and (maps.mass_to_light_r_err.values[good] > 0).all()

    _the_best_fit_store_rebuilds_the_fit(main, out, maps, good)


def _the_best_fit_store_rebuilds_the_fit(main, out, maps, good, free: int = 3):
    """--save-model: a valid cube store beside the maps whose model gives back the maps' chi2 (``free``:
    the non-linear parameters fitted)."""
    from survey_proc.engine import best_fit_path

    path = best_fit_path(out)
    assert main(["validate", str(path)]) == 0
    best = xr.open_zarr(path)
    used = ~best["mask"]
    k = load_estimator("fit").options.working_set  # the fit's degrees of freedom: pixels - templates - free
    chi2 = (
        ((best.flux - best.model) ** 2 / best["var"]).where(used).sum("wave") / (used.sum("wave") - k - free)
    ).values
    np.testing.assert_allclose(chi2[good], maps.chi2.values[good], rtol=1e-3)
    assert np.isnan(best.model.values[~good & ~np.isfinite(maps.chi2.values)]).all()


@pytest.mark.parametrize(("model", "free"), [("fit-mpoly", 2 + 8), ("fit-h4", 5)])
def test_save_model_rebuilds_fit_mpoly_and_fit_h4(mock16, tmp_path, model, free):
    """The best-fit spectra of a fit without A_V (fit-mpoly: its maps have no av, the rebuild holds it
    at 0; the store's write used to fail on the missing map) and of one with h3, h4 (the rebuild's
    LOSVD takes them) give back the maps' chi2."""
    from survey_proc.cli import main

    out = tmp_path / f"{model}.fit.zarr"
    run = ["run", "--cube", str(mock16), "--method", "fit", "--model", model, "--out", str(out), "--cluster", "none"]
    assert main([*run, "--save-model"]) == 0
    maps = xr.open_zarr(out)
    assert ("av" in maps) == (model != "fit-mpoly") and ("h4" in maps) == (model == "fit-h4")
    _the_best_fit_store_rebuilds_the_fit(main, out, maps, maps.flag.values == 0, free)


def test_mass_surface_density_of_a_noise_free_mock_is_its_truth(ssp_lib, tmp_path):
    """At S/N 3000 the fit's Sigma* is the mock's (0.003 dex measured): the flux normalisation, the
    weights' scale, M/L and 4 pi (1+z)^5 f / Omega are all carried right; a catalogue of the same
    spectra gets no Sigma* (no pixel area) and says so."""
    from survey_proc.engine import RunConfig, prepare_cube, run
    from survey_proc.stores import consolidate, release_store
    from survey_proc.synth import MockConfig, write_mock

    cube = tmp_path / "h.zarr"
    write_mock(cube, MockConfig(nx=4, ny=4, seed=7, snr=3000.0, chunk=4), ssp_lib)
    run(RunConfig(cube=str(cube), out=str(tmp_path / "h.fit.zarr"), model="fit", cluster="none", progress=False))
    maps, truth = xr.open_zarr(tmp_path / "h.fit.zarr"), xr.open_zarr(cube, group="truth")
    good = maps.flag.values == 0
    diff = (maps.log_mass_surface_density.values - truth.log_mass_surface_density.values)[good]
    assert good.sum() >= 12 and np.abs(np.median(diff)) < 0.02

    zarr.open_group(str(cube), mode="r+").attrs.pop("pixel_scale_arcsec")
    consolidate(cube)
    job = prepare_cube(RunConfig(cube=str(cube), out=str(tmp_path / "n.zarr"), model="fit", cluster="none"))
    release_store(job.rc.out)
    assert "log_mass_surface_density" not in job.names and "log_mass_flux" in job.names
    assert "no pixel scale" in job.settings["stellar mass surface density"]


def test_save_model_needs_the_fit(mock16, tmp_path, capsys):
    from survey_proc.cli import main
    from survey_proc.engine import write_best_fit
    from survey_proc.errors import OptionError

    assert main(["run", "--cube", str(mock16), "--out", str(tmp_path / "m.zarr"), "--save-model"]) != 0
    assert "--save-model needs --method fit" in capsys.readouterr().err
    with pytest.raises(OptionError, match="no maps store"):
        write_best_fit(tmp_path / "nothing.zarr")


def test_resampling_covariance_is_that_of_the_interpolation_matrix():
    """The covariance linear interpolation leaves between model pixels (lags 0-2, relative to a constant
    data variance) equals A A' of the explicit interpolation matrix, on a grid coarser than the data at
    one end and finer at the other; on the data's own grid there is none, and the error inflation is 1."""
    from survey_proc.preprocess import error_inflation, resampling_covariance

    wave = 4750.0 + 1.25 * np.arange(400)
    src = np.exp(np.linspace(np.log(4760.0), np.log(5230.0), 330))  # ~1.13 A pixels: finer, then coarser
    left = np.clip(np.searchsorted(wave, src) - 1, 0, wave.size - 2)
    w1 = (src - wave[left]) / (wave[left + 1] - wave[left])
    a = np.zeros((src.size, wave.size))
    a[np.arange(src.size), left], a[np.arange(src.size), left + 1] = 1 - w1, w1
    full = a @ a.T
    cov = resampling_covariance(wave, src)
    for k in range(3):
        np.testing.assert_allclose(cov[k, : src.size - k], np.diagonal(full, k), atol=1e-12)
    assert np.abs(np.triu(full, 3)).max() == 0  # nothing beyond lag 2 here
    good = np.ones((1, src.size), bool)
    w = 1 / np.diagonal(full)
    np.testing.assert_allclose(error_inflation(cov, good), (w[:, None] * w[None] * full).sum() / w.sum())
    np.testing.assert_allclose(error_inflation(resampling_covariance(wave, wave[10:300]), good[:, :290]), 1.0)


def test_resampling_covariance_compiled_is_numpys():
    """The compiled covariance (one model grid per spectrum, a catalogue's redshifts) is the NumPy
    path's to the last bit, for grids running past either end of the data; a grid that does not
    increase takes the NumPy path."""
    from survey_proc.preprocess._covariance import _resampling_covariance_numpy, resampling_covariance

    wave = 3800.0 + 1.5 * np.arange(3000)
    lam = np.exp(np.linspace(np.log(3700.0), np.log(8800.0), 2000))
    src = lam[None] * (1 + np.array([0.0, 0.02, 0.1, 0.4]))[:, None]
    np.testing.assert_array_equal(resampling_covariance(wave, src), _resampling_covariance_numpy(wave, src))
    np.testing.assert_array_equal(resampling_covariance(wave, lam), _resampling_covariance_numpy(wave, lam))
    rough = lam[::-1].copy()
    np.testing.assert_array_equal(resampling_covariance(wave, rough), _resampling_covariance_numpy(wave, rough))


def test_fit_errors_match_the_scatter_of_noise_realisations():
    """Monte Carlo (issue 18): on MUSE's 1.25 A pixels, resampled onto the fit's grid, the fits' scatter
    over noise realisations is their velocity and sigma errors (the resampling's shared noise taken in:
    without it the scatter is ~1.2x the errors), and within 0.7-1.15x for A_V and the populations."""
    from benchmarks.fit_errors import check

    result = check(bases=6, r=40, seed=3)
    muse = result["muse"]["median"]
    for name in ("velocity", "sigma"):
        assert 0.85 < muse["ratios"][name] < 1.15, (name, muse["ratios"][name])
        assert muse["ratios_pixels_independent"][name] > 1.1, name
        assert 0.85 < result["model grid"]["median"]["ratios"][name] < 1.15, name
    for name in ("av", "log_age", "metallicity"):
        assert 0.7 < muse["ratios"][name] < 1.15, (name, muse["ratios"][name])
