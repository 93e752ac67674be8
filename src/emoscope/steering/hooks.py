"""User-facing residual edits: ``steer`` (add / ablate / ablate then add) and ``replace_residual``
(write the residual recorded on a source prompt into every forward; ``patch``, its old name, is an
alias for one release).

Both are thin context managers over ``emoscope.models.interventions``, which holds the edit
(``edit_residual``), the token windows (``Window``, ``parse_window``), the position tracking that
keeps windows right under the KV cache (``PositionTracker``) and hook installation
(``installed``); see that module for how positions are tracked. What stays here is what a user
calls: the strength units (``emoscope.steering.strength``) and the replacement hook.

Windows (``positions=``): ``all``; ``prompt``; ``generated``; ``from:K`` (tokens from the K-th real
token of each row on). Every hook is removed in ``finally``, also when the body raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from emoscope.errors import InputError, PositionError
from emoscope.models.interventions import (
    EditHook,
    PositionTracker,
    installed,
    parse_window,
    replace_block_output,
)
from emoscope.models.standard import block_output
from emoscope.steering.strength import as_strength, unit_deltas

__all__ = ["steer", "replace_residual", "patch", "MODES"]

MODES = ("add", "ablate", "ablate_add")


@contextlib.contextmanager
def steer(model: Any, vector: Any, layers: int | Sequence[int] | str, strength: float = 1.0, *,
          positions: str = "all", mode: str = "add", unit: str = "token_norm",
          norms: Mapping[int, float] | None = None) -> Iterator[PositionTracker]:
    """Edit ``resid[l]`` (the output of block ``l``) for everything run inside the block.

    ``mode``: ``"add"`` adds ``strength`` x the vector; ``"ablate"`` removes the projection on
    the vector's direction (``strength`` is ignored); ``"ablate_add"`` removes it, then adds.
    ``unit="token_norm"`` (or ``"token_norm_robust"``) counts ``strength`` in typical per-token
    residual norms at that layer (see ``emoscope.vectors.strength``); ``"raw"`` uses the vector as given.
    ``positions``: ``all``, ``prompt``, ``generated`` or ``from:K``; correct under the KV cache.

    >>> with steer(model, joy, layers=[15], strength=4.0, positions="generated"):  # doctest: +SKIP
    ...     out = model.hf.generate(**enc, max_new_tokens=32, do_sample=False)
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    strength = as_strength(strength)
    window = parse_window(positions)
    layer_list = model.resolve_layers(layers if not isinstance(layers, int) else [layers])
    deltas, dirs = unit_deltas(model, vector, layer_list, unit=unit, norms=norms)
    tracker = PositionTracker()
    hooks = {}
    for layer in layer_list:
        delta = None if mode == "ablate" else _tensor(strength * deltas[layer], model)
        u = None if mode == "add" else _tensor(dirs[layer], model)
        hooks[layer] = EditHook(tracker, window, delta=delta, direction=u, ablate=0.0 if mode == "add" else 1.0)
    with installed(model, hooks, tracker) as t:
        yield t


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
def replace_residual(model: Any, source: str | Sequence[int], layers: int | Sequence[int] | str,
          positions: str | Sequence[int] = "last", *, add_special_tokens: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Replace ``resid[l]`` by the residual recorded on ``source``: record ``resid[l]`` on the
    source prompt, then write it into every forward run inside the block, at the same positions
    (single-forward activation patching; multi-token patching sweeps are ``emoscope.patching``).

    ``positions``: ``"last"`` (source's last token -> each target row's last prompt token),
    ``"all"`` (token ``i`` -> token ``i`` for every source token), or a list of token indices
    counted from the first real token (negative counts from the source's end). Yields the
    recorded states ``{layer: (source_len, d_model)}``.

    >>> with replace_residual(model, "I am thrilled!", layers=[12], positions="last"):   # doctest: +SKIP
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
    with installed(model, hooks, tracker):
        yield recorded


#: Deprecated name of :func:`replace_residual` (issue 23: ``patch`` sat next to the ``patching``
#: package and did not say what it edits); kept for one release.
patch = replace_residual
