"""survey_proc.progress: bars hidden unless the caller shows them."""

from __future__ import annotations

from survey_proc import progress


def test_bars_are_hidden_by_default(capsys):
    assert not progress.enabled()
    assert list(progress.track(range(3), desc="hidden")) == [0, 1, 2]
    progress.write("not shown")
    assert capsys.readouterr().err == ""


def test_shown_draws_bars_and_restores(capsys):
    with progress.shown():
        assert progress.enabled()
        with progress.bar(total=4, desc="work", unit="step") as advance:
            advance(4)
        progress.write("above the bars")
    assert not progress.enabled()
    captured = capsys.readouterr()
    assert "work" in captured.err and "4/4" in captured.err
    assert "above the bars" in captured.out


def test_shown_can_be_turned_off_inside():
    with progress.shown(), progress.shown(False):
        assert not progress.enabled()
