"""The injection hook for batched forwards, and a KV cache shared by many rows.

``Injector`` adds a per-row vector to the output of chosen decoder blocks: each row has its
own vector, layer, strength and window, all folded into one ``(batch, seq, d_model)`` delta per
layer. Rows injected elsewhere get zeros there, and ``x + 0.0 == x`` exactly, so a row at
strength 0 reproduces the no-injection forward bit for bit. The hooks live only inside the
``with`` block.

``prefix_cache`` (and ``emoscope.models.kvcache.fork_cache``): the tokens before the window are the same for every cell of
a sweep, so their keys and values are computed once and expanded (a view, no copy) over each
batch; only the suffix runs per cell.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from emoscope.models.kvcache import output_cache
from emoscope.models.standard import StandardModel, block_output
from emoscope.steering.hooks import edit_residual, replace_block_output

__all__ = ["Injector", "prefix_cache", "common_prefix_length", "eager_attention", "replay_blocks"]


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
            h = block_output(output)
            self.forms[layer] = len(output) if isinstance(output, tuple) else 0
            delta = self.deltas.get(layer)
            if delta is not None:
                h = edit_residual(h, delta)  # the steering hooks' edit, per row and column
            if self.gather is not None:
                rows = torch.arange(h.shape[0], device=h.device)
                rows = rows[:, None] if self.gather.dim() == 2 else rows
                self.captured[layer] = h[rows, self.gather]
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


def prefix_cache(model: StandardModel, ids: Sequence[int]) -> Any:
    """KV cache of ``ids`` (one row), or ``None`` for an empty prefix. Run outside any
    ``Injector`` so the prefix stays uninjected."""
    if not ids:
        return None
    x = torch.tensor([list(ids)], device=model.device)
    return output_cache(model.base(input_ids=x, use_cache=True))


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
