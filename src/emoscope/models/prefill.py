"""A batched prefill that runs the blocks below the first edited one once per unique prompt.

In a sweep where many rows share a prompt and differ only in edits at blocks ``>= split`` (head
ablation: every configuration edits its own heads, but none below its lowest edited layer), the
blocks ``0 .. split-1`` compute the same thing for every row of a prompt. ``prefill_below`` runs
them once per unique prompt, then runs blocks ``split ..`` on every row from those states:

1. the unique prompts (``rows[first]``, with the same padding, mask and positions as the rows)
   through the decoder until block ``split - 1`` has run (a forward hook stops the forward
   there), filling blocks ``0 .. split-1`` of a fresh KV cache;
2. every row through the whole model with blocks ``0 .. split-1`` replaced by stand-ins that
   return block ``split - 1``'s output for the row's prompt (``interventions.replay_blocks``),
   filling blocks ``split ..`` of a second cache;
3. the rows' cache: blocks ``0 .. split-1`` from the first cache (forked to the rows), the rest
   from the second (``kvcache.merge_caches``).

The result is the full prefill's: the lower blocks see the same tokens, padding and positions (the
unique rows are the rows' own), the upper blocks see the same states. Forward hooks of the
original blocks ``0 .. split-1`` fire once, on the unique rows (in the order of ``first``), not
on every row; hooks on the decoder stack and on blocks ``>= split`` fire on both forwards
(a ``PositionTracker`` sees two new sequences of the same width, so its columns stay right).
Edits below ``split`` are the caller's to rule out.

>>> out, cache, inv = prefill_below(model, ids, mask, pos, groups, split=12)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from emoscope.models.interventions import replay_blocks
from emoscope.models.kvcache import cache_kwargs, fork_cache, merge_caches, new_cache, output_cache
from emoscope.models.standard import block_output

__all__ = ["prefill_below", "unique_rows"]


class _Stop(Exception):
    """Raised by the hook on block ``split - 1`` to end the lower forward there."""


def unique_rows(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, inv)``: ``first[u]`` the first row of the ``u``-th distinct group (in order of first
    appearance) and ``inv[r]`` the index ``u`` of row ``r``'s group.

    >>> [t.tolist() for t in unique_rows(torch.tensor([3, 1, 3, 2, 1]))]
    [[0, 1, 3], [0, 1, 0, 2, 1]]
    """
    seen: dict[int, int] = {}
    first, inv = [], []
    for r, g in enumerate(groups.tolist()):
        if g not in seen:
            seen[g] = len(first)
            first.append(r)
        inv.append(seen[g])
    return torch.as_tensor(first, dtype=torch.long), torch.as_tensor(inv, dtype=torch.long)


@torch.inference_mode()
def prefill_below(model: Any, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, groups: torch.Tensor,
                  split: int, keep: Mapping[str, Any] | None = None) -> tuple[Any, Any, torch.Tensor]:
    """Prefill ``ids`` ``(rows, width)`` (with ``mask`` and ``pos`` of the same shape) where rows of
    the same ``groups`` value are the same tokens and no edit touches blocks below ``split``.

    Returns ``(logits of the last column (rows, vocab) float32, the rows' KV cache, inv)`` where
    ``inv[r]`` is row ``r``'s index among the unique rows (see ``unique_rows``).
    """
    split = int(split)
    if not 0 < split <= model.n_layers:
        raise ValueError(f"split must be in 1..{model.n_layers}, got {split}")
    first, inv = unique_rows(groups.cpu())
    dev = ids.device
    first_d, inv_d = first.to(dev), inv.to(dev)
    cap: dict[str, Any] = {}

    def stop(_module: Any, _inputs: Any, output: Any) -> None:
        cap["h"] = block_output(output)
        cap["form"] = len(output) if isinstance(output, tuple) else 0
        raise _Stop

    low = new_cache(model)
    handle = model.blocks[split - 1].register_forward_hook(stop)
    try:
        model.base(input_ids=ids[first_d], attention_mask=mask[first_d], position_ids=pos[first_d], use_cache=True,
                   **cache_kwargs(model.base, low))
    except _Stop:
        pass
    finally:
        handle.remove()
    if "h" not in cap:
        raise RuntimeError(f"block {split - 1} did not run in the lower prefill")
    forms = dict.fromkeys(range(split), cap["form"])
    with replay_blocks(model, split - 1, cap["h"][inv_d], forms):
        out = model.hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                       **cache_kwargs(model.hf, new_cache(model)), **dict(keep or {}))
    cache = merge_caches(fork_cache(low, inv_d), output_cache(out), split)
    return out.logits[:, -1].float(), cache, inv
