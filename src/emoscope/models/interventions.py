"""Interventions on the residual stream, in one place: the edit, its token window, the hooks.

Everything in emoscope that changes a forward goes through here: ``steer`` / ``patch``
(``emoscope.steering.hooks``), the per-row decode loop (``emoscope.models.decode``) and concept
injection (``emoscope.introspection``).

- ``edit_residual``: ``h - a (h . u) u + delta``, the one edit (add, ablate, ablate then add);
  ``x + 0.0 == x`` exactly, so a zero edit is a bitwise no-op.
- ``Window`` / ``parse_window``: which token columns an edit touches (``all``, ``prompt``,
  ``generated``, ``from:K``), and ``PositionTracker``: where the current forward sits in its
  sequence, so windows stay right under the KV cache.
- ``EditHook`` + ``installed``: a windowed edit on chosen blocks for a ``with`` body.
- ``replace_residual`` / ``ReplaceHook``: the replacement edit of activation patching,
  ``h = where(mask, value, h)`` with a per-row ``(rows, seq, d)`` value aligned to the end of the
  prompt, and optionally one ``(rows, d)`` state written at every generated position;
  ``chain_hooks``: several hooks on one block, applied in order.
- ``Injector``: one delta per row and column on every block, with capture for the logit lens.
- ``replay_blocks``: skip blocks whose output is already known; ``eager_attention``: switch to
  eager attention (for attention weights) and back.

The per-head split of attention lives in ``emoscope.models.heads``.

Positions under the KV cache
----------------------------
During cached generation every forward sees only the new tokens, so a hook cannot tell a
prompt token from a generated one by its index in the current call. A pre-hook on the
decoder stack (``model.base``) therefore records, for every forward, the absolute column of its
first token (the length of the KV cache it was given), the attention mask (for left padding), and
the prompt length (the width of the first forward of a sequence). A forward without a cache
that re-reads a longer copy of the same sequence (``generate(use_cache=False)``) is recognised
as the same sequence, so "generated" means the same columns with and without the cache. A tracker
made with ``continues_prompt=True`` is for a prompt whose head was prefilled without it (the
decode loop's shared prompt heads): the first forward it sees is the prompt's tail, so the prompt
ends with that forward.

Windows: ``all``; ``prompt`` (columns before the prompt length); ``generated`` (columns from
the prompt length on); ``from:K`` (tokens from the K-th real token of each row on, counting from
0 after any left padding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from emoscope.errors import InputError, PositionError
from emoscope.models.kvcache import input_cache, past_length
from emoscope.models.standard import StandardModel, block_output

__all__ = ["Window", "parse_window", "PositionTracker", "replace_block_output", "edit_residual", "EditHook",
           "installed", "Injector", "eager_attention", "replay_blocks", "replace_residual", "ReplaceHook",
           "chain_hooks"]


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

    def __init__(self, *, continues_prompt: bool = False) -> None:
        self.offset = 0  # absolute column of the current forward's first token
        self.prompt_len = 0  # width of the first forward of the sequence
        # the first forward seen continues a prompt whose head was prefilled without this tracker:
        # the prompt ends with that forward (decode_rows with shared_prefix)
        self.continues_prompt = continues_prompt
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
            if self.continues_prompt:
                if self.calls == 0:
                    self.prompt_len = past_len + width  # the prompt's tail: the prompt ends here
            elif self.calls == 0 or self._ids is None:
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


def replace_residual(h: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``where(mask, value, h)``: the replacement edit. ``h`` and ``value`` ``(batch, seq, d)``
    (``value`` may broadcast), ``mask`` ``(batch, seq)`` bool. Returns ``h`` itself when the mask
    is empty, so a replacement that touches nothing is a bitwise no-op."""
    if not bool(mask.any()):
        return h
    return torch.where(mask.to(h.device)[..., None], value.to(device=h.device, dtype=h.dtype), h)


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
