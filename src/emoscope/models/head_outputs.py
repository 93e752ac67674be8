"""Per-head split of the attention output: what each head writes into the residual stream.

An attention block ends with the output projection ``o_proj`` (``Layout.attn_out``), whose input
is the heads' outputs side by side, ``z = [z_0, ..., z_{H-1}]`` with ``H = n_heads`` query heads
of ``head_dim`` features each. This holds under grouped-query attention too: key/value heads are
shared between query heads, but every query head has its own output, so the input has
``n_heads * head_dim`` features whatever the number of KV heads. The projection is linear, so

    o_proj(z) = sum_h W_O[:, h*hd:(h+1)*hd] @ z_h + b

and head ``h`` contributes ``W_O[:, h*hd:(h+1)*hd] @ z_h`` to the residual stream.

- ``head_outputs(model, layer)``: a context manager that captures ``z`` of block ``layer`` as
  ``(batch, seq, n_heads, head_dim)`` on every forward run inside it;
- ``head_contributions(model, layer, z)``: ``(batch, seq, n_heads, d_model)``, whose sum over
  heads plus ``head_bias(model, layer)`` (if any) is the ``o_proj`` output;
- ``head_weights(model, layer)``: ``W_O`` split per head, ``(n_heads, head_dim, d_model)``;
- ``head_readout(model, layer, u)``: ``(n_heads, head_dim)``, ``W_O^h`` applied to ``u``, so
  ``z_h . head_readout[h]`` is head ``h``'s direct contribution along ``u`` (no ``d_model``-wide
  product per head is needed to screen every head against a direction);
- ``HeadEdit`` + ``edit_heads(model, {layer: HeadEdit})``: replace chosen heads' outputs (their
  slices of the ``o_proj`` input) per row, with zeros (zero ablation), a fixed value per head
  (mean ablation) or per-row values at the last prompt tokens (head patching), inside a token
  window that stays right under the KV cache.

Head edits
----------
A forward pre-hook on ``o_proj`` sees ``z`` ``(rows, seq, n_heads * head_dim)`` and writes
``z[r, c, h] = value`` where ``mask[r, h]`` is set and column ``c`` is in the edit's columns
(``torch.where``, so every other entry is bitwise untouched, and an all-False mask is an exact
no-op). Columns: every column of ``window`` (``all``, ``prompt``, ``generated``, ``from:K``;
positions from a ``PositionTracker`` on the decoder stack, as for residual edits), or, with
``last_prompt_tokens=K``, the last ``K`` prompt columns with ``value[:, -1]`` written at the
last prompt token (aligned from the end; under left padding that column is every row's last
prompt token, whatever the padding). Rows are the batch rows of the forward: the caller runs one
batch of exactly ``mask.shape[0]`` rows inside the ``with``.

Both weight conventions are read: ``nn.Linear`` (``weight`` is ``(out, in)``) and GPT-2's
``Conv1D`` (``weight`` is ``(in, out)``).

>>> with head_outputs(model, 12) as cap:                                  # doctest: +SKIP
...     model.base(input_ids=ids)
>>> per_head = head_contributions(model, 12, cap.z)                       # doctest: +SKIP
>>> per_head.shape                                                        # doctest: +SKIP
torch.Size([1, 7, 9, 576])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from emoscope.errors import InputError, LayoutError
from emoscope.models.interventions import PositionTracker, Window
from emoscope.models.standard import StandardModel

__all__ = ["HeadCapture", "head_outputs", "head_weights", "head_bias", "head_contributions", "head_shape",
           "head_readout", "HeadEdit", "edit_heads"]


def _in_out(proj: nn.Module) -> torch.Tensor:
    """The projection's weight as ``(in, out)``: ``nn.Linear`` stores ``(out, in)``, GPT-2's
    ``Conv1D`` (which has ``nf`` = out features) stores ``(in, out)``."""
    w = getattr(proj, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise LayoutError(f"attention output projection {type(proj).__name__} has no 2-D weight to split per head")
    if isinstance(proj, nn.Linear):
        return w.T
    if hasattr(proj, "nf") and w.shape[1] == proj.nf:
        return w
    raise LayoutError(f"attention output projection {type(proj).__name__} is neither nn.Linear nor Conv1D; "
                      "cannot tell its weight layout")


def head_shape(model: StandardModel, layer: int) -> tuple[int, int]:
    """``(n_heads, head_dim)`` of the input of block ``layer``'s output projection."""
    n_in = int(_in_out(model.attn_out(layer)).shape[0])
    n_heads = int(model.n_heads)
    if n_heads < 1 or n_in % n_heads:
        raise LayoutError(f"the attention output projection of layer {layer} takes {n_in} features, "
                          f"not a multiple of n_heads = {n_heads}")
    return n_heads, n_in // n_heads


def head_weights(model: StandardModel, layer: int) -> torch.Tensor:
    """``(n_heads, head_dim, d_model)``: ``W_O`` split per head, as maps ``z_h -> resid``."""
    n_heads, head_dim = head_shape(model, layer)
    w = _in_out(model.attn_out(layer))  # (n_heads * head_dim, d_model)
    return w.reshape(n_heads, head_dim, w.shape[1])


