"""The edits themselves, on a hidden state ``(batch, seq, d)``; no hooks here.

- ``edit_residual``: ``h - a (h . u) u + delta``, the one edit (add, ablate, ablate then add);
  ``x + 0.0 == x`` exactly, so a zero edit is a bitwise no-op.
- ``replace_residual``: ``h = where(mask, value, h)``, the replacement edit of activation patching.
- ``replace_block_output``: a block's output (tuple or tensor) with its hidden state swapped.

The hooks that apply them are in ``emoscope.models.interventions`` (which re-exports all three)
and ``emoscope.models.injector``.
"""

from __future__ import annotations

from typing import Any

import torch

from emoscope.errors import InputError

__all__ = ["replace_block_output", "edit_residual", "replace_residual"]


def replace_block_output(output: Any, h: torch.Tensor) -> Any:
    """A block's output with its hidden state replaced by ``h`` (tuple or tensor, as it came)."""
    if isinstance(output, tuple):
        return (h, *output[1:])
    return h


def _rows(t: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Broadcast an edit tensor against ``like`` ``(batch, seq, d)``: ``(d,)`` is the same for
    every row and column, ``(batch, d)`` one per row, ``(batch, seq, d)`` one per row and column
    (either of its first two sizes may be 1)."""
    if t.dim() == 1:
        t = t[None, None, :]  # (1, 1, d)
    elif t.dim() == 2:
        if t.shape[0] != batch:
            raise InputError(f"per-row steering tensor has {t.shape[0]} rows but the batch has {batch}")
        t = t[:, None, :]  # (batch, 1, d)
    elif t.shape[0] not in (1, batch) or t.shape[1] not in (1, like.shape[1]):
        raise InputError(f"per-column steering tensor {tuple(t.shape)} does not match the forward {tuple(like.shape)}")
    return t.to(device=like.device, dtype=like.dtype)  # the block's device: a sharded model has several


def edit_residual(h: torch.Tensor, delta: torch.Tensor | None = None, direction: torch.Tensor | None = None,
                  ablate: float | torch.Tensor = 0.0) -> torch.Tensor:
    """``h - a * (h . u) u + delta`` for ``h`` ``(batch, seq, d)``: the one edit every emoscope
    hook applies (steering, ablation, concept injection).

    ``delta`` / ``direction``: ``(d,)``, ``(batch, d)`` or ``(batch, seq, d)``; ``ablate``: a float
    or a ``(batch,)`` tensor of 0/1. Returns ``h`` itself (the same object) when there is nothing
    to do, and ``x + 0.0 == x`` exactly, so zero edits are bitwise no-ops.
    """
    batch = h.shape[0]
    new = h
    if direction is not None and (not isinstance(ablate, float) or ablate != 0.0):
        u = _rows(direction, batch, h)
        a = ablate if isinstance(ablate, float) else ablate.to(device=h.device, dtype=h.dtype).view(-1, 1, 1)
        new = new - a * (new * u).sum(-1, keepdim=True) * u
    if delta is not None:
        new = new + _rows(delta, batch, h)
    return new


def replace_residual(h: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``where(mask, value, h)``: the replacement edit. ``h`` and ``value`` ``(batch, seq, d)``
    (``value`` may broadcast), ``mask`` ``(batch, seq)`` bool. Returns ``h`` itself when the mask
    is empty, so a replacement that touches nothing is a bitwise no-op."""
    if not bool(mask.any()):
        return h
    return torch.where(mask.to(h.device)[..., None], value.to(device=h.device, dtype=h.dtype), h)
