"""survey-proc: maps of stellar-population properties from survey data with neural estimators on Dask."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("survey-proc")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from survey_proc import config  # noqa: F401  (registers the dask.config defaults)
