"""benchmarks/fit_profile.py: the fit's time by stage, and the estimator left as it was found."""

from __future__ import annotations

import json

from benchmarks import fit_profile
from survey_proc.estimators import _fit, _fitstream


def test_fit_profile_times_every_stage_and_restores_the_estimator(tmp_path):
    before = {(owner, name): getattr(owner, name) for _, owner, name in fit_profile.STAGES}
    out = tmp_path / "fit_profile.json"
    fit_profile.main(["--spectra", "24", "--workdir", str(tmp_path / "work"), "--json", str(out)])
    report = json.loads(out.read_text())["result"]
    stages = report["stages_ms_per_spectrum"]
    assert report["fitted"] > 0 and report["steps_per_spectrum"] >= 1
    assert all(v > 0 for v in stages.values())  # every stage was reached
    assert stages["Levenberg-Marquardt steps"] < stages["fit (all steps)"] < stages["predict (the estimator)"]
    assert abs(report["accuracy"]["velocity"]["bias"]) < 20 and report["accuracy"]["sigma"]["robust_sigma"] < 40
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").stat().st_size > 0
    assert all(getattr(owner, name) is func for (owner, name), func in before.items())
    assert _fit.fit_stream is _fitstream.fit_stream
