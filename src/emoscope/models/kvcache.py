"""The KV cache, in one place, across transformers versions.

transformers 5.24 renamed the cache argument and output field from ``past_key_values`` to
``cache`` (the old argument still works, with a deprecation warning, until 5.40; older
releases know only ``past_key_values``). Everything in emoscope that passes, reads or forks a
cache goes through these helpers, so a hook that asks "how much is cached already?" gets the
right answer whichever name ``generate`` used.

Sharing a prefix: ``prefix_cache`` runs shared tokens once; ``fork_cache`` gives each batch its
own cache object over those keys and values (a one-row cache expanded as a view, or chosen rows
of a multi-row cache gathered into new tensors). A forward appends to the cache it is given by
rebinding each layer's tensors, never writing into them, so a fork leaves its source intact and
the source can be forked again (no deep copy needed).

Decoding: ``reserve_cache`` gives a cache room for ``n`` more tokens per layer, preallocated,
so each step writes its keys and values in place instead of concatenating (a plain
``DynamicCache`` copies every layer's whole cache at every step: about an eighth of a batched
decode step on a CPU). A reserved cache is the decode loop's own: ``fork_cache`` of it gives
plain layers over views of what it holds so far, so its later writes never reach a fork.

>>> cache_kwargs(model.hf, new_cache(model))          # doctest: +SKIP
{'cache': DynamicCache(...)}
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["new_cache", "cache_kwargs", "output_cache", "input_cache", "past_length", "fork_cache", "prefix_cache",
           "common_prefix_length", "merge_caches", "reserve_cache"]

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


def fork_cache(cache: Any, rows: int | torch.Tensor | Sequence[int]) -> Any:
    """A new cache object over the rows of ``cache`` that the next forward should see.

    ``rows`` an int: ``cache`` has one row, expanded to ``rows`` rows as a view (no copy).
    ``rows`` a 1-D index tensor (or list): row ``rows[i]`` of ``cache`` becomes row ``i`` (gathered into
    new tensors, like ``batch_select_indices`` on a deep copy, without copying the rest).
    The forward that consumes the fork concatenates new keys into fresh tensors, so ``cache``
    itself is never modified and can be forked again. ``None`` stays ``None``.

    >>> shared = prefix_cache(model, ids)                           # doctest: +SKIP
    >>> model.base(input_ids=x, **cache_kwargs(model.base, fork_cache(shared, x.shape[0])))  # doctest: +SKIP
    """
    if cache is None:
        return None
    index = torch.as_tensor(rows, dtype=torch.long) if isinstance(rows, (torch.Tensor, list, tuple)) else None
    rows = int(rows) if index is None else rows
    if index is not None and index.dim() != 1:
        raise ValueError(f"fork_cache takes an int or a 1-D index tensor, got shape {tuple(index.shape)}")
    out = copy.copy(cache)
    out.layers = []
    for layer in cache.layers:
        new = _plain(layer) if getattr(layer, "reserved", False) else copy.copy(layer)
        for name in ("keys", "values"):
            t = getattr(new, name, None)  # (batch, kv_heads, seq, head_dim)
            if isinstance(t, torch.Tensor) and t.dim() == 4 and t.numel():
                if index is None:
                    setattr(new, name, t.expand(rows, -1, -1, -1))
                else:
                    setattr(new, name, t[index.to(t.device)])
        out.layers.append(new)
    return out


@functools.cache
def _reserved_class() -> type:
    """The reserved layer class, defined on first use (transformers is imported lazily here)."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        """A ``DynamicLayer`` over preallocated storage ``(batch, heads, capacity, head_dim)``: an
        update writes the new keys and values in place and returns views of the filled part
        (``keys``/``values`` are those views, so everything that reads them sees a plain layer).
        Past the capacity it falls back to concatenation, so nothing is ever cut."""

        reserved = True

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, extra: int) -> None:
            super().__init__()
            b, h, t, _ = keys.shape
            self._k = keys.new_empty(b, h, t + extra, keys.shape[-1])
            self._v = values.new_empty(b, h, t + extra, values.shape[-1])
            self._k[:, :, :t] = keys
            self._v[:, :, :t] = values
            self._n = t
            self.keys, self.values = self._k[:, :, :t], self._v[:, :, :t]
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            end = self._n + key_states.shape[-2]
            if end > self._k.shape[-2] or key_states.shape[0] != self._k.shape[0]:
                self.__class__ = DynamicLayer  # no room (or another batch): a plain layer from here on
                return self.update(key_states, value_states, *args, **kwargs)
            self._k[:, :, self._n:end] = key_states
            self._v[:, :, self._n:end] = value_states
            self._n = end
            self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
            return self.keys, self.values

    return ReservedLayer


def _plain(layer: Any) -> Any:
    """A plain ``DynamicLayer`` over views of what a reserved layer holds so far."""
    from transformers.cache_utils import DynamicLayer

    new = DynamicLayer()
    new.keys, new.values = layer.keys, layer.values
    new.dtype, new.device, new.is_initialized = layer.dtype, layer.device, True
    return new


def reserve_cache(cache: Any, extra: int) -> Any:
    """A new cache object over ``cache``'s keys and values with room for ``extra`` more tokens in
    every full-attention layer (``DynamicLayer``; sliding-window and other layers are kept as
    they are): the decode loop's steps then write in place. ``cache`` itself is not changed.

    >>> cache = reserve_cache(output_cache(out), max_new_tokens)      # doctest: +SKIP
    """
    if cache is None or extra < 1:
        return cache
    from transformers.cache_utils import DynamicLayer

    out = copy.copy(cache)
    out.layers = []
    for layer in cache.layers:
        k = getattr(layer, "keys", None)
        if type(layer) is DynamicLayer and isinstance(k, torch.Tensor) and k.dim() == 4 and k.numel():
            out.layers.append(_reserved_class()(k, layer.values, int(extra)))
        else:
            out.layers.append(copy.copy(layer))
    return out


def merge_caches(low: Any, high: Any, split: int) -> Any:
    """A new cache object with blocks ``0 .. split-1`` of ``low`` and blocks ``split ..`` of ``high``
    (both of the same rows and columns; no tensor is copied, neither input is changed).

    Used by ``models.prefill.prefill_below``: the lower blocks prefilled once per unique prompt
    and forked to the rows, the upper blocks prefilled per row.
    """
    if len(low.layers) != len(high.layers):
        raise ValueError(f"caches of {len(low.layers)} and {len(high.layers)} blocks cannot be merged")
    out = copy.copy(high)
    out.layers = list(low.layers[:split]) + list(high.layers[split:])
    return out


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every sequence.

    >>> common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]])
    2
    """
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def prefix_cache(model: Any, ids: Sequence[int]) -> Any:
    """KV cache of ``ids`` (one row) from the decoder ``model.base``, or ``None`` for an empty
    prefix. Run it outside any injection hooks so the prefix stays uninjected; share it with
    ``fork_cache``."""
    if not ids:
        return None
    x = torch.tensor([list(ids)], device=model.device)  # (1, len(ids))
    return output_cache(model.base(input_ids=x, use_cache=True))