def head_bias(model: StandardModel, layer: int) -> torch.Tensor | None:
    """``(d_model,)`` bias of the output projection (shared by the heads), or ``None``."""
    b = getattr(model.attn_out(layer), "bias", None)
    return b if isinstance(b, torch.Tensor) else None


def head_contributions(model: StandardModel, layer: int, z: torch.Tensor) -> torch.Tensor:
    """What each head writes into the residual stream at block ``layer``.

    ``z``: ``(batch, seq, n_heads, head_dim)`` (from ``head_outputs``) or the flat
    ``(batch, seq, n_heads * head_dim)``. Returns ``(batch, seq, n_heads, d_model)`` in
    ``z``'s dtype; ``out.sum(2) + head_bias(model, layer)`` is the output projection's output.
    """
    n_heads, head_dim = head_shape(model, layer)
    if z.dim() == 3:
        z = z.reshape(*z.shape[:2], n_heads, head_dim)
    if z.dim() != 4 or tuple(z.shape[2:]) != (n_heads, head_dim):
        raise ValueError(f"z must be (batch, seq, {n_heads}, {head_dim}), got {tuple(z.shape)}")
    # weights are constants here (gradients still flow to z), so inference-mode z works too
    w = head_weights(model, layer).detach().to(device=z.device, dtype=z.dtype)  # (n_heads, head_dim, d_model)
    return torch.einsum("bshk,hkd->bshd", z, w)


@dataclass
class HeadCapture:
    """Filled by ``head_outputs``: ``z`` is the last forward's output projection input,
    ``(batch, seq, n_heads, head_dim)``; ``calls`` counts the forwards seen."""

    layer: int
    n_heads: int
    head_dim: int
    z: torch.Tensor | None = None
    calls: int = 0


