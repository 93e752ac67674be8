"""Activations: batched extraction of ``resid[l]`` with a content-addressed disk cache."""

from emoscope.activations.extract import dataset_sha256, extract, tokenize_texts
from emoscope.activations.positions import Position, parse_position
from emoscope.activations.result import Activations

__all__ = ["extract", "Activations", "Position", "parse_position", "tokenize_texts", "dataset_sha256"]
