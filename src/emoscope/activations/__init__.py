"""Activations: batched extraction of ``resid[l]`` with a content-addressed disk cache
(``extract.py``), token positions (``positions.py``), the ``Activations`` result, and the
``extract`` run stage (``stage.py``: norms per layer and their correlation with length)."""

from __future__ import annotations

from emoscope.activations.extract import extract
from emoscope.activations.positions import parse_position
from emoscope.activations.result import Activations

__all__ = [
    "extract",
    "Activations",
    "parse_position",
]