@contextlib.contextmanager
def head_outputs(model: StandardModel, layer: int) -> Iterator[HeadCapture]:
    """Capture the per-head outputs of block ``layer`` (the input of its attention output
    projection) on every forward inside the ``with``. The hook is removed on exit, also on
    error; it only reads, so outputs are unchanged."""
    layer = model.check_layer(layer)
    n_heads, head_dim = head_shape(model, layer)
    cap = HeadCapture(layer, n_heads, head_dim)

    def hook(_module: Any, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next(iter(kwargs.values()))  # (batch, seq, n_heads * head_dim)
        cap.z = x.detach().reshape(*x.shape[:-1], n_heads, head_dim)
        cap.calls += 1

    handle = model.attn_out(layer).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield cap
    finally:
        handle.remove()


def head_readout(model: StandardModel, layer: int, direction: Any) -> torch.Tensor:
    """``(n_heads, head_dim)``: each head's slice of ``W_O`` applied to ``direction`` ``(d_model,)``.

    ``(z[..., h, :] * head_readout(model, layer, u)[h]).sum(-1)`` equals
    ``head_contributions(model, layer, z)[..., h, :] @ u``: head ``h``'s direct write along ``u``.
    Returned in the model's dtype on its device (float32 math inside).
    """
    w = head_weights(model, layer).detach()  # (n_heads, head_dim, d_model)
    u = torch.as_tensor(direction, dtype=torch.float32, device=w.device).reshape(-1)
    if u.numel() != w.shape[-1]:
        raise InputError(f"direction has {u.numel()} features but layer {layer} writes d_model={w.shape[-1]}")
    return torch.einsum("hkd,d->hk", w.float(), u).to(w.dtype)


@dataclass
class HeadEdit:
    """Replace heads' outputs (slices of the ``o_proj`` input) of block ``layer``, per row.

    ``mask`` ``(rows, n_heads)`` bool: which heads of which row are replaced. ``value``: ``None``
    (zeros: zero ablation), ``(n_heads, head_dim)`` (the same for every row and column: mean
    ablation), ``(rows, n_heads, head_dim)`` (one per row), or with ``last_prompt_tokens=K``
    ``(rows, K, n_heads, head_dim)``, written at the last ``K`` prompt columns aligned from the
    end (``value[:, -1]`` at the last prompt token: head patching). ``window`` (default ``all``)
    limits the columns when ``last_prompt_tokens`` is 0.
    """

    mask: torch.Tensor
    value: torch.Tensor | None = None
    window: Window | None = None
    last_prompt_tokens: int = 0

    def __post_init__(self) -> None:
        if self.mask.dim() != 2:
            raise InputError(f"head mask must be (rows, n_heads), got {tuple(self.mask.shape)}")
        self.mask = self.mask.bool()
        k = int(self.last_prompt_tokens)
        if k < 0:
            raise InputError(f"last_prompt_tokens must be >= 0, got {k}")
        if k and (self.value is None or self.value.dim() != 4 or self.value.shape[1] != k):
            raise InputError(f"a patch of the last {k} prompt tokens needs values (rows, {k}, n_heads, head_dim)")
        if self.value is not None and self.value.dim() not in (2, 3, 4):
            raise InputError(f"head values must be (n_heads, head_dim), (rows, n_heads, head_dim) or "
                             f"(rows, K, n_heads, head_dim); got {tuple(self.value.shape)}")
        if self.value is not None and self.value.dim() == 4 and not k:
            raise InputError("per-token head values need last_prompt_tokens=K")


class _HeadHook:
    """The ``o_proj`` forward pre-hook of one ``HeadEdit``."""

    def __init__(self, edit: HeadEdit, n_heads: int, head_dim: int, tracker: PositionTracker) -> None:
        if edit.mask.shape[1] != n_heads:
            raise InputError(f"head mask has {edit.mask.shape[1]} heads but the layer has {n_heads}")
        v = edit.value
        if v is not None and tuple(v.shape[-2:]) != (n_heads, head_dim):
            raise InputError(f"head values end in {tuple(v.shape[-2:])}, the layer's heads are ({n_heads}, {head_dim})")
        if v is not None and v.dim() >= 3 and v.shape[0] != edit.mask.shape[0]:
            raise InputError(f"head values have {v.shape[0]} rows but the mask has {edit.mask.shape[0]}")
        self.edit, self.n_heads, self.head_dim, self.tracker = edit, n_heads, head_dim, tracker
        self.any = bool(edit.mask.any())
        self._dev: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = (device, dtype)
        if key not in self._dev:  # moved once per device and dtype, not every decode step
            v = self.edit.value
            self._dev[key] = (self.edit.mask.to(device), None if v is None else v.to(device=device, dtype=dtype))
        return self._dev[key]

    def __call__(self, _module: Any, args: tuple, kwargs: dict) -> Any:
        if not self.any:
            return None
        x = args[0] if args else next(iter(kwargs.values()))  # (rows, seq, n_heads * head_dim)
        rows, width = x.shape[0], x.shape[1]
        k = self.edit.last_prompt_tokens
        cm = None  # (rows | 1, width) columns to edit; computed before the rows check, so a forward
        if k:      # that edits nothing (a prompt prefill shared by all rows) may have any batch size
            off, plen = self.tracker.offset, self.tracker.prompt_len
            cols = torch.arange(off, off + width, device=x.device)
            idx = cols - (plen - k)  # index into the K values, aligned from the end of the prompt
            ok = (cols < plen) & (idx >= 0)  # (width,)
            if not bool(ok.any()):
                return None
            cm = ok[None, :]
        elif self.edit.window is not None:
            cm = self.edit.window.mask(self.tracker, rows, width, x.device)
            if cm is not None and not bool(cm.any()):
                return None
        mask, value = self._on(x.device, x.dtype)
        if mask.shape[0] != rows:
            raise InputError(f"head edit has {mask.shape[0]} rows but the forward has {rows}")
        z = x.reshape(rows, width, self.n_heads, self.head_dim)
        m = mask[:, None, :]  # (rows, 1, n_heads)
        if cm is not None:
            m = m & cm[:, :, None]
        if k:
            val = value[:, idx.clamp(0, k - 1)]  # (rows, width, n_heads, head_dim)
        elif value is None:
            val = torch.zeros((), dtype=x.dtype, device=x.device)
        elif value.dim() == 2:
            val = value[None, None]  # (1, 1, n_heads, head_dim)
        else:
            val = value[:, None]  # (rows, 1, n_heads, head_dim)
        new = torch.where(m[..., None], val, z).reshape(x.shape)
        if args:
            return (new, *args[1:]), kwargs
        key = next(iter(kwargs))
        return args, {**kwargs, key: new}


@contextlib.contextmanager
def edit_heads(model: StandardModel, edits: Mapping[int, HeadEdit],
               tracker: PositionTracker | None = None) -> Iterator[PositionTracker]:
    """Apply ``edits`` (``{layer: HeadEdit}``) to every forward inside the ``with``; hooks are
    removed on exit, also on error. A ``PositionTracker`` (yours, or a new one) is registered on
    the decoder stack so windows and prompt-end alignment stay right under the KV cache.

    >>> mask = torch.zeros(2, model.n_heads, dtype=torch.bool); mask[1, 3] = True   # doctest: +SKIP
    >>> with edit_heads(model, {12: HeadEdit(mask)}):         # zero-ablate head 12.3 in row 1  # doctest: +SKIP
    ...     model.hf.generate(**enc, max_new_tokens=16)
    """
    tracker = tracker if tracker is not None else PositionTracker()
    hooks = []
    for layer, edit in edits.items():
        layer = model.check_layer(int(layer))
        n_heads, head_dim = head_shape(model, layer)
        hooks.append((layer, _HeadHook(edit, n_heads, head_dim, tracker)))
    handles = []
    try:
        handles.append(model.base.register_forward_pre_hook(tracker, with_kwargs=True))
        for layer, hook in hooks:
            handles.append(model.attn_out(layer).register_forward_pre_hook(hook, with_kwargs=True))
        yield tracker
    finally:
        for h in handles:
            h.remove()
