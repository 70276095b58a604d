"""The shape ARCHITECTURE.md promises, checked on the source: layers, private modules, sizes.

- Dependencies point down the layers (``LAYERS``): a package imports only packages of its own layer or
  below it, never one above; the engine never imports torch, pPXF or the training code.
- No package imports another package's private module (``survey_proc.stores._maps``) or private name:
  each package re-exports its public API in ``__init__``.
- No module over ``MAX_MODULE_LINES`` lines, no function over ``MAX_FUNCTION_LINES`` lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "survey_proc"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 90

#: top to bottom; a unit may import its own layer and the layers below it
LAYERS = [
    {"cli", "__main__"},
    {"bench", "api"},
    {"engine", "training", "analysis", "binning", "synth", "resample"},
    {"cluster", "estimators", "preprocess"},
    {"stores", "ssp", "geometry"},
    {"config", "errors", "fetch", "figures", "progress", "__init__"},
]
#: (unit, target) imports allowed upward, inside a module-level ``__getattr__`` only: the package
#: re-exports the Python API (``survey_proc.run``) lazily, so that ``import survey_proc`` stays light
LAZY_EXPORTS = {("__init__", "api")}
#: third-party packages a unit must never import (the engine stays model-agnostic)
FORBIDDEN = {"engine": {"torch", "ppxf"}}
#: what the engine must not import of the package itself
FORBIDDEN_INTERNAL = {"engine": {"training"}}

#: functions longer than MAX_FUNCTION_LINES today, to be split (this list only shrinks)
LONG_FUNCTIONS_TODAY: set[str] = set()
#: modules longer than MAX_MODULE_LINES today, to be split (this list only shrinks)
LONG_MODULES_TODAY: set[str] = set()


def _unit(path: Path) -> str:
    """The layer unit of a source file: its subpackage, or the top-level module's name."""
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _layer(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"{unit} is in no layer of tests/test_architecture.py: place it")


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in ``path``, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
    return out


def _lazy_lines(path: Path) -> set[int]:
    """Lines of the imports inside a module-level ``def __getattr__`` (PEP 562 lazy re-exports)."""
    lines = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            lines |= {n.lineno for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return lines


def _internal_unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "survey_proc" and len(parts) > 1 else None


def test_every_unit_has_a_layer():
    for path in _sources():
        _layer(_unit(path))


def test_dependencies_point_down_the_layers():
    upward = []
    for path in _sources():
        unit = _unit(path)
        lazy = _lazy_lines(path)
        for line, module, _ in _imports(path):
            target = _internal_unit(module)
            if (unit, target) in LAZY_EXPORTS and line in lazy:
                continue
            if target and target != unit and _layer(target) < _layer(unit):
                upward.append(f"{path.relative_to(SRC.parent)}:{line} {unit} imports {module}")
            if target in FORBIDDEN_INTERNAL.get(unit, ()):
                upward.append(f"{path.relative_to(SRC.parent)}:{line} {unit} must not import {module}")
            if module.split(".")[0] in FORBIDDEN.get(unit, ()):
                upward.append(f"{path.relative_to(SRC.parent)}:{line} {unit} must not import {module}")
    assert not upward, "\n".join(upward)


def test_no_private_imports_across_packages():
    leaks = []
    for path in _sources():
        unit = _unit(path)
        for line, module, names in _imports(path):
            target = _internal_unit(module)
            if not target or target == unit:
                continue
            private = [p for p in module.split(".")[1:] if p.startswith("_")]
            private += [n for n in names if n.startswith("_")]
            if private:
                leaks.append(f"{path.relative_to(SRC.parent)}:{line} from {module} import {', '.join(names)}")
    assert not leaks, "\n".join(leaks)


def _long_functions() -> dict[str, int]:
    out = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    out[f"{path.relative_to(SRC.parent)}:{node.name}"] = lines
    return out


def _long_modules() -> dict[str, int]:
    out = {}
    for path in _sources():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            out[str(path.relative_to(SRC.parent))] = lines
    return out


@pytest.mark.parametrize(
    ("measure", "allowed", "limit"),
    [
        (_long_functions, LONG_FUNCTIONS_TODAY, MAX_FUNCTION_LINES),
        (_long_modules, LONG_MODULES_TODAY, MAX_MODULE_LINES),
    ],
    ids=["functions", "modules"],
)
def test_sizes(measure, allowed, limit):
    found = measure()
    new = {k: v for k, v in found.items() if k not in allowed}
    assert not new, f"over {limit} lines: {new}"
    fixed = allowed - set(found)
    assert not fixed, f"no longer over {limit} lines, take them off the list: {sorted(fixed)}"
