"""Residual states at the tokens a model writes, two ways that must agree.

- ``StepRecorder``: forward hooks on the chosen blocks that keep ``resid[l]`` of every decode
  step (the state at the token fed in that step), captured in the same pass that writes the text;
- ``read_states``: a teacher-forced re-read of given token ids (prompt + text) in one padded
  forward, pooled over a span of positions.

Both pool the same way: the mean over a span ``[a, b)`` of positions (the text's tokens, from its
first one) and the state at its last token ``b - 1``. ``tests/test_elicit.py`` checks that the
two agree to 1e-5 relative on a tiny model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from emoscope.errors import InputError
from emoscope.models.batching import pad_batch, pad_token_id
from emoscope.models.standard import block_output

__all__ = ["POOLS", "StepRecorder", "read_states", "pool_steps"]

POOLS = ("mean", "last")


class StepRecorder:
    """Keep ``resid[l]`` at the newest position of every single-token forward of ``rows`` rows.

    ``steps[l]`` is a list with one ``(rows, d)`` float32 tensor per decode step: entry ``s`` is
    the state at generated token ``s`` (the token fed in step ``s``). Prefills (more than one
    position) are skipped. Hooks are removed on exit.

    >>> with StepRecorder(model, [3, 5], rows=12) as rec:         # doctest: +SKIP
    ...     decode_rows(model, ...)
    """

    def __init__(self, model: Any, layers: Sequence[int], rows: int) -> None:
        self.model, self.layers, self.rows = model, [model.check_layer(int(x)) for x in layers], int(rows)
        self.steps: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self._handles: list[Any] = []

    def _hook(self, layer: int):  # noqa: ANN202
        def hook(_module, _inputs, output):  # noqa: ANN001, ANN202
            h = block_output(output)  # (rows, seq, d)
            if h.shape[0] == self.rows and h.shape[1] == 1:
                self.steps[layer].append(h[:, 0].detach().float().cpu())
        return hook

    def __enter__(self) -> StepRecorder:
        self._handles = [self.model.blocks[layer].register_forward_hook(self._hook(layer)) for layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def pool_steps(steps: Sequence[torch.Tensor], spans: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Pool recorded steps per row over its span of generated-token indices ``[a, b)``.

    Returns ``{"mean": (rows, d), "last": (rows, d)}`` float32; rows with an empty span are NaN.
    """
    if not steps:
        raise InputError("no decode steps were recorded")
    stack = torch.stack(list(steps), dim=1).double()  # (rows, steps, d)
    rows, n_steps, d = stack.shape
    out = {p: np.full((len(spans), d), np.nan, dtype=np.float32) for p in POOLS}
    for r, (a, b) in enumerate(spans):
        if b <= a:
            continue
        if b > n_steps:
            raise InputError(f"row {r}: span ends at token {b} but only {n_steps} steps were recorded")
        out["mean"][r] = stack[r, a:b].mean(0).numpy()
        out["last"][r] = stack[r, b - 1].numpy()
    return out


@torch.inference_mode()
def read_states(model: Any, seqs: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]], layers: Sequence[int], *,
                batch_size: int = 32) -> dict[str, dict[int, np.ndarray]]:
    """Teacher-forced states of ``seqs`` (token ids), pooled per row over positions ``spans[r]``.

    Returns ``{pool: {layer: (n, d) float32}}`` for the pools ``mean`` (over ``[a, b)``) and
    ``last`` (position ``b - 1``). Right padding; position ids follow the attention mask.

    >>> read_states(model, [[1, 2, 3, 4]], [(2, 4)], [0])["last"][0].shape   # doctest: +SKIP
    (1, 576)
    """
    if len(seqs) != len(spans):
        raise InputError(f"{len(seqs)} sequences but {len(spans)} spans")
    for i, ((a, b), s) in enumerate(zip(spans, seqs, strict=True)):
        if not 0 <= a < b <= len(s):
            raise InputError(f"sequence {i}: span ({a}, {b}) is empty or outside its {len(s)} tokens")
    layers = [model.check_layer(int(x)) for x in layers]
    out = {p: {layer: np.empty((len(seqs), model.d_model), dtype=np.float32) for layer in layers} for p in POOLS}
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    grabbed: dict[int, torch.Tensor] = {}

    def make(layer: int):  # noqa: ANN202
        def hook(_m, _i, output):  # noqa: ANN001, ANN202
            grabbed[layer] = block_output(output).detach()
        return hook

    handles = [model.blocks[layer].register_forward_hook(make(layer)) for layer in layers]
    try:
        for lo in range(0, len(order), batch_size):
            batch = order[lo: lo + batch_size]
            ids, mask, pos, _ = pad_batch([seqs[i] for i in batch], pad_token_id(model), "right", model.device)
            model.base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
            for layer in layers:
                h = grabbed.pop(layer).double()  # (batch, width, d)
                for j, i in enumerate(batch):
                    a, b = spans[i]
                    out["mean"][layer][i] = h[j, a:b].mean(0).cpu().numpy()
                    out["last"][layer][i] = h[j, b - 1].cpu().numpy()
    finally:
        for h in handles:
            h.remove()
    return out
