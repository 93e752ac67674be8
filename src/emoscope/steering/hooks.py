"""Hooks that edit the residual stream: ``steer`` (add / ablate / ablate then add) and ``patch``.

Positions under the KV cache
----------------------------
During cached generation every forward sees only the new tokens, so a hook cannot tell a
prompt token from a generated one by its index in the current call. A pre-hook on the
decoder stack (``model.base``) therefore records, for every forward, the absolute column of its
first token (the length of the KV cache it was given), the attention mask (for left padding), and
the prompt length (the width of the first forward of a sequence). A forward without a cache
that re-reads a longer copy of the same sequence (``generate(use_cache=False)``) is recognised
as the same sequence, so "generated" means the same columns with and without the cache.

Windows (``positions=``): ``all``; ``prompt`` (columns before the prompt length);
``generated`` (columns from the prompt length on); ``from:K`` (tokens from the K-th real token of
each row on, counting from 0 after any left padding).

Every hook is removed in ``finally``, also when the body raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emoscope.errors import InputError, PositionError
from emoscope.models.kvcache import input_cache, past_length
from emoscope.models.standard import block_output
from emoscope.steering.units import unit_deltas

__all__ = ["steer", "patch", "Window", "parse_window", "EditHook", "PositionTracker", "MODES", "edit_residual",
           "replace_block_output"]

MODES = ("add", "ablate", "ablate_add")


@dataclass(frozen=True)
class Window:
    """Which token columns an edit touches. ``kind``: all | prompt | generated | from; ``k``: the
    first token for ``from``."""

    kind: str
    k: int = 0

    @property
    def spec(self) -> str:
        return f"from:{self.k}" if self.kind == "from" else self.kind

    def mask(self, tracker: PositionTracker, batch: int, width: int, device: torch.device) -> torch.Tensor | None:
        """``(batch, width)`` bool of columns to edit in the current forward, or ``None`` for all."""
        if self.kind == "all":
            return None
        cols = torch.arange(tracker.offset, tracker.offset + width, device=device)  # (width,)
        if self.kind == "prompt":
            m = cols < tracker.prompt_len
        elif self.kind == "generated":
            m = cols >= tracker.prompt_len
        else:
            first = tracker.first_real(batch, device)  # (batch,)
            return (cols[None, :] - first[:, None]) >= self.k
        return m[None, :].expand(batch, width)


def parse_window(spec: str | Window) -> Window:
    """``"all"``, ``"prompt"``, ``"generated"`` or ``"from:K"`` (K >= 0).

    >>> parse_window("from:3")
    Window(kind='from', k=3)
    """
    if isinstance(spec, Window):
        return spec
    text = str(spec).strip().lower()
    if text in ("all", "prompt", "generated"):
        return Window(text)
    if text.startswith("from:"):
        try:
            k = int(text[5:])
        except ValueError:
            k = -1
        if k >= 0:
            return Window("from", k)
    raise PositionError(f"positions {spec!r} not understood; use all, prompt, generated or from:K (K >= 0)")


class PositionTracker:
    """Forward pre-hook on the decoder stack: where the current forward sits in its sequence."""

    def __init__(self) -> None:
        self.offset = 0  # absolute column of the current forward's first token
        self.prompt_len = 0  # width of the first forward of the sequence
        self._ids: torch.Tensor | None = None  # (batch, seen) token ids of the sequence so far
        self._mask: torch.Tensor | None = None  # (batch, seen + width) attention mask, if given
        self.calls = 0

    def first_real(self, batch: int, device: torch.device) -> torch.Tensor:
        """``(batch,)`` column of each row's first real token (non-zero under left padding)."""
        m = self._mask
        if m is None or m.dim() != 2 or m.shape[0] != batch:
            return torch.zeros(batch, dtype=torch.long, device=device)
        return m.to(device).long().argmax(dim=1)

    def __call__(self, _module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        x = ids if ids is not None else kwargs.get("inputs_embeds")
        if x is None:
            return
        width = int(x.shape[1])
        past_len = past_length(input_cache(kwargs))
        if past_len > 0:  # a cached continuation
            if self.calls == 0 or self._ids is None:
                self.prompt_len = past_len  # entered mid-sequence: what is cached is the prompt
            self.offset = past_len
            if ids is not None and self._ids is not None and self._ids.shape[1] == past_len \
                    and self._ids.shape[0] == ids.shape[0]:
                self._ids = torch.cat([self._ids, ids], dim=1)
            else:
                self._ids = None
        else:
            prev = self._ids
            same = (ids is not None and prev is not None and prev.shape[0] == ids.shape[0]
                    and width > prev.shape[1] and torch.equal(ids[:, : prev.shape[1]], prev))
            if not same:  # a new sequence
                self.prompt_len = width
            self.offset = 0
            self._ids = ids
        self._mask = kwargs.get("attention_mask")
        self.calls += 1


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
    return t.to(like.dtype)


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
        a = ablate if isinstance(ablate, float) else ablate.to(h.dtype).view(-1, 1, 1)
        new = new - a * (new * u).sum(-1, keepdim=True) * u
    if delta is not None:
        new = new + _rows(delta, batch, h)
    return new


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


@contextlib.contextmanager
def _installed(model: Any, hooks: Mapping[int, Any], tracker: PositionTracker) -> Iterator[PositionTracker]:
    handles = []
    try:
        handles.append(model.base.register_forward_pre_hook(tracker, with_kwargs=True))
        for layer, hook in hooks.items():
            handles.append(model.blocks[layer].register_forward_hook(hook))
        yield tracker
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def steer(model: Any, vector: Any, layers: int | Sequence[int] | str, strength: float = 1.0, *,
          positions: str = "all", mode: str = "add", unit: str = "norm",
          norms: Mapping[int, float] | None = None) -> Iterator[PositionTracker]:
    """Edit ``resid[l]`` (the output of block ``l``) for everything run inside the block.

    ``mode``: ``"add"`` adds ``strength`` x the vector; ``"ablate"`` removes the projection on
    the vector's direction (``strength`` is ignored); ``"ablate_add"`` removes it, then adds.
    ``unit="norm"`` counts ``strength`` in typical per-token residual norms at that layer
    (see ``emoscope.steering.units``); ``"raw"`` uses the vector as given.
    ``positions``: ``all``, ``prompt``, ``generated`` or ``from:K``; correct under the KV cache.

    >>> with steer(model, joy, layers=[15], strength=4.0, positions="generated"):  # doctest: +SKIP
    ...     out = model.hf.generate(**enc, max_new_tokens=32, do_sample=False)
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    strength = _as_strength(strength)
    window = parse_window(positions)
    layer_list = model.resolve_layers(layers if not isinstance(layers, int) else [layers])
    deltas, dirs = unit_deltas(model, vector, layer_list, unit=unit, norms=norms)
    tracker = PositionTracker()
    hooks = {}
    for layer in layer_list:
        delta = None if mode == "ablate" else _tensor(strength * deltas[layer], model)
        u = None if mode == "add" else _tensor(dirs[layer], model)
        hooks[layer] = EditHook(tracker, window, delta=delta, direction=u, ablate=0.0 if mode == "add" else 1.0)
    with _installed(model, hooks, tracker) as t:
        yield t


def _as_strength(value: Any) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise InputError(f"strength must be a number, got {value!r}") from None
    if not np.isfinite(s):
        raise InputError(f"strength must be finite, got {value!r}")
    return s


def _tensor(arr: np.ndarray, model: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(arr), dtype=model.dtype, device=model.device)


class _PatchHook:
    """Write recorded source states into the target columns that the current forward covers."""

    def __init__(self, tracker: PositionTracker, source: torch.Tensor, src_idx: list[int], tgt_idx: list[int] | None) -> None:
        self.tracker, self.source, self.src_idx, self.tgt_idx = tracker, source, src_idx, tgt_idx

    def __call__(self, _module: Any, _inputs: Any, output: Any) -> Any:
        h = block_output(output)  # (batch, seq, d)
        batch, width = h.shape[0], h.shape[1]
        off = self.tracker.offset
        first = self.tracker.first_real(batch, h.device)  # (batch,)
        new = h.clone()
        touched = False
        for j, s in enumerate(self.src_idx):
            for r in range(batch):
                # target column: a relative index from the row's first real token, or the last prompt token
                col = int(first[r]) + self.tgt_idx[j] if self.tgt_idx is not None else self.tracker.prompt_len - 1
                if off <= col < off + width and col < self.tracker.prompt_len:  # prompt tokens only
                    new[r, col - off] = self.source[s]
                    touched = True
        return replace_block_output(output, new) if touched else output


@contextlib.contextmanager
def patch(model: Any, source: str | Sequence[int], layers: int | Sequence[int] | str,
          positions: str | Sequence[int] = "last", *, add_special_tokens: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Activation patching: record ``resid[l]`` on ``source`` and write it into every forward run
    inside the block, at the same positions.

    ``positions``: ``"last"`` (source's last token -> each target row's last prompt token),
    ``"all"`` (token ``i`` -> token ``i`` for every source token), or a list of token indices
    counted from the first real token (negative counts from the source's end). Yields the
    recorded states ``{layer: (source_len, d_model)}``.

    >>> with patch(model, "I am thrilled!", layers=[12], positions="last"):   # doctest: +SKIP
    ...     logits = model.hf(**enc).logits
    """
    layer_list = model.resolve_layers(layers if not isinstance(layers, int) else [layers])
    if isinstance(source, str):
        if not source.strip():
            raise InputError("patch source prompt is empty")
        ids = model.tokenizer(source, add_special_tokens=add_special_tokens)["input_ids"]
    else:
        ids = [int(t) for t in source]
    if not ids:
        raise InputError("patch source has no tokens")
    n = len(ids)
    if isinstance(positions, str) and positions == "last":
        src_idx, tgt_idx = [n - 1], None
    elif isinstance(positions, str) and positions == "all":
        src_idx = list(range(n))
        tgt_idx = list(range(n))
    elif isinstance(positions, str):
        raise PositionError(f"patch positions {positions!r} not understood; use 'last', 'all' or a list of token indices")
    else:
        src_idx = []
        for p in positions:
            i = int(p) + n if int(p) < 0 else int(p)
            if not 0 <= i < n:
                raise PositionError(f"patch position {p} is outside the source prompt ({n} tokens)")
            src_idx.append(i)
        tgt_idx = list(src_idx)
    recorded: dict[int, torch.Tensor] = {}
    grab = [model.blocks[layer].register_forward_hook(
        lambda _m, _i, o, layer=layer: recorded.__setitem__(layer, block_output(o)[0].detach().clone()))
        for layer in layer_list]
    try:
        with torch.inference_mode():
            model.base(input_ids=torch.tensor([ids], device=model.device), use_cache=False)
    finally:
        for g in grab:
            g.remove()
    recorded = {k: v.clone() for k, v in recorded.items()}  # leave inference mode tensors behind
    tracker = PositionTracker()
    hooks = {layer: _PatchHook(tracker, recorded[layer], src_idx, tgt_idx) for layer in layer_list}
    with _installed(model, hooks, tracker):
        yield recorded
