"""User-facing errors: one base class for the CLI, and the built-in kinds callers already catch."""

from __future__ import annotations

from survey_proc.errors import CubeError, DataUnavailableError, ModelError, SurveyProcError


def test_error_kinds():
    for kind in (CubeError, ModelError, DataUnavailableError):
        assert issubclass(kind, SurveyProcError)
    assert issubclass(CubeError, ValueError) and issubclass(DataUnavailableError, FileNotFoundError)
