"""Padding, position ids and special token ids: the one helper every batched forward uses.

Extraction, the steering decode loop, the perplexity scorer and the introspection cells all
turn lists of token ids into a padded batch. They share one convention, the one
``transformers.generate`` uses, so a batched forward here agrees with ``generate``:

- ``position_ids = cumsum(mask) - 1``: real tokens count from 0 whichever side the padding is on;
- padding positions get position 1 (they are masked out, so the value only has to be valid).

Real tokens never attend to padding, so their states do not depend on the padding side or on
what the padding positions hold (``tests/test_extract.py`` and ``tests/test_interventions.py``
check this).

>>> ids, mask, pos, start = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
>>> ids.tolist(), pos.tolist(), start.tolist()
([[5, 6, 7], [0, 0, 8]], [[0, 1, 2], [1, 1, 0]], [0, 2])
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from emoscope.errors import InputError

__all__ = ["pad_batch", "positions_from_mask", "pad_token_id", "eos_ids", "keeps_logits"]


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """``(batch, seq)`` position ids from a 0/1 attention mask, as ``transformers.generate``
    makes them: real tokens count from 0, padding gets position 1.

    >>> positions_from_mask(torch.tensor([[0, 1, 1], [1, 1, 0]])).tolist()
    [[1, 0, 1], [0, 1, 1]]
    """
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right",
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad token id lists into ``(ids, mask, position_ids, start)``.

    ``ids``, ``mask`` (0/1) and ``position_ids`` are ``(batch, width)`` long tensors,
    ``start`` ``(batch,)`` is the column of each row's first real token (0 under right
    padding). Position ids follow ``positions_from_mask``.
    """
    if side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', got {side!r}")
    if not seqs:
        raise InputError("nothing to pad: no sequences")
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
