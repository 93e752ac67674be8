"""The unedited model's perplexity of rows decoded under residual edits, from states the decode
already computed (``decode_rows(..., clean_perplexity=True)``).

A steering sweep scores every output by its perplexity under the *unsteered* model. Run from
scratch that is a second pass over every generated token, as costly as the decode. But an edit at
the output of block ``L`` leaves blocks ``0..L`` untouched: at the generated positions (the row's
own tokens) their states are the ones the unedited model computes. So during the decode a
``CleanStates`` hook keeps each row's ``resid[L]`` before the edit at every position fed to the
model, and afterwards only blocks ``L+1..`` run again, unedited, over those positions, from the
prompt's unedited KV cache (``interventions.replay_blocks`` stands in for blocks ``0..L``), and
only the positions that predict a next output token are projected onto the vocabulary
(``models.logits``). Each row uses its lowest edited layer; an unedited row uses the deepest
recorded one. The first output token's log-probability comes from the unedited prompt's last
position.

This holds for edits at block outputs (``RowEdits`` delta / ablation); replacement edits
(patching) and head edits are not covered (``decode_rows`` refuses them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from emoscope.models.injector import replay_blocks
from emoscope.models.kvcache import cache_kwargs, fork_cache
from emoscope.models.logits import token_logprobs
from emoscope.models.standard import block_output

__all__ = ["CleanStates", "row_layers", "clean_perplexity"]


class CleanStates:
    """Forward hooks (first in each block's chain) that keep the block's output at the newest
    position of every decode step while ``active``: ``states(layer)`` ``(rows, steps, d)``."""

    def __init__(self, layers: Sequence[int]) -> None:
        self.layers = sorted(int(x) for x in layers)
        self.active = False
        self.forms: dict[int, int] = {}
        self._steps: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}

    def hook(self, layer: int):  # noqa: ANN201
        def fn(_module: Any, _inputs: Any, output: Any) -> None:
            self.forms[layer] = len(output) if isinstance(output, tuple) else 0
            if self.active:
                self._steps[layer].append(block_output(output)[:, -1])  # (rows, d), before any edit
        return fn

    def states(self, layer: int) -> torch.Tensor:
        return torch.stack(self._steps[layer], 1)  # (rows, steps, d)


def row_layers(edits: Any, rows: int) -> np.ndarray:
    """Per row, the lowest layer where its edit does anything (a non-zero delta or an ablation), or -1."""
    out = np.full(rows, -1)
    for layer in sorted(set(edits.delta) | set(edits.ablate), reverse=True):
        hit = torch.zeros(rows, dtype=torch.bool)
        if layer in edits.delta:
            hit |= (edits.delta[layer] != 0).any(-1).cpu()
        if layer in edits.ablate:
            hit |= (edits.ablate[layer] != 0).cpu()
        out[hit.numpy()] = layer
    return out


@torch.inference_mode()
def clean_perplexity(model: Any, rec: CleanStates, layer_of: np.ndarray, tokens: Sequence[Sequence[int]],
                     fed: torch.Tensor, prompt: tuple[Any, torch.Tensor, torch.Tensor], which: torch.Tensor
                     ) -> np.ndarray:
    """``exp(mean NLL)`` of each row's ``tokens`` under the unedited model; NaN for an empty output.

    ``fed`` ``(rows, steps)``: the tokens the decode fed (its chosen tokens, column ``k`` at step
    ``k + 1``); ``prompt``: the unedited prompts' ``(KV cache, last-position logits (prompts, vocab),
    mask)``; ``which[r]``: row ``r``'s prompt in it; ``layer_of[r]``: the row's lowest edited
    layer (-1: unedited).
    """
    cache, last, pmask = prompt
    dev = pmask.device
    n = np.array([len(t) for t in tokens])
    out = np.full(len(tokens), np.nan)
    first = last[which.to(last.device)].float().log_softmax(-1)  # (rows, vocab)
    deepest = rec.layers[-1]
    use = np.where(layer_of < 0, deepest, layer_of)
    for layer in sorted(set(use[n > 0].tolist())):
        rows = np.flatnonzero((use == layer) & (n > 0))
        r_t = torch.as_tensor(rows, device=dev)
        width = int(n[rows].max()) - 1  # positions 0..width-1 predict tokens 1..width
        nll = torch.zeros(len(rows), width + 1, dtype=torch.float32, device=dev)
        t0 = torch.as_tensor([tokens[r][0] for r in rows], device=first.device)
        nll[:, 0] = -first[r_t.to(first.device)].gather(-1, t0[:, None])[:, 0].to(dev)
        if width > 0:
            sub = which.to(dev)[r_t]
            states = rec.states(layer)
            value = states[r_t.to(states.device)][:, :width]  # (rows, width, d), clean resid[layer]
            mask = torch.cat([pmask[sub], torch.ones(len(rows), width, dtype=pmask.dtype, device=dev)], 1)
            pos = pmask[sub].sum(1, keepdim=True) + torch.arange(width, device=dev)[None]
            ids = fed.to(dev)[r_t][:, :width]
            forms = dict.fromkeys(range(layer + 1), rec.forms[layer])  # every block returns alike
            with replay_blocks(model, layer, value, forms):
                o = model.base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                               **cache_kwargs(model.base, fork_cache(cache, sub)))
            nxt = fed.to(dev)[r_t][:, 1: width + 1]
            read = torch.arange(width, device=dev)[None] < torch.as_tensor(n[rows] - 1, device=dev)[:, None]
            nll[:, 1:] = -token_logprobs(model, o.last_hidden_state, nxt, read).nan_to_num(0.0).to(dev)
        for j, r in enumerate(rows):
            out[r] = float(torch.exp(nll[j, : n[r]].mean()))
    return out
