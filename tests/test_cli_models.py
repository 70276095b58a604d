"""``survey-proc models`` (and the training verbs' summaries: test_training.py, test_store.py)."""

from __future__ import annotations

from survey_proc.cli import main
from survey_proc.estimators import load_manifest, packaged_models


def test_models_lists_every_packaged_model_with_its_held_out_scores(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert names == list(packaged_models())
    first = lines[0]
    assert first.startswith("default      " + load_manifest("default").model_id)
    assert lines[1].startswith(" " * 13 + "held-out robust sigma at S/N 30: log_age ")
    # a bundle without held-out scores by S/N (photometric) gets no second line
    narrowband = lines.index(next(line for line in lines if line.startswith("narrowband")))
    assert not lines[narrowband + 1].startswith(" ")
    # a bundle with an SSP-library systematic says how large (muse-mix's [M/H]: 0.26 dex)
    mix = lines.index(next(line for line in lines if line.startswith("muse-mix ")))
    library = load_manifest("muse-mix").error_systematics.library_terms
    assert lines[mix + 2] == " " * 13 + "SSP-library systematic (<name>_sys_err, not in <name>_err): " + ", ".join(
        f"{k} {v:.2f}" for k, v in library.items()
    )
    assert "metallicity 0.26" in lines[mix + 2]


def test_evaluate_options_reach_the_library_only_when_given(monkeypatch, capsys):
    """--snr and --n: the library's defaults unless given (one place per default)."""
    import survey_proc.training as training

    calls = []

    def fake_evaluate(model, **kw):
        calls.append(kw)
        return {"snr": {"30": {"model": {"n": 5, "log_age": {"bias": 0.0, "robust_sigma": 0.1}}}}, "figure": "f.png"}

    monkeypatch.setattr(training, "evaluate", fake_evaluate)
    assert main(["evaluate", "m", "--quiet"]) == 0
    assert main(["evaluate", "m", "--snr", "10,20", "--n", "7", "--quiet"]) == 0
    assert "snrs" not in calls[0] and "n" not in calls[0]
    assert calls[1]["snrs"] == [10.0, 20.0] and calls[1]["n"] == 7
    assert str(calls[0]["png"]) == "evaluate_predicted_vs_true.png"
    out = capsys.readouterr().out
    assert "S/N   30 model  n=    5  log_age bias +0.000 sigma 0.100 c68 nan" in out and "figure: f.png" in out
