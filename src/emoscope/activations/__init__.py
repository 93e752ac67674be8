"""Activations: batched extraction of ``resid[l]`` with a content-addressed disk cache."""

from __future__ import annotations

from emoscope.activations.extract import extract
from emoscope.activations.positions import parse_position
from emoscope.activations.result import Activations

__all__ = [
    "extract",
    "Activations",
    "parse_position",
]
