"""Steering vectors as the hooks need them: validated per layer, scaled to a strength unit.

Strength units
--------------
``unit="norm"`` (the default): ``strength`` counts multiples of the *typical residual norm of one
token* at that layer, so the added delta is ``strength * token_norm[l] * v[l] / ||v[l]||``.
``token_norm[l]`` is the mean over tokens of ``||resid[l]||`` on neutral text
(``neutral-corpus``), **leaving out each text's first token**. The first token is an attention
sink: on SmolLM2-135M its norm at layer 15 is ~22,900 against ~177 for every other token, so
a mean over positions ("mean pooling") would make the unit ten times too large and every
strength meaningless. The measured norms are stored in the vector's ``meta["token_norm"]``
(see :func:`with_token_norms`), so a saved vector carries its unit.

``unit="raw"``: the delta is ``strength * v[l]``, the vector as given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from emoscope.errors import InputError

__all__ = ["token_norms", "with_token_norms", "layer_vectors", "unit_deltas", "random_directions", "UNITS"]

UNITS = ("norm", "raw")
_NORM_KEY = "token_norm"
_MEMO: dict[tuple[str, int, tuple[int, ...]], dict[int, float]] = {}


def token_norms(model: Any, layers: Sequence[int], texts: Sequence[str] | None = None) -> dict[int, float]:
    """Mean per-token ``||resid[l]||`` on neutral text, leaving out each text's first token.

    ``texts`` defaults to the built-in ``neutral-corpus``. Results are memoised per model and
    layers in this process (and the extraction itself is cached on disk).

    >>> token_norms(model, [15])                     # doctest: +SKIP
    {15: 176.8}
    """
    from emoscope.activations import extract

    layers = [model.check_layer(int(layer)) for layer in layers]
    if texts is None:
        from emoscope.datasets import load_dataset

        texts = list(load_dataset("neutral-corpus").texts)
    texts = list(texts)
    key = (str(getattr(model, "weights_sha256", "") or id(model)), hash(tuple(texts)), tuple(sorted(set(layers))))
    if key in _MEMO:
        return dict(_MEMO[key])
    acts = extract(model, texts, sorted(set(layers)), position="all", cache=bool(getattr(model, "weights_sha256", "")),
                   progress=False)
    offsets = np.asarray(acts.offsets)
    keep = np.ones(int(offsets[-1]), dtype=bool)
    keep[offsets[:-1]] = False  # the first token of every text (attention sink)
    if not keep.any():  # one-token texts only: nothing but sinks, use everything
        keep[:] = True
    out = {layer: float(np.linalg.norm(acts.get(layer)[keep], axis=1).mean()) for layer in sorted(set(layers))}
    _MEMO[key] = out
    return dict(out)


def with_token_norms(model: Any, vector: Any, texts: Sequence[str] | None = None) -> Any:
    """A copy of a ``ConceptVector`` whose ``meta["token_norm"]`` holds the strength unit of
    every layer it has (measured with :func:`token_norms` where missing).

    >>> v = with_token_norms(model, joy); v.meta["token_norm"][15]   # doctest: +SKIP
    176.8
    """
    from emoscope.vectors import ConceptVector

    have = dict(vector.meta.get(_NORM_KEY) or {})
    missing = [layer for layer in vector.layers if layer not in have]
    if missing:
        have.update(token_norms(model, missing, texts))
    meta = {**vector.meta, _NORM_KEY: {int(k): float(v) for k, v in have.items()},
            "token_norm_source": vector.meta.get("token_norm_source")
            or "mean per-token ||resid[l]|| on neutral-corpus, first token of each text left out"}
    return ConceptVector(vector.name, dict(vector.vectors), meta)


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
        arr = vector.detach().cpu().numpy() if isinstance(vector, torch.Tensor) else np.asarray(vector)
        source, name = {layer: arr for layer in layers}, "vector"
    out: dict[int, np.ndarray] = {}
    for layer in layers:
        if layer not in source:
            have = sorted(source)
            raise InputError(f"{name} has no direction for layer {layer} (it has layers {have}); "
                             "steer at one of those or refit the vector at that layer")
        arr = source[layer]
        arr = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        if arr.ndim != 1 or arr.shape[0] != model.d_model:
            raise InputError(f"{name} has shape {arr.shape} at layer {layer} but {model.name} has "
                             f"d_model={model.d_model}; use a vector fitted on this model")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name} has NaN or infinite values at layer {layer}")
        out[layer] = arr
    return out


def _norm_unit(model: Any, vector: Any, layers: Sequence[int], norms: Mapping[int, float] | None) -> dict[int, float]:
    if norms is not None:
        got = {int(k): float(v) for k, v in norms.items()}
    else:
        got = {int(k): float(v) for k, v in ((getattr(vector, "meta", None) or {}).get(_NORM_KEY) or {}).items()}
    missing = [layer for layer in layers if layer not in got]
    if missing:
        got.update(token_norms(model, missing))
    return {layer: got[layer] for layer in layers}


def unit_deltas(model: Any, vector: Any, layers: Sequence[int], unit: str = "norm",
                norms: Mapping[int, float] | None = None) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per layer: ``(delta for strength 1, unit direction)``, both ``(d_model,)`` float64.

    With ``unit="norm"`` the strength-1 delta has norm ``token_norm[l]`` (from ``norms``, the
    vector's ``meta["token_norm"]``, or measured); with ``unit="raw"`` it is the vector itself.
    """
    if unit not in UNITS:
        raise InputError(f"unit must be one of {UNITS}, got {unit!r}")
    vecs = layer_vectors(model, vector, layers)
    dirs: dict[int, np.ndarray] = {}
    for layer, v in vecs.items():
        n = float(np.linalg.norm(v))
        if n == 0.0:
            raise InputError(f"the steering vector is zero at layer {layer}; it has no direction to steer along")
        dirs[layer] = v / n
    if unit == "raw":
        return vecs, dirs
    scale = _norm_unit(model, vector, list(vecs), norms)
    return {layer: dirs[layer] * scale[layer] for layer in vecs}, dirs


def random_directions(d: int, layers: Sequence[int], k: int, seed: int) -> list[dict[int, np.ndarray]]:
    """``k`` random unit directions per layer (Gaussian, normalised), reproducible from ``seed``.

    >>> r = random_directions(4, [0, 1], k=2, seed=0)
    >>> len(r), round(float(np.linalg.norm(r[0][1])), 6)
    (2, 1.0)
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        draw = {}
        for layer in layers:
            v = rng.standard_normal(d)
            draw[int(layer)] = v / np.linalg.norm(v)
        out.append(draw)
    return out
