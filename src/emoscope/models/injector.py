"""Hooks on every block for scoring forwards (no generation): concept injection with capture,
replaying known blocks, eager attention.

- ``Injector``: one delta per row and column on every block (``edits.edit_residual``), with
  capture of ``resid[l]`` at chosen positions for the logit lens.
- ``replay_blocks``: skip blocks whose output is already known; ``eager_attention``: switch to
  eager attention (for attention weights) and back.

All three are re-exported by ``emoscope.models.interventions``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from emoscope.models.edits import edit_residual, replace_block_output
from emoscope.models.standard import StandardModel, block_output

__all__ = ["Injector", "eager_attention", "replay_blocks"]


class Injector:
    """Forward hooks on every block of ``model``.

    Set ``deltas`` (``{layer: tensor broadcastable to (batch, seq, d_model)}``) before each
    forward; blocks without an entry are left untouched. When ``gather`` is set to a
    ``(batch,)`` tensor of sequence positions, ``captured[l]`` holds ``resid[l]`` (after any
    injection) at those positions, ``(batch, d_model)``, for the logit lens; a ``(batch, k)``
    tensor gives ``(batch, k, d_model)``.

    >>> with Injector(model) as inj:                                  # doctest: +SKIP
    ...     inj.deltas = {12: 4.0 * v.view(1, 1, -1)}
    ...     model.base(input_ids=ids)
    """

    def __init__(self, model: StandardModel) -> None:
        self.model = model
        self.deltas: dict[int, torch.Tensor] = {}
        self.gather: torch.Tensor | None = None
        self.captured: list[torch.Tensor | None] = [None] * model.n_layers
        self.forms: dict[int, int] = {}  # block -> 0 if it returns a tensor, else its tuple length
        self._handles: list[Any] = []

    def _hook(self, layer: int):  # noqa: ANN202
        def hook(_module, _inputs, output):  # noqa: ANN001, ANN202
            h = block_output(output)  # (batch, seq, d_model)
            self.forms[layer] = len(output) if isinstance(output, tuple) else 0
            delta = self.deltas.get(layer)
            if delta is not None:
                h = edit_residual(h, delta)  # the same edit as EditHook, per row and column
            if self.gather is not None:
                rows = torch.arange(h.shape[0], device=h.device)
                rows = rows[:, None] if self.gather.dim() == 2 else rows
                self.captured[layer] = h[rows, self.gather.to(h.device)]
            return None if delta is None else replace_block_output(output, h)
        return hook

    def __enter__(self) -> Injector:
        self._handles = [blk.register_forward_hook(self._hook(i)) for i, blk in enumerate(self.model.blocks)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.deltas, self.gather = {}, None


@contextlib.contextmanager
def eager_attention(model: StandardModel) -> Iterator[None]:
    """Switch ``model`` to eager attention (needed for attention weights) and back."""
    old = getattr(model.hf.config, "_attn_implementation", None)
    switch = old is not None and old != "eager"
    if switch:
        model.hf.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.hf.set_attn_implementation(old)


class _Replay(nn.Module):
    """Stands in for a decoder block without computing: returns ``value`` (or its input)."""

    def __init__(self, original: nn.Module, value: torch.Tensor | None, form: int) -> None:
        super().__init__()
        self.value, self.form = value, form
        for attr in ("attention_type", "layer_idx", "is_sliding", "layer_type"):  # read by some model loops
            if hasattr(original, attr):
                setattr(self, attr, getattr(original, attr))

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        h = hidden_states if self.value is None else self.value
        return (h, *([None] * (self.form - 1))) if self.form else h


@contextlib.contextmanager
def replay_blocks(model: StandardModel, layer: int, value: torch.Tensor, forms: dict[int, int]) -> Iterator[None]:
    """Skip blocks ``0..layer``: block ``layer`` returns ``value`` (``(batch, seq, d_model)``,
    its known output, e.g. the uninjected residual plus the injection), earlier blocks return
    their input untouched. Only blocks after ``layer`` compute. Their KV caches for this forward
    are not filled, so use this for scoring, never for generation. ``forms`` says whether each
    block returns a tensor (0) or a tuple of that length (see ``Injector.forms``).
    """
    originals = [model.blocks[i] for i in range(layer + 1)]
    try:
        for i, blk in enumerate(originals):
            model.blocks[i] = _Replay(blk, value if i == layer else None, forms.get(i, 0))
        yield
    finally:
        for i, blk in enumerate(originals):
            model.blocks[i] = blk