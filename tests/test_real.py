"""The real-data scoreboard's scoring (survey-proc bench --real); the runs themselves are benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from survey_proc.bench._real import Estimate, RealSet, reference_ranges, score, summarise


def _est(values: dict, errors: dict, flags) -> Estimate:
    return Estimate(
        {k: np.asarray(v, float) for k, v in values.items()},
        {k: np.asarray(v, float) for k, v in errors.items()},
        np.asarray(flags),
        "m@1",
    )


def test_a_pair_agrees_within_two_errors_of_the_range_and_flags_pass():
    rs = RealSet("s", Path("s.zarr"), ["a", "b", "c"], ["net"], ["p1", "p2"], {"a": {"sigma": (100.0, 100.0)}}, "pub")
    ppxf = {
        "p1": _est({"sigma": [110.0, 200.0, 50.0]}, {"sigma": [np.nan] * 3}, [0, 0, 0]),
        "p2": _est({"sigma": [120.0, 210.0, 60.0]}, {"sigma": [np.nan] * 3}, [0, 8, 0]),  # b's flagged: left out
    }
    refs = reference_ranges(rs, ppxf)
    assert refs["a"]["sigma"][:2] == (100.0, 120.0) and "pub" in refs["a"]["sigma"][2]
    assert refs["b"]["sigma"][:2] == (200.0, 200.0)
    net = _est({"sigma": [130.0, 150.0, 90.0]}, {"sigma": [5.0, 10.0, 10.0]}, [0, 0, 128])
    rows = {r["object"]: r for r in score(rs, {"net": net}, refs)}
    assert rows["a"]["agrees"] and rows["a"]["pull"] == 2.0  # 10 km/s above the range, 2 errors
    assert not rows["b"]["agrees"] and not rows["b"]["passes"]  # 5 errors off and unflagged
    assert not rows["c"]["agrees"] and rows["c"]["passes"]  # 3 errors off but flagged
    sm = summarise(list(rows.values()))["net"]
    assert sm["pairs"] == 3 and abs(sm["pass_fraction"] - 2 / 3) < 1e-9 and abs(sm["unflagged_fraction"] - 2 / 3) < 1e-9
    assert not sm["acceptance"]


def test_the_bench_verb_takes_real():
    from survey_proc.cli import build_parser

    args = build_parser().parse_args(["bench", "--real", "--json", "x/real.json"])
    assert args.real and args.json == "x/real.json"


def test_narrowband_is_scored_on_the_synthetic_photometry_of_the_real_sdss_spectra(tmp_path):
    from survey_proc.bench._real import photometric_estimate, ppxf_setups, sdss_set

    rs = sdss_set(tmp_path, ppxf_setups(tmp_path))
    assert rs.photometric == ["narrowband"]
    est = photometric_estimate(rs, "narrowband", tmp_path, None)
    assert (tmp_path / "sdss-jpas36.zarr").exists() and est.model_id.startswith("narrowband@")
    assert set(est.values) >= {"log_age", "metallicity"}
    fitted = est.flags == 0
    assert fitted.sum() >= 2  # the three galaxies' spectra cover every band: at most one flagged
    assert np.all((est.values["log_age"][fitted] > 8.0) & (est.values["log_age"][fitted] < 10.3))
    assert np.all(np.isfinite(est.errors["metallicity"][fitted]) & (est.errors["metallicity"][fitted] > 0))
    refs = {o: {"log_age": (9.0, 9.0, ["x"])} for o in rs.objects}
    rows = score(rs, {"narrowband": est}, refs)
    assert {r["estimator"] for r in rows} == {"narrowband"} and len(rows) == len(rs.objects)


def test_the_rebuilt_spectra_are_recorded_and_tabled():
    from survey_proc.bench._real import RealReport, real_markdown, rebuilt_spectra
    from survey_proc.stores import Flag

    recon = _est({"sigma": [1.0, 2.0, 3.0]}, {"sigma": [1.0] * 3}, [0, int(Flag.POOR_FIT), 1])
    recon.fit_quality = {"chi2": np.array([0.9, 5.0, np.nan]), "chi2_floor": np.array([0.8, 3.5, np.nan])}
    plain = _est({"sigma": [1.0, 2.0, 3.0]}, {"sigma": [1.0] * 3}, [0, 0, 0])
    got = rebuilt_spectra({"bundles/recon": recon, "plain": plain})
    assert list(got) == ["recon"] and got["recon"]["poor_fit"] == 1  # estimators without a chi2: none
    assert got["recon"]["chi2"][:2] == [0.9, 5.0] and np.isnan(got["recon"]["chi2"][2])
    report = RealReport({"s": {"summary": {}, "rebuilt_spectra": got}}, {}, [])
    md = real_markdown(report, "r.png")
    assert "| s | recon | 0.90 / 2.95 / 5.00 | 0.80 / 2.15 / 3.50 | 1 |" in md
    assert "Rebuilt spectra" not in real_markdown(RealReport({"s": {"summary": {}}}, {}, []), "r.png")
