"""The library calibration (benchmarks/library_calibration.py) on spaxels whose answers are known, its
manifest round trip, and its refusal of the evaluation libraries."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import benchmarks.library_calibration as lc
import benchmarks.library_calibration_fit as fit
from survey_proc.estimators import ErrorSystematics, read_manifest
from survey_proc.ssp import LibraryRoleError


def _spaxels(name: str, offset: float, score: float, n: int = 400, err: float = 0.1, seed: int = 0) -> fit.Spaxels:
    """n spaxels whose estimates scatter by ``err`` (and are shifted by ``offset``) with errors ``err``."""
    rng = np.random.default_rng(seed)
    diff = offset + err * rng.standard_normal((n, len(fit.PROPERTIES)))
    return fit.Spaxels(
        name, diff, np.full(diff.shape, err), np.full(n, score) + 0.01 * rng.random(n), np.zeros(n, bool)
    )


def test_terms_bring_the_calibration_coverage_to_target_within_the_in_library_cap():
    ref, cal = _spaxels("emiles", 0.0, 1.0), _spaxels("other", 0.3, 3.0, seed=1)
    opts = fit.Options()
    sys = fit.choose_terms(cal, [ref], (1.5, 2.5), opts)
    for k, p in enumerate(fit.PROPERTIES):
        assert fit.coverage(cal, k, sys) == pytest.approx(0.68, abs=0.01)
        assert fit.coverage(ref, k, sys) == pytest.approx(fit.coverage(ref, k, ErrorSystematics()))  # below the ramp
        assert sys.terms[p] < 0.02 and 0.2 < sys.novelty_terms[p] < 0.5
    # a ramp that starts below the in-library scores: the cap holds the in-library coverage at 0.74
    sys = fit.choose_terms(cal, [ref, ref], (0.0, 2.5), opts)
    assert all(fit.coverage(ref, k, sys) <= 0.74 for k in range(3))
    assert all(fit.coverage(cal, k, sys) < 0.68 for k in range(3))


def test_the_library_systematic_covers_what_the_capped_terms_leave_and_stays_out_of_the_error():
    ref, cal = _spaxels("emiles", 0.0, 1.0), _spaxels("other", 0.3, 1.0, seed=1)  # a shift the score cannot see
    opts = fit.Options()
    capped = fit.choose_terms(cal, [ref], (1.5, 2.5), opts)
    assert all(fit.coverage(cal, k, capped) < 0.3 for k in range(3))  # capped terms cannot reach it
    library = fit.choose_library_terms(cal, capped, np.inf, opts)
    sys = replace(capped, library_terms=library)
    for k, p in enumerate(fit.PROPERTIES):
        assert 0.2 < library[p] < 0.5  # about the shift
        assert fit.coverage(cal, k, fit.total(sys)) == pytest.approx(0.68, abs=0.01)
        assert fit.coverage(ref, k, sys) == pytest.approx(fit.coverage(ref, k, capped))  # <name>_err unchanged
    scores = fit.library_scores(cal, sys, np.inf)["metallicity"]
    assert scores["coverage_68"] < 0.3 and scores["coverage_68_total"] == pytest.approx(0.68, abs=0.01)
    assert scores["ok_2sigma_total"] > scores["ok_2sigma"]
    assert fit.choose_library_terms(ref, capped, np.inf, opts) == {p: 0.0 for p in fit.PROPERTIES}  # nothing to add


def test_the_threshold_flags_what_the_errors_miss_and_keeps_to_its_bounds():
    ref, cal = _spaxels("emiles", 0.0, 1.0), _spaxels("other", 1.0, 3.0, seed=1)
    opts, none = fit.Options(), ErrorSystematics()
    got = fit.choose_threshold(cal, [ref], none, 5.0, opts)  # every calibration spaxel off: flag them all
    assert got["bound"] == "target reached" and got["in_library_floor"] <= got["threshold"] < 3.01
    assert min(fit.ok_share(cal, k, none, got["threshold"]) for k in range(3)) >= 0.9
    got = fit.choose_threshold(_spaxels("other", 1.0, 0.5, seed=2), [ref], none, 5.0, opts)  # scores in library
    assert got["bound"].startswith("in-library floor") and got["threshold"] == got["in_library_floor"]
    got = fit.choose_threshold(_spaxels("other", 0.0, 3.0, seed=2), [ref], none, 1.4, opts)  # nothing to flag
    assert got["threshold"] == 1.4 and got["bound"].startswith("the validation threshold")


def test_apply_writes_the_values_and_uncalibrated_undoes_them(tmp_path, monkeypatch, default_bundle):
    import shutil

    root = tmp_path / "models"
    shutil.copytree(default_bundle, root / "default")
    monkeypatch.setattr(lc, "PACKAGED", root)
    monkeypatch.setattr(lc, "PACKAGED_SUMS", root / "SHA256SUMS")
    monkeypatch.setattr(lc, "compute_packaged_sums", lambda: "sums\n")
    text = (root / "default" / "manifest.json").read_text()
    indent, end = len(text.splitlines()[1]) - len(text.splitlines()[1].lstrip(" ")), "\n" * text.endswith("\n")
    original = json.dumps(lc.uncalibrated(json.loads(text)), indent=indent) + end  # in the file's own layout
    entry = {"terms": {"av": 0.02}, "novelty": {"output": "ood_score", "from": 1, "to": 2, "terms": {"av": 0.3}}}
    res = {
        "model": "default",
        "calibration_libraries": ["mastar"],
        "error_systematics": entry,
        "ramp_start_quantile": 0.75,
    }
    lc.apply([{**res, "ood": {"threshold": 0.9}}], fit.Options())
    report = tmp_path / "report.json"  # a second calibration (from a report: --from) replaces the first
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(fit.Options(seeds=(5,))).items()}
    report.write_text(json.dumps({"options": options, "models": [{**res, "ood": {"threshold": 1.2}}]}))
    lc.apply_report(report)
    manifest = read_manifest(root / "default")
    assert manifest.error_systematics.novelty_terms == {"av": 0.3}
    assert dict(manifest.flag_rules)["OUT_OF_DISTRIBUTION"]["threshold"] == 1.2
    record = manifest.raw[lc.RECORD_KEY]
    assert record["never_used"] == ["miuscat", "bc03"] and record["ood_threshold_before"] > 1.2
    assert record["mocks"]["seeds"] == [5]
    assert (root / "SHA256SUMS").read_text() == "sums\n"
    assert json.dumps(lc.uncalibrated(manifest.raw), indent=indent) + end == original  # undone
    lc.write_manifest_like(root / "default" / "manifest.json", lc.uncalibrated(manifest.raw))
    assert (root / "default" / "manifest.json").read_text() == original


def test_library_only_adds_the_systematic_and_a_full_report_without_it_keeps_it(tmp_path, monkeypatch):
    import shutil

    from survey_proc.estimators import resolve_model

    root = tmp_path / "models"
    for name in ("default", "fit"):
        shutil.copytree(resolve_model(name).parent, root / name)
    monkeypatch.setattr(lc, "PACKAGED", root)
    monkeypatch.setattr(lc, "PACKAGED_SUMS", root / "SHA256SUMS")
    monkeypatch.setattr(lc, "compute_packaged_sums", lambda: "sums\n")
    before = {n: read_manifest(root / n) for n in ("default", "fit")}
    library = {"log_age": 0.3, "metallicity": 0.1, "av": 0.2}
    results = [
        {"model": n, "calibration_libraries": ["mastar"], "error_systematics": {"library": library, "meaning": "m"}}
        for n in ("default", "fit")
    ]
    lc.apply(results, fit.Options(library_only=True))
    for name in ("default", "fit"):
        manifest = read_manifest(root / name)
        assert manifest.error_systematics.library_terms == library
        assert manifest.raw[lc.RECORD_KEY]["library_systematic"]["command"].endswith("--library-only")
        kept = replace(before[name].error_systematics, library_terms=library)
        assert manifest.error_systematics == kept  # the calibrated terms as they were
        assert dict(manifest.flag_rules).get("OUT_OF_DISTRIBUTION") == dict(before[name].flag_rules).get(
            "OUT_OF_DISTRIBUTION"
        )
    assert "error_systematics" not in lc.uncalibrated(read_manifest(root / "fit").raw)  # a fit: nothing to restore
    assert lc.ood_threshold(read_manifest(root / "fit").raw) == np.inf
    # a full calibration from a report made before the library systematic keeps the manifest's
    entry = {"terms": {"av": 0.02}, "novelty": {"output": "ood_score", "from": 1, "to": 2, "terms": {"av": 0.3}}}
    full = {"model": "default", "calibration_libraries": ["mastar"], "error_systematics": entry}
    lc.apply([{**full, "ramp_start_quantile": 0.5, "ood": {"threshold": 1.2}}], fit.Options())
    manifest = read_manifest(root / "default")
    assert manifest.error_systematics.library_terms == library and manifest.error_systematics.terms == {"av": 0.02}
    assert "library_systematic" in manifest.raw[lc.RECORD_KEY]


def test_a_full_calibration_of_a_bundle_without_a_novelty_flag_is_refused_before_measuring(tmp_path):
    with pytest.raises(ValueError, match=r"fit: no out_of_distribution rule.*--library-only"):
        lc.calibrate(fit.Options(models=("fit",)), tmp_path)
    assert not list(tmp_path.iterdir())  # no mock was made


def test_a_property_the_model_does_not_estimate_gets_no_term():
    cal = _spaxels("other", 0.3, 1.0, seed=1)
    cal.diff[:, 2] = cal.err[:, 2] = np.nan  # no A_V (fit-mpoly)
    library = fit.choose_library_terms(cal, ErrorSystematics(), np.inf, fit.Options())
    assert set(library) == {"log_age", "metallicity"} and all(0.2 < v < 0.5 for v in library.values())
    scores = fit.library_scores(cal, ErrorSystematics(library_terms=library), np.inf)
    assert "av" not in scores and scores["metallicity"]["coverage_68_total"] == pytest.approx(0.68, abs=0.01)


def test_the_evaluation_libraries_are_refused(tmp_path):
    with pytest.raises(LibraryRoleError):
        lc.mock_cubes(["miuscat"], fit.Options(seeds=(1,), size=4), tmp_path)
    assert lc.covering_libraries(read_manifest(lc.PACKAGED / "default")) == ["m11-marcs", "mastar", "bpass"]
    # a model trained on other libraries is calibrated only on those it never saw
    assert lc.covering_libraries(read_manifest(lc.PACKAGED / "muse-mix")) == ["m11-stelib", "mastar", "bpass"]


def test_the_shipped_manifests_carry_their_calibration():
    for model in (
        *fit.Options().models,
        "muse-av3",
        "muse-recon",
        "muse-mix",
        "muse-mix-recon",
        "muse-mix-recon-k5-distil",
    ):
        manifest = read_manifest(lc.PACKAGED / model)
        record = manifest.raw[lc.RECORD_KEY]
        assert set(record["libraries"]).isdisjoint(record["never_used"]) and "miuscat" in record["never_used"]
        trained = manifest.raw["training"]["config"]["trainset"].get("libraries") or {}
        assert set(record["libraries"]).isdisjoint(trained)  # calibrated on libraries held out from training
        assert manifest.error_systematics and manifest.error_systematics.novelty_output == "ood_score"
        assert set(manifest.error_systematics.library_terms) == set(fit.PROPERTIES)  # reported as <name>_sys_err
        assert dict(manifest.flag_rules)["OUT_OF_DISTRIBUTION"]["threshold"] <= record["ood_threshold_before"]
    for model in ("fit", "fit-7100", "fit-h4", "fit-mpoly"):  # the fit: the library systematic alone
        manifest = read_manifest(lc.PACKAGED / model)
        estimated = {p for p in fit.PROPERTIES if p in {o.name for o in manifest.outputs}}  # fit-mpoly: no av
        assert set(manifest.error_systematics.library_terms) == estimated and "log_age" in estimated
        assert not manifest.error_systematics.terms and not manifest.error_systematics.novelty_terms
        assert set(manifest.raw[lc.RECORD_KEY]["libraries"]).isdisjoint(manifest.raw[lc.RECORD_KEY]["never_used"])


def test_the_ramp_start_that_serves_the_calibration_spaxels_best_is_kept():
    ref = _spaxels("emiles", 0.0, 1.0)
    ref.score[:] = np.linspace(0.5, 1.5, ref.score.size)  # the in-library scores spread up to the threshold
    cal = _spaxels("other", 0.3, 1.8, seed=1)
    sys, _, start, tried = fit.choose_ramp(cal, [ref], 2.0, fit.Options())
    assert set(tried) == {"0.5", "0.75", "0.9"} and f"{start:g}" in tried
    assert tried[f"{start:g}"]["worst_ok_2sigma"] == max(t["worst_ok_2sigma"] for t in tried.values())
    assert sys.novelty_from == pytest.approx(np.quantile(ref.score, start)) and sys.novelty_to == 2.0
    assert all(v <= fit.Options().max_term for v in [*sys.terms.values(), *sys.novelty_terms.values()])
