"""The input kinds a manifest may declare: ``input.kind`` -> its spec class."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from survey_proc.preprocess._bands import ImageInputSpec, SEDInputSpec
from survey_proc.preprocess._kinds import InputKind
from survey_proc.preprocess._spectrum import InputSpec

#: input kind (the manifest's ``input.kind``) -> its spec class, an :class:`InputKind` whose hooks
#: are all the engine calls; register a new kind here
INPUT_KINDS: dict[str, type[InputKind]] = {
    "spectrum": InputSpec,
    "sed": SEDInputSpec,
    "image": ImageInputSpec,
}


def input_spec(section: Mapping[str, Any]) -> InputKind:
    """The spec object of a manifest's ``input`` section, by its declared ``kind``."""
    kind = section.get("kind", "spectrum")
    cls = INPUT_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown input kind {kind!r}; known: {', '.join(INPUT_KINDS)}")
    return cls.from_manifest(section)
