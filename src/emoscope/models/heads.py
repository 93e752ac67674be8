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
- ``head_weights(model, layer)``: ``W_O`` split per head, ``(n_heads, head_dim, d_model)``.

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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from emoscope.errors import LayoutError
from emoscope.models.standard import StandardModel

__all__ = ["HeadCapture", "head_outputs", "head_weights", "head_bias", "head_contributions", "head_shape"]


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
