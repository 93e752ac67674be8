"""Typed exceptions. Every error a user can cause is an ``EmoscopeError``.

The CLI turns any ``EmoscopeError`` into one line on stderr and exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "EmoscopeError",
    "InputError",
    "DataError",
    "ModelError",
    "UnknownModelError",
    "OfflineError",
    "LayoutError",
    "LayerError",
    "PositionError",
    "OutputError",
    "SpecError",
    "RunDirError",
]


class EmoscopeError(ValueError):
    """Base class: a problem with what the user asked for, reported in one line."""


class InputError(EmoscopeError):
    """Bad argument value (empty text, non-numeric strength, ...)."""


class DataError(EmoscopeError):
    """A data file is missing, empty or malformed."""


class ModelError(EmoscopeError):
    """A model cannot be loaded or used as asked."""


class UnknownModelError(ModelError):
    """A model spec that is not an alias, a path, or a hub id."""


class OfflineError(ModelError):
    """A hub id was given but the hub cannot be reached."""


class LayoutError(ModelError):
    """The architecture has no layout, or the layout does not match the model."""


class LayerError(InputError):
    """A layer index outside the model."""


class PositionError(InputError):
    """An unknown or invalid position spec."""


class OutputError(EmoscopeError):
    """An output location cannot be written."""


class SpecError(EmoscopeError):
    """An experiment spec that does not validate."""


class RunDirError(EmoscopeError):
    """A run directory that is missing, corrupt or partial."""
