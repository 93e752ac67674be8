"""Residual states recorded for patching: every token of every text at the patched layers.

``record_states`` runs texts through the decoder in left-padded batches (the convention of
``emoscope.models.batching``, the same one the decode loop uses), with a plain forward hook on each
requested block; the forward stops after the last of them. Each text gets ``{layer: (len, d)}``
float32 tensors on the CPU, the states of its real tokens only.

``class_mean`` averages several texts' states **aligned from the end** (see
``emoscope.patching.positions``): position ``-j`` of the mean is the mean of position ``-j`` of
every text. Only the positions every text has are kept, so the mean is as long as the shortest
text and every one of its positions is a mean over the whole class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emoscope.errors import InputError
from emoscope.models.batching import pad_batch, pad_token_id
from emoscope.models.standard import block_output

__all__ = ["record_states", "class_mean"]

States = dict[int, torch.Tensor]


class _Stop(Exception):
    """Raised by the hook on the last requested block: later blocks need not run."""


@torch.inference_mode()
def record_states(model, token_lists: Sequence[Sequence[int]], layers: Sequence[int], *,
                  batch_size: int = 32) -> list[States]:
    """``resid[l]`` of every token of every sequence: ``[{layer: (len_i, d) float32 CPU}]``.

    >>> states = record_states(model, [[1, 2, 3], [4, 5]], [3, 7])          # doctest: +SKIP
    >>> states[1][7].shape                                                   # doctest: +SKIP
    torch.Size([2, 576])
    """
    layers = sorted({int(x) for x in layers})
    if not layers:
        raise InputError("record_states needs at least one layer")
    if not token_lists or any(len(t) == 0 for t in token_lists):
        raise InputError("every text to record needs at least one token")
    n = len(token_lists)
    out: list[States] = [{} for _ in range(n)]
    order = sorted(range(n), key=lambda i: len(token_lists[i]))  # little padding per batch
    last = layers[-1]
    grabbed: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):  # noqa: ANN202
        def hook(_module, _inputs, output):  # noqa: ANN001, ANN202
            grabbed[layer] = block_output(output).detach()
            if layer == last:
                raise _Stop
        return hook

    pad = pad_token_id(model)
    handles = [model.blocks[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    try:
        for lo in range(0, n, batch_size):
            batch = order[lo: lo + batch_size]
            ids, mask, pos, _ = pad_batch([list(token_lists[i]) for i in batch], pad, "left", model.device)
            grabbed.clear()
            try:
                model.base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
            except _Stop:
                pass
            width = ids.shape[1]
            for layer in layers:
                h = grabbed[layer].float().cpu()  # (batch, width, d)
                for j, i in enumerate(batch):
                    out[i][layer] = h[j, width - len(token_lists[i]):].clone()
    finally:
        for h in handles:
            h.remove()
    return out


def class_mean(states: Sequence[States]) -> States:
    """The end-aligned mean of several texts' states, as long as the shortest text."""
    if not states:
        raise InputError("class_mean needs at least one text")
    layers = sorted(states[0])
    n = min(int(s[layers[0]].shape[0]) for s in states)
    return {layer: torch.stack([s[layer][-n:] for s in states]).mean(0) for layer in layers}
