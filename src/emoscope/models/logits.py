"""Logits only where they are read: the unembedding applied to chosen positions (and, for a logit
lens, chosen vocabulary rows) of hidden states that already went through the final norm.

A causal LM's own forward projects every position onto the whole vocabulary; for SmolLM2-135M
that is a 49,152 x 576 matmul per token, a fifth of the model's arithmetic. Scoring reads far
less: the answer position of an introspection trial, the output tokens of a perplexity (not the
padding, not the position after the last token), the yes/no rows of a logit lens. Callers run
the decoder (``model.base``, whose output has the final norm applied) and project here only what
they read. The full-vocabulary projection goes through the model's own unembedding module
(``model.unembed``), so a forward hook on it sees every position that is projected.

>>> h = model.base(input_ids=ids).last_hidden_state                      # doctest: +SKIP
>>> lp = token_logprobs(model, h[:, :-1], ids[:, 1:], mask[:, 1:].bool())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["unembed", "token_logprobs"]


def unembed(model: Any, h: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of hidden states ``h`` ``(..., d)`` that already went through the final norm, with the
    model's final logit soft-capping if it has one. ``vocab``: only those vocabulary rows (a lens
    reads a handful), taken from the unembedding's weight; otherwise the unembedding module runs.
    """
    lm = model.unembed
    if vocab is None:  # the module itself: its hooks (accelerate's device placement, counters) see the call
        out = lm(h if lm.weight.device.type == "meta" else h.to(lm.weight.device))
    else:
        rows = vocab.to(lm.weight.device)
        out = h.to(lm.weight.device) @ lm.weight[rows].T
        bias = getattr(lm, "bias", None)
        if bias is not None:
            out = out + bias[rows]
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        out = torch.tanh(out / cap) * cap
    return out


def token_logprobs(model: Any, hidden: torch.Tensor, targets: torch.Tensor, read: torch.Tensor, *,
                   chunk: int = 512) -> torch.Tensor:
    """``log P(targets[b, i] | position i)`` at the positions where ``read`` ``(B, W)`` is True, NaN
    elsewhere; ``hidden`` ``(B, W, d)`` is the decoder's output (final norm applied). Only the read
    positions are projected onto the vocabulary, ``chunk`` at a time (memory: chunk x vocab floats).
    """
    out = torch.full(read.shape, float("nan"), dtype=torch.float32, device=hidden.device)
    where = read.to(hidden.device).nonzero(as_tuple=True)
    h, t = hidden[where], targets.to(hidden.device)[where]  # (K, d), (K,)
    vals = []
    for lo in range(0, h.shape[0], chunk):
        logits = unembed(model, h[lo: lo + chunk]).float()  # (k, vocab)
        tk = t[lo: lo + chunk].to(logits.device)
        vals.append((logits.gather(-1, tk[:, None])[:, 0] - logits.logsumexp(-1)).to(out.device))
    if vals:
        out[where] = torch.cat(vals)
    return out
