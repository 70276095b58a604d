"""The SSP libraries survey-proc knows, what each may be used for, and loading one by name.

E-MILES (from the ``ppxf`` sdist) is the default everywhere. The others come from the pinned
``sdss-mangadap`` wheel (:mod:`._mangadap`). The project's rule splits them in two roles:

- ``calibration``: may feed training, calibration and tuning (E-MILES, the M11 variants, MaStar, BPASS);
- ``evaluation``: reserved for independent evaluation (MIUSCAT, BC03); they must never feed
  training, calibration or tuning, or they would no longer measure anything independent.

Code that trains, calibrates or tunes calls :func:`require_use` on the library it was given (or
loads it with ``load_ssp_library(name, use=...)``), which refuses an evaluation library with
:class:`LibraryRoleError`. Mocks and benchmarks may use any library.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from survey_proc.errors import OptionError
from survey_proc.ssp._library import SSPLibrary, load_emiles
from survey_proc.ssp._mangadap import load_wheel_library
from survey_proc.ssp._mangadap_grids import WHEEL_LIBRARIES

CALIBRATION = "calibration"
EVALUATION = "evaluation"
#: what a library may be used for -> the roles that allow it
USES: dict[str, frozenset[str]] = {
    "training": frozenset({CALIBRATION}),
    "calibration": frozenset({CALIBRATION}),
    "tuning": frozenset({CALIBRATION}),
    "evaluation": frozenset({CALIBRATION, EVALUATION}),
}


@dataclass(frozen=True)
class LibraryInfo:
    """A library survey-proc can load by name, and its role."""

    name: str
    role: str  #: calibration | evaluation
    title: str
    package: str  #: the registry package that ships it


_MANGADAP = "sdss-mangadap==4.5.0 (wheel)"
_ROLES = {
    "m11-miles": CALIBRATION,
    "m11-stelib": CALIBRATION,
    "m11-elodie": CALIBRATION,
    "m11-marcs": CALIBRATION,
    "mastar": CALIBRATION,
    "bpass": CALIBRATION,
    "miuscat": EVALUATION,
    "bc03": EVALUATION,
}

#: every library by name, E-MILES first
SSP_LIBRARIES: dict[str, LibraryInfo] = {
    "emiles": LibraryInfo("emiles", CALIBRATION, "E-MILES (Vazdekis et al. 2016), Salpeter", "ppxf==8.2.6 (sdist)"),
    **{name: LibraryInfo(name, role, WHEEL_LIBRARIES[name].title, _MANGADAP) for name, role in _ROLES.items()},
}


class LibraryRoleError(OptionError):
    """An SSP library reserved for independent evaluation was given to training, calibration or tuning."""


def library_names(role: str | None = None) -> tuple[str, ...]:
    """The names of the known libraries (of one ``role`` only, if given), E-MILES first."""
    return tuple(name for name, info in SSP_LIBRARIES.items() if role is None or info.role == role)


def require_use(lib: SSPLibrary, use: str) -> SSPLibrary:
    """``lib`` itself if it may be used for ``use`` (training | calibration | tuning | evaluation);
    :class:`LibraryRoleError` otherwise. A library counts as ``evaluation`` if either its own ``role``
    or the registry's role for its ``name`` says so (a copy with another role does not get through)."""
    _check_use(lib.name, lib.role, use)
    return lib


def _check_use(name: str, role: str, use: str) -> None:
    if use not in USES:
        raise ValueError(f"unknown use {use!r}; known: {', '.join(USES)}")
    known = SSP_LIBRARIES.get(name)
    roles = {role} | ({known.role} if known else set())
    if not roles <= USES[use]:
        raise LibraryRoleError(
            f"the SSP library {name!r} is reserved for independent evaluation and must not be used for "
            f"{use}; libraries for training, calibration and tuning: {', '.join(library_names(CALIBRATION))}"
        )


def load_ssp_library(
    name: str | os.PathLike | None = "emiles", *, ssp_dir: str | os.PathLike | None = None, use: str | None = None
) -> SSPLibrary:
    """An SSP library by name (:data:`SSP_LIBRARIES`; default E-MILES), from its compact cache,
    fetched and converted on first use.

    ``ssp_dir``: a folder of E-MILES FITS files supplied by hand (E-MILES only; also
    ``$SURVEY_PROC_SSP_DIR`` or dask config ``survey-proc.ssp.dir``). A path given as ``name`` is read
    as such a folder, as before libraries had names. ``use``: what the caller will do with it
    (training | calibration | tuning | evaluation); an evaluation library is refused for the first
    three before anything is fetched.
    """
    if name is None:
        name = "emiles"
    if isinstance(name, os.PathLike) or (isinstance(name, str) and name not in SSP_LIBRARIES and _is_path(name)):
        name, ssp_dir = "emiles", name
    info = SSP_LIBRARIES.get(str(name))
    if info is None:
        raise OptionError(f"unknown SSP library {name!r}; known: {', '.join(SSP_LIBRARIES)}")
    if ssp_dir is not None and info.name != "emiles":
        raise OptionError(f"ssp_dir supplies E-MILES files by hand; it cannot be used with library {info.name!r}")
    if use is not None:
        _check_use(info.name, info.role, use)
    lib = load_emiles(ssp_dir) if info.name == "emiles" else load_wheel_library(info.name)
    return dataclasses.replace(lib, name=info.name, role=info.role)


def _is_path(name: str) -> bool:
    return os.sep in name or "/" in name or Path(name).expanduser().exists()
