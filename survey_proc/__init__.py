"""survey-proc: maps of stellar-population properties from survey data with neural estimators on Dask.

``survey_proc.run(cube, model=None, out=None, client=None, **options)`` is the Python API
(:mod:`survey_proc.api`, docs/api.md); it is imported on first use, so ``import survey_proc`` stays light.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("survey-proc")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from survey_proc import config  # noqa: F401  (registers the dask.config defaults)

__all__ = ["__version__", "run"]


def __getattr__(name: str):
    """``survey_proc.run``: the Python API, imported on first use (PEP 562)."""
    if name == "run":
        from survey_proc.api import run

        return run
    raise AttributeError(f"module 'survey_proc' has no attribute {name!r}")
