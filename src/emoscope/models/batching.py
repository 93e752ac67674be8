"""Padding, position ids and special token ids: the one helper every batched forward uses.

Extraction, the steering decode loop, the perplexity scorer and the introspection cells all
turn lists of token ids into a padded batch. They share one convention, the one
``transformers.generate`` uses, so a batched forward here agrees with ``generate``:

- ``position_ids = cumsum(mask) - 1``: real tokens count from 0 whichever side the padding is on;
- padding positions get position 1 (they are masked out, so the value only has to be valid).

Real tokens never attend to padding, so their states do not depend on the padding side or on
what the padding positions hold (``tests/test_extract.py`` and ``tests/test_interventions.py``
check this).

Texts longer than the model's context window are cut to fit (``fit_context``, or
``pad_batch(..., max_length=)``) with a ``ContextWarning``, never a crash. The **end** is kept
(with any leading special tokens such as BOS): every readout and generation here happens at the
end of a sequence (the last-token state, the chat template's assistant turn, the question of
an introspection trial), so cutting the end would move the very position that is read, while
cutting the start only shortens the context it sees. The leading special token is kept because
models park attention on it (the "attention sink"); a sequence without it is out of
distribution. Position ids restart at 0 on the truncated sequence.

>>> ids, mask, pos, start = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
>>> ids.tolist(), pos.tolist(), start.tolist()
([[5, 6, 7], [0, 0, 8]], [[0, 1, 2], [1, 1, 0]], [0, 2])
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Collection, Sequence
from typing import Any

import torch

from emoscope.errors import InputError

__all__ = ["pad_batch", "positions_from_mask", "pad_token_id", "eos_ids", "keeps_logits", "ContextWarning",
           "context_length", "fit_context", "fit_model_context"]

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


class ContextWarning(UserWarning):
    """Some sequences were longer than the model's context window and were truncated."""


