"""Interventions on the residual stream, in one place: the edit, its token window, the hooks.

Everything in emoscope that changes a forward goes through here: ``steer`` / ``patch``
(``emoscope.steering.hooks``), the per-row decode loop (``emoscope.models.decode``) and concept
injection (``emoscope.introspection``). This module holds the hooks that apply an edit on chosen
blocks and re-exports the rest, so every name below is importable from here:

- ``edit_residual``: ``h - a (h . u) u + delta``, the one edit (add, ablate, ablate then add);
  ``x + 0.0 == x`` exactly, so a zero edit is a bitwise no-op (``edits.py``, with
  ``replace_residual`` and ``replace_block_output``).
- ``Window`` / ``parse_window``: which token columns an edit touches (``all``, ``prompt``,
  ``generated``, ``from:K``), and ``PositionTracker``: where the current forward sits in its
  sequence, so windows stay right under the KV cache (``windows.py``, which says how).
- ``EditHook`` + ``installed``: a windowed edit on chosen blocks for a ``with`` body.
- ``replace_residual`` / ``ReplaceHook``: the replacement edit of activation patching,
  ``h = where(mask, value, h)`` with a per-row ``(rows, seq, d)`` value aligned to the end of the
  prompt, and optionally one ``(rows, d)`` state written at every generated position;
  ``chain_hooks``: several hooks on one block, applied in order.
- ``Injector``: one delta per row and column on every block, with capture for the logit lens.
- ``replay_blocks``: skip blocks whose output is already known; ``eager_attention``: switch to
  eager attention (for attention weights) and back (``injector.py``, with ``Injector``).

The per-head split of attention lives in ``emoscope.models.head_outputs``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from emoscope.errors import InputError
from emoscope.models.edits import edit_residual, replace_block_output, replace_residual
from emoscope.models.injector import Injector, eager_attention, replay_blocks
from emoscope.models.standard import block_output
from emoscope.models.windows import PositionTracker, Window, parse_window

__all__ = ["Window", "parse_window", "PositionTracker", "replace_block_output", "edit_residual", "EditHook",
           "installed", "Injector", "eager_attention", "replay_blocks", "replace_residual", "ReplaceHook",
           "chain_hooks"]


class EditHook:
    """Forward hook on one block: ``edit_residual`` inside the window.

    ``delta`` and ``u`` are ``(d,)`` (every row the same) or ``(batch, d)`` (one per row);
    ``ablate`` is a float or a ``(batch,)`` tensor of 0/1. With ``delta = 0`` and ``ablate = 0``
    the output is bitwise unchanged.
    """

    def __init__(self, tracker: PositionTracker, window: Window, delta: torch.Tensor | None = None,
                 direction: torch.Tensor | None = None, ablate: float | torch.Tensor = 0.0) -> None:
        self.tracker, self.window = tracker, window
        self.delta, self.direction, self.ablate = delta, direction, ablate

    def __call__(self, _module: Any, _inputs: Any, output: Any) -> Any:
        h = block_output(output)  # (batch, seq, d)
        new = edit_residual(h, self.delta, self.direction, self.ablate)
        if new is h:
            return output
        m = self.window.mask(self.tracker, h.shape[0], h.shape[1], h.device)
        if m is not None:
            new = torch.where(m[..., None], new, h)
        return replace_block_output(output, new)


class ReplaceHook:
    """Forward hook on one block: activation patching by replacement, correct under the KV cache.

    ``value`` ``(rows, V, d)`` and ``mask`` ``(rows, V)`` (bool) are aligned to the **end of the
    prompt**: ``value[:, -1]`` is written at the prompt's last column, ``value[:, -2]`` one before,
    and so on; columns where ``mask`` is False are left alone. Under left padding (the decode loop,
    ``generate`` with ``padding_side="left"``) the prompt's last column is every row's last prompt
    token, so the alignment does not depend on how much padding a batch carries.
    ``generated`` ``(rows, d)`` is written at every generated column (from the prompt length on)
    of the rows where ``generated_mask`` ``(rows,)`` is True. Prompt length and the offset of
    the current forward come from the ``PositionTracker``, so a cached decode step (one column)
    and a recomputation without cache (``generate(use_cache=False)``) edit the same columns.

    The tensors may live on the CPU: they are moved to the forward's device and dtype when used
    (the prompt values once per prefill, the generated states once).
    """

    def __init__(self, tracker: PositionTracker, value: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 generated: torch.Tensor | None = None, generated_mask: torch.Tensor | None = None) -> None:
        if (value is None) != (mask is None):
            raise InputError("ReplaceHook needs both value and mask, or neither")
        if value is not None and (value.dim() != 3 or mask.shape != value.shape[:2]):
            raise InputError(f"ReplaceHook value {tuple(value.shape)} and mask {tuple(mask.shape)} must be "
                             "(rows, V, d) and (rows, V)")
        if generated is not None and generated.dim() != 2:
            raise InputError(f"ReplaceHook generated states must be (rows, d), got {tuple(generated.shape)}")
        self.tracker = tracker
        self.value, self.mask = value, None if mask is None else mask.bool()
        self.generated = generated
        self.generated_mask = None
        if generated is not None:
            gm = torch.ones(generated.shape[0], dtype=torch.bool) if generated_mask is None else generated_mask.bool()
            self.generated_mask = gm
        self._gen_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, _module: Any, _inputs: Any, output: Any) -> Any:
        h = block_output(output)  # (batch, width, d)
        batch, width = h.shape[0], h.shape[1]
        off, plen = self.tracker.offset, self.tracker.prompt_len
        cols = torch.arange(off, off + width)  # (width,) absolute columns, on the CPU: no device sync
        new = h
        if self.value is not None and off < plen:
            if self.value.shape[0] != batch:
                raise InputError(f"patch values have {self.value.shape[0]} rows but the forward has {batch}")
            n_val = self.value.shape[1]
            idx = cols - (plen - n_val)  # (width,) index into value, end-aligned
            ok = (cols < plen) & (idx >= 0)
            if bool(ok.any()):
                sel = idx.clamp(0, n_val - 1)
                mask = self.mask.cpu()[:, sel] & ok[None, :]  # (batch, width), decided on the CPU
                val = self.value.to(device=h.device, dtype=h.dtype)[:, sel.to(h.device)]  # (batch, width, d)
                new = replace_residual(new, val, mask)
        if self.generated is not None and off + width > plen:
            if self._gen_cache is None or self._gen_cache[0].device != h.device or self._gen_cache[0].dtype != h.dtype:
                self._gen_cache = (self.generated.to(device=h.device, dtype=h.dtype),
                                   self.generated_mask.cpu())
            gen, gmask = self._gen_cache
            if gen.shape[0] != batch:
                raise InputError(f"generated patch states have {gen.shape[0]} rows but the forward has {batch}")
            mask = (cols >= plen)[None, :] & gmask[:, None]  # (batch, width)
            new = replace_residual(new, gen[:, None, :], mask)
        return output if new is h else replace_block_output(output, new)


def chain_hooks(*hooks: Any) -> Any:
    """One forward hook that applies ``hooks`` in order, each seeing the output of the one before
    (``installed`` takes one hook per block)."""
    hooks = tuple(h for h in hooks if h is not None)
    if len(hooks) == 1:
        return hooks[0]

    def hook(module: Any, inputs: Any, output: Any) -> Any:
        for h in hooks:
            out = h(module, inputs, output)
            output = output if out is None else out
        return output
    return hook


@contextlib.contextmanager
def installed(model: Any, hooks: Mapping[int, Any], tracker: PositionTracker) -> Iterator[PositionTracker]:
    """Register ``tracker`` as a pre-hook on the decoder stack and ``hooks[l]`` as a forward
    hook on block ``l`` for the body of the ``with``; all are removed on exit, also on error.

    >>> tracker = PositionTracker()                                              # doctest: +SKIP
    >>> with installed(model, {12: EditHook(tracker, Window("generated"), delta=v)}, tracker):  # doctest: +SKIP
    ...     model.hf.generate(**enc, max_new_tokens=16)
    """
    handles = []
    try:
        handles.append(model.base.register_forward_pre_hook(tracker, with_kwargs=True))
        for layer, hook in hooks.items():
            handles.append(model.blocks[layer].register_forward_hook(hook))
        yield tracker
    finally:
        for h in handles:
            h.remove()
