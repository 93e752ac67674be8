"""The registry of section-data functions: stage name -> the function that prepares what that
stage's section template shows.

It sits apart from ``emoscope.report.sections`` so that the module registering the functions
(``emoscope.report.stagedata``) and the one that loads and calls them (``sections``) import it,
and never each other.

>>> @section_data("demo-stage")
... def _demo(view, stage, record):
...     return {"rows": []}
>>> section_functions()["demo-stage"] is _demo
True
>>> del section_functions()["demo-stage"]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["section_data", "section_functions"]

_DATA: dict[str, Callable[..., dict[str, Any]]] = {}


def section_data(stage: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Register the function that prepares what the section template of ``stage`` shows:
    ``fn(view, stage_key, record) -> dict`` (available to the template as ``s.data``)."""

    def deco(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        _DATA[stage] = fn
        return fn

    return deco


def section_functions() -> dict[str, Callable[..., dict[str, Any]]]:
    """The registry behind ``section_data`` (stage name -> function), e.g. to list or replace one."""
    return _DATA
