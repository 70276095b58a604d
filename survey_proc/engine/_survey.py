"""A survey: many cubes in one run (``survey-proc run --survey survey.yaml`` or several ``--cube``).

The survey file is YAML: either a list of cubes, or a mapping with ``cubes`` and defaults for every
cube (``model``, ``min_snr``, ``out_dir``). Each cube is a path or a glob (relative paths are taken
from the file's folder), or a mapping with ``cube`` and its own ``redshift``, ``min_snr``, ``out``,
``model``, ``mw_ebv`` (Milky Way foreground E(B-V))::

    model: default
    out_dir: maps              # maps go to maps/<name>.maps.zarr (default: beside each cube)
    cubes:
      - data/*.zarr            # every match, redshift from each cube's attributes
      - cube: data/ngc0628.zarr
        redshift: 0.00219      # a later entry for the same cube overrides earlier ones
        min_snr: 3
        mw_ebv: 0.032          # undo the Milky Way's foreground reddening

A glob that matches nothing and a path that does not exist stay in the list, to be reported as
failed with the reason when the survey runs.
"""

from __future__ import annotations

import dataclasses
import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from survey_proc.engine._config import RunConfig, default_output
from survey_proc.engine._summary import CubeOutcome
from survey_proc.errors import SurveyProcError

ENTRY_KEYS = {"cube": str, "redshift": float, "min_snr": float, "out": str, "model": str, "mw_ebv": float}
TOP_KEYS = {"cubes", "model", "min_snr", "out_dir"}


class SurveyError(SurveyProcError):
    """A survey file that cannot be read (the message names the file, entry and key)."""


def _expand(pattern: str, base: Path) -> list[str]:
    """Paths a cube entry names: the matches of a glob (sorted), or the path itself."""
    path = Path(pattern).expanduser()
    path = path if path.is_absolute() else base / path
    if glob.has_magic(str(path)):
        matches = sorted(glob.glob(str(path)))
        return matches or [str(path)]
    return [str(path)]


def _entry(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = {"cube": raw}
    if not isinstance(raw, dict) or "cube" not in raw:
        raise SurveyError(f"{where}: expected a cube path (or glob) or a mapping with 'cube', found {raw!r}")
    unknown = set(raw) - set(ENTRY_KEYS)
    if unknown:
        raise SurveyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(ENTRY_KEYS)}")
    entry = {}
    for key, value in raw.items():
        if value is None:
            continue
        try:
            entry[key] = ENTRY_KEYS[key](value)
        except (TypeError, ValueError):
            raise SurveyError(f"{where}: '{key}' must be a {ENTRY_KEYS[key].__name__}, found {value!r}") from None
    return entry


def read_survey(path: str | Path, base: RunConfig, out_dir: Path | None = None, kind: str = "maps") -> list[RunConfig]:
    """The run configs of every cube a survey file names.

    ``base`` gives the shared options (its model and min_snr, when set, override the file's
    defaults; a cube's own entry overrides both); ``out_dir`` overrides the file's ``out_dir``;
    ``kind`` names the maps of a cube without ``out`` (:func:`default_output`).
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SurveyError(f"survey file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SurveyError(f"survey file {path} is not valid YAML: {exc}") from exc
    if isinstance(doc, list):
        doc = {"cubes": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("cubes"), list) or not doc["cubes"]:
        raise SurveyError(f"survey file {path}: expected a list of cubes, or a mapping with a non-empty 'cubes' list")
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise SurveyError(
            f"survey file {path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(TOP_KEYS))}"
        )
    folder = path.parent
    if out_dir is None and doc.get("out_dir"):
        out_dir = folder / Path(str(doc["out_dir"])).expanduser()
    defaults = {
        "model": base.model or doc.get("model"),
        "min_snr": base.min_snr if base.min_snr is not None else doc.get("min_snr"),
    }
    cubes: dict[str, dict[str, Any]] = {}  # resolved cube path -> options (later entries override)
    for i, raw in enumerate(doc["cubes"]):
        entry = _entry(raw, f"survey file {path}, cube entry {i + 1}")
        for cube in _expand(entry.pop("cube"), folder):
            key = str(Path(cube).resolve())
            cubes.setdefault(key, {"cube": cube}).update(entry)
    return configs_for(list(cubes.values()), base, defaults, out_dir, folder, kind)


def configs_for(
    entries: Sequence[dict[str, Any]],
    base: RunConfig,
    defaults: dict[str, Any] | None = None,
    out_dir: Path | None = None,
    folder: Path | None = None,
    kind: str = "maps",
) -> list[RunConfig]:
    """One RunConfig per cube entry: entry options over ``base`` over ``defaults``.

    An entry's relative ``out`` is taken from ``folder``; without ``out``, maps go to ``out_dir``
    (else beside the cube) as ``<name>.<kind>.zarr`` (``maps``; ``ppxf`` for pPXF's).
    """
    defaults = defaults or {}
    configs = []
    for entry in entries:
        cube = entry["cube"]
        out = entry.get("out")
        if out is not None and folder is not None and not Path(out).is_absolute():
            out = str(folder / out)
        elif out is None and out_dir is not None:
            out = str(out_dir / default_output(cube, kind).name)
        configs.append(
            dataclasses.replace(
                base,
                cube=cube,
                out=out or str(default_output(cube, kind)),
                model=entry.get("model") or base.model or defaults.get("model"),
                redshift=entry.get("redshift", base.redshift),
                mw_ebv=entry.get("mw_ebv", base.mw_ebv),
                min_snr=entry.get("min_snr", base.min_snr if base.min_snr is not None else defaults.get("min_snr")),
            )
        )
    return configs


def format_table(outcomes: Sequence[CubeOutcome], seconds: float) -> str:
    """The end-of-survey table: cube, spectra, seconds, flagged fraction, status; then the totals."""
    rows = [("cube", "spectra", "seconds", "flagged", "status")]
    for o in outcomes:
        s = o.summary
        status = o.status if not o.failed else "failed (reason below)"
        rows.append(
            (
                o.cube,
                f"{s.spectra}" if s else "-",
                f"{s.seconds:.1f}" if s else "-",
                f"{s.flagged_fraction:.1%}" if s else "-",
                status,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join([r[0].ljust(widths[0]), *(r[i].rjust(widths[i]) for i in (1, 2, 3)), r[4]]) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    count = {k: sum(o.status == k for o in outcomes) for k in ("done", "already done", "failed")}
    spectra_run = sum(o.summary.spectra_run for o in outcomes if o.summary and o.summary.regions_run)
    rate = f" ({spectra_run / seconds:,.0f} spectra/s)" if seconds > 0 and spectra_run else ""
    lines.append(
        f"{len(outcomes)} cubes: {count['done']} done, {count['already done']} already done, "
        f"{count['failed']} failed; {spectra_run} spectra processed in {seconds:.1f} s{rate}"
    )
    failed = [o for o in outcomes if o.failed]
    if failed:
        lines.append("failed:")
        lines += [f"  {o.cube}: {' '.join(o.reason.split())}" for o in failed]
    return "\n".join(lines)
