"""The KV cache, in one place, across transformers versions.

transformers 5.24 renamed the cache argument and output field from ``past_key_values`` to
``cache`` (the old argument still works, with a deprecation warning, until 5.40; older
releases know only ``past_key_values``). Everything in emoscope that passes, reads or forks a
cache goes through these helpers, so a hook that asks "how much is cached already?" gets the
right answer whichever name ``generate`` used.

>>> cache_kwargs(model.hf, new_cache(model))          # doctest: +SKIP
{'cache': DynamicCache(...)}
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["new_cache", "cache_kwargs", "output_cache", "input_cache", "past_length", "fork_cache"]

_NAMES = ("cache", "past_key_values")


_BY_CLASS: dict[type, str] = {}


def _cache_name(module: Any) -> str:
    """The cache keyword ``module.forward`` takes: ``cache`` (transformers >= 5.24) or
    ``past_key_values``; looked up once per module class."""
    cls = type(module)
    if cls not in _BY_CLASS:
        try:
            params = inspect.signature(module.forward).parameters
        except (TypeError, ValueError):
            params = {}
        _BY_CLASS[cls] = "cache" if "cache" in params else "past_key_values"
    return _BY_CLASS[cls]


def cache_kwargs(module: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` with the keyword ``module`` expects.

    >>> model.hf(input_ids=ids, use_cache=True, **cache_kwargs(model.hf, cache))   # doctest: +SKIP
    """
    return {_cache_name(module): cache}


def output_cache(out: Any) -> Any:
    """The cache a forward returned (``out.cache`` or, before 5.24, ``out.past_key_values``)."""
    keys = out.keys() if isinstance(out, Mapping) else ()
    for name in _NAMES:
        if name in keys:
            return out[name]
    return None


def input_cache(kwargs: Mapping[str, Any]) -> Any:
    """The cache passed to a forward, under either name (for forward pre-hooks)."""
    for name in _NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def past_length(cache: Any) -> int:
    """Tokens already in ``cache`` (0 for none); also reads a legacy tuple cache."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    try:  # legacy tuple cache: ((k, v), ...) with k (batch, heads, seq, head_dim)
        return int(cache[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0


def new_cache(model: Any) -> Any:
    """An empty ``DynamicCache`` for ``model``."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.hf.config)
    except TypeError:  # older transformers
        return DynamicCache()


def fork_cache(cache: Any, batch: int) -> Any:
    """A copy of a one-row ``cache`` expanded to ``batch`` rows without copying tensors; the
    forward that consumes it concatenates new keys into fresh tensors, so ``cache`` itself is
    never modified and can be forked again."""
    if cache is None:
        return None
    out = copy.copy(cache)
    out.layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        for name in ("keys", "values"):
            t = getattr(new, name, None)
            if isinstance(t, torch.Tensor) and t.dim() == 4 and t.numel():
                setattr(new, name, t.expand(batch, -1, -1, -1))
        out.layers.append(new)
    return out