def context_length(model: Any) -> int | None:
    """The model's context window in tokens (``max_position_embeddings`` or the config's
    equivalent), or ``None`` when its config names none."""
    cfg = getattr(getattr(model, "hf", model), "config", None)
    for c in (getattr(cfg, "text_config", None), cfg):
        for key in _CONTEXT_KEYS:
            value = getattr(c, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def fit_context(seqs: Sequence[Sequence[int]], limit: int | None, *, keep: str = "end",
                special_ids: Collection[int] = (), what: str = "text") -> list[list[int]]:
    """Token lists cut to at most ``limit`` tokens, with one ``ContextWarning`` when any was cut.

    ``keep="end"`` (the default; see the module doc for why) drops tokens from the start but
    keeps the leading run of ``special_ids`` (BOS, ``<|im_start|>``); ``keep="start"`` drops
    tokens from the end. ``limit=None`` returns the lists unchanged.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     fit_context([[1, 5, 6, 7, 8], [1, 9]], 3, special_ids={1})
    [[1, 7, 8], [1, 9]]
    >>> str(w[0].message)  # doctest: +ELLIPSIS
    '1 of 2 texts longer than the context window of 3 tokens (longest 5, first #0): kept the last tokens...
    """
    out = [list(s) for s in seqs]
    if limit is None:
        return out
    if keep not in ("end", "start"):
        raise InputError(f"keep must be 'end' or 'start', got {keep!r}")
    if not isinstance(limit, int) or limit < 1:
        raise InputError(f"context limit must be a positive number of tokens, got {limit!r}")
    long = [i for i, s in enumerate(out) if len(s) > limit]
    if not long:
        return out
    special = set(special_ids)
    longest = max(len(out[i]) for i in long)
    for i in long:
        s = out[i]
        if keep == "start":
            out[i] = s[:limit]
            continue
        head = 0
        while head < len(s) and s[head] in special and head < limit - 1:
            head += 1
        out[i] = s[:head] + s[len(s) - (limit - head):]
    kept = ("kept the first tokens, cut the end" if keep == "start"
            else "kept the last tokens (and a leading special token such as BOS), cut the start")
    warnings.warn(f"{len(long)} of {len(out)} {what}s longer than the context window of {limit} tokens "
                  f"(longest {longest}, first #{long[0]}): {kept}", ContextWarning, stacklevel=3)
    return out


def fit_model_context(model: Any, seqs: Sequence[Sequence[int]], *, reserve: int = 0, limit: int | None = None,
                      keep: str = "end", what: str = "text") -> list[list[int]]:
    """``fit_context`` with the model's window (``context_length``; ``limit`` lowers it) minus
    ``reserve`` tokens (e.g. ``max_new_tokens`` of a generation) and its tokenizer's special ids."""
    window = context_length(model)
    if limit is not None:
        window = limit if window is None else min(window, limit)
    if window is None:
        return [list(s) for s in seqs]
    if reserve >= window:
        raise InputError(f"{reserve} tokens to generate do not fit the context window of {window} tokens; "
                         "ask for fewer new tokens")
    special = getattr(getattr(model, "tokenizer", None), "all_special_ids", None) or ()
    return fit_context(seqs, window - reserve, keep=keep, special_ids=special, what=what)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """``(batch, seq)`` position ids from a 0/1 attention mask, as ``transformers.generate``
    makes them: real tokens count from 0, padding gets position 1.

    >>> positions_from_mask(torch.tensor([[0, 1, 1], [1, 1, 0]])).tolist()
    [[1, 0, 1], [0, 1, 1]]
    """
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right",
              device: torch.device | str = "cpu", *, max_length: int | None = None,
              special_ids: Collection[int] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad token id lists into ``(ids, mask, position_ids, start)``.

    ``ids``, ``mask`` (0/1) and ``position_ids`` are ``(batch, width)`` long tensors,
    ``start`` ``(batch,)`` is the column of each row's first real token (0 under right
    padding). Position ids follow ``positions_from_mask``. With ``max_length`` (e.g.
    ``context_length(model)``), longer rows are cut by ``fit_context`` (end kept, warning).
    """
    if side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', got {side!r}")
    if not seqs:
        raise InputError("nothing to pad: no sequences")
    if max_length is not None and max(len(s) for s in seqs) > max_length:
        seqs = fit_context(seqs, max_length, special_ids=special_ids, what="sequence")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)  # (batch, width)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)            # (batch, width)
    start = torch.zeros(len(seqs), dtype=torch.long)                    # (batch,)
    for i, s in enumerate(seqs):
        lo = width - len(s) if side == "left" else 0
        ids[i, lo: lo + len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, lo: lo + len(s)] = 1
        start[i] = lo
    pos = positions_from_mask(mask)
    return ids.to(device), mask.to(device), pos.to(device), start.to(device)


def eos_ids(model: Any) -> set[int]:
    """End-of-sequence ids, as ``generate`` would use them (generation config, then tokenizer)."""
    ids = getattr(getattr(model.hf, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = model.tokenizer.eos_token_id
    ids = ids if isinstance(ids, (list, tuple)) else [ids]
    return {int(i) for i in ids if i is not None}


def pad_token_id(model: Any) -> int:
    """The pad id ``generate`` would use: generation config, then tokenizer, then an eos id, then 0."""
    pad = getattr(getattr(model.hf, "generation_config", None), "pad_token_id", None)
    if pad is None:
        pad = model.tokenizer.pad_token_id
    if pad is None:
        pad = next(iter(eos_ids(model)), 0)
    return int(pad[0] if isinstance(pad, (list, tuple)) else pad)


def keeps_logits(model: Any) -> bool:
    """Whether ``model.hf.forward`` takes ``logits_to_keep`` (then only the last position's
    logits need computing)."""
    try:
        return "logits_to_keep" in inspect.signature(model.hf.forward).parameters
    except (TypeError, ValueError):
        return False
