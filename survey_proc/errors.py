"""Errors that carry a message meant for the user (the CLI prints them without a traceback)."""


class SurveyProcError(Exception):
    """Base class: the message says what is wrong and, where possible, how to fix it."""


class CubeError(SurveyProcError, ValueError):
    """A cube, spectra or maps store that does not follow the schema."""


class CoverageError(CubeError):
    """A store none of whose spectra covers a model's wavelength range (at their redshifts)."""


class ModelError(SurveyProcError):
    """A model bundle that is missing, corrupt or inconsistent with its manifest."""


class DataUnavailableError(SurveyProcError, FileNotFoundError):
    """Reference data (SSP library, test cube) that could neither be found nor fetched."""


class OptionError(SurveyProcError, ValueError):
    """An option or input value outside what survey-proc can make sense of (the message gives the range)."""
