"""Steering vectors as the hooks need them: validated per layer, scaled to a strength unit.

The unit itself (what strength 1 means) is defined and measured in one place,
``emoscope.vectors.strength`` (``token_norm`` by default, ``token_norm_robust`` to leave out
massive dimensions, ``raw`` for the vector as given); a vector that carries its unit in
``meta["strength_unit"]`` is not measured again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from emoscope.errors import InputError
from emoscope.vectors.strength import MEASURED, STEERING_UNITS, resolve_unit

__all__ = ["as_strength", "layer_vectors", "unit_deltas", "unit_norms", "STEERING_UNITS"]


def layer_vectors(model: Any, vector: Any, layers: Sequence[int]) -> dict[int, np.ndarray]:
    """``{layer: (d_model,) float64}`` for the requested layers, checked against the model.

    ``vector`` is a ``ConceptVector``, a ``{layer: array}`` dict, or one ``(d_model,)`` array
    used at every layer. Wrong widths, missing layers and non-finite values are
    ``InputError``s that name the fix.
    """
    layers = [model.check_layer(int(layer)) for layer in layers]
    if not layers:
        raise InputError("no layers given to steer at")
    if hasattr(vector, "vectors") and hasattr(vector, "layers"):  # ConceptVector
        source: Mapping[int, Any] = vector.vectors
        name = f"vector {vector.name!r}"
    elif isinstance(vector, Mapping):
        source, name = {int(k): v for k, v in vector.items()}, "vector"
    else:
        arr = vector.detach().cpu().double().numpy() if isinstance(vector, torch.Tensor) else np.asarray(vector)
        source, name = {layer: arr for layer in layers}, "vector"
    out: dict[int, np.ndarray] = {}
    for layer in layers:
        if layer not in source:
            have = sorted(source)
            raise InputError(f"{name} has no direction for layer {layer} (it has layers {have}); "
                             "steer at one of those or refit the vector at that layer")
        arr = source[layer]
        arr = arr.detach().cpu().double().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        if arr.ndim != 1 or arr.shape[0] != model.d_model:
            raise InputError(f"{name} has shape {arr.shape} at layer {layer} but {model.name} has "
                             f"d_model={model.d_model}; use a vector fitted on this model")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name} has NaN or infinite values at layer {layer}")
        out[layer] = arr
    return out


def unit_norms(model: Any, vector: Any, layers: Sequence[int], unit: str = "token_norm",
               norms: Mapping[int, float] | None = None) -> dict[int, float]:
    """``{layer: residual norm of strength 1}`` in ``unit`` (``emoscope.vectors.strength.resolve_unit``)."""
    if unit not in MEASURED:
        raise InputError(f"unit {unit!r} has no norm; steering units are {STEERING_UNITS}")
    return resolve_unit(model, vector, layers, unit, norms).values


def unit_deltas(model: Any, vector: Any, layers: Sequence[int], unit: str = "token_norm",
                norms: Mapping[int, float] | None = None) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per layer: ``(delta for strength 1, unit direction)``, both ``(d_model,)`` float64.

    With a measured unit (``token_norm``, ``token_norm_robust``) the strength-1 delta has the
    unit's norm at that layer (from ``norms``, the vector's stored unit, or measured); with
    ``unit="raw"`` it is the vector itself.
    """
    if unit not in STEERING_UNITS:
        raise InputError(f"unit must be one of {STEERING_UNITS}, got {unit!r} (see emoscope.vectors.strength)")
    vecs = layer_vectors(model, vector, layers)
    dirs: dict[int, np.ndarray] = {}
    for layer, v in vecs.items():
        n = float(np.linalg.norm(v))
        if n == 0.0:
            raise InputError(f"the steering vector is zero at layer {layer}; it has no direction to steer along")
        dirs[layer] = v / n
    if unit == "raw":
        return vecs, dirs
    scale = unit_norms(model, vector, list(vecs), unit, norms)
    return {layer: dirs[layer] * scale[layer] for layer in vecs}, dirs


def as_strength(value: Any) -> float:
    """``value`` as a finite float strength; a one-line ``InputError`` otherwise.

    >>> as_strength("2"), as_strength(-0.5)
    (2.0, -0.5)
    """
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise InputError(f"strength must be a number, got {value!r}") from None
    if not np.isfinite(s):
        raise InputError(f"strength must be finite, got {value!r}")
    return s
