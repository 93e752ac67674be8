"""Input checks shared by the vector, probing and geometry estimators (the shared layer, so
every analysis package imports them from here).

Everything user-facing in emoscope takes plain numpy arrays; these helpers turn what the
user passed into validated arrays and raise one-line ``InputError``s otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from emoscope.errors import InputError

__all__ = [
    "as_matrix",
    "as_labels",
    "as_layer_dict",
    "class_rows",
    "unit",
    "numeric_vector",
]


def as_matrix(X: Any, name: str = "X", *, min_rows: int = 1) -> np.ndarray:
    """Return ``X`` as a finite 2-D float array ``(n, d)``; raise InputError otherwise."""
    try:
        arr = np.asarray(X)
    except Exception as e:  # ragged lists and the like
        raise InputError(f"{name} cannot be read as an array: {e}") from None
    if arr.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (n, d); got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise InputError(f"{name} needs at least {min_rows} rows; got {arr.shape[0]}")
    if arr.shape[1] == 0:
        raise InputError(f"{name} has zero columns")
    if not np.issubdtype(arr.dtype, np.floating):
        if not np.issubdtype(arr.dtype, np.number):
            raise InputError(f"{name} must be numeric; got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def as_labels(labels: Any, n: int | None = None, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as a 1-D array of strings (class names), length-checked against ``n``."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D; got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise InputError(f"{name} has {arr.shape[0]} entries but the activations have {n} rows")
    return arr.astype(str)


def as_layer_dict(acts: Any, name: str = "acts_by_layer") -> dict[int, np.ndarray]:
    """Accept ``{layer: X}`` or any object with ``.layers`` and ``.get(layer)`` (an
    ``emoscope.activations.Activations``); return ``{int(layer): (n, d) array}`` sorted by layer
    with every layer having the same number of rows."""
    if isinstance(acts, Mapping):
        items = [(k, acts[k]) for k in acts]
    elif hasattr(acts, "layers") and hasattr(acts, "get"):
        items = [(k, acts.get(k)) for k in acts.layers]
    else:
        raise InputError(f"{name} must be a dict {{layer: (n, d) array}} or an Activations object")
    if not items:
        raise InputError(f"{name} is empty; pass at least one layer")
    out: dict[int, np.ndarray] = {}
    for k, X in sorted(items, key=lambda kv: int(kv[0])):
        out[int(k)] = as_matrix(X, f"{name}[{k}]")
    rows = {X.shape[0] for X in out.values()}
    if len(rows) != 1:
        raise InputError(f"{name}: layers have different numbers of rows {sorted(rows)}")
    return out


def class_rows(labels: np.ndarray, cls: str, what: str = "class") -> np.ndarray:
    """Indices of rows with label ``cls``; InputError naming the known classes if none."""
    idx = np.flatnonzero(labels == cls)
    if idx.size == 0:
        known = ", ".join(sorted(set(labels.tolist()))[:20])
        raise InputError(f"{what} {cls!r} has no rows; known labels: {known}")
    return idx


def unit(v: np.ndarray) -> np.ndarray:
    """``v / ||v||`` (a zero vector stays zero)."""
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def numeric_vector(x: Any, n: int, name: str) -> np.ndarray:
    """A finite float vector of length ``n``."""
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"{name} must be 1-D with {n} entries; got shape {arr.shape}")
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be numeric") from None
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values")
    return arr
