"""The next-token view of a patching sweep: the log-odds that the first generated token is a
target token.

Beside the multi-token effect every row of ``PatchSweep`` (``emoscope.patching.sweep``, which
re-exports ``step1_token_sets``) carries ``step1``: the log-odds that the **first generated
token** is a target token, ``log P(T+) - log P(T-)`` under the patched forward, where ``T+`` are the
vocabulary tokens whose own text the target scorer scores above 0 (for ``nrc_anger``: tokens that
are words the NRC lexicon tags with anger) and ``T-`` those it scores below 0 when the scorer is
signed (``valence``), else every other token. ``step1_change`` is that minus the baseline row of
the same prompt (nats). Targets from other scorers (a classifier) get no step-1 view (NaN).
A one-step view and the multi-token effect can disagree; ``patch_cells`` shows both per cell.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from emoscope.steering.scorers import score_texts

__all__ = ["step1_token_sets", "step1_value"]

_STEP1_SCORERS = {"valence": "vader"}  # target column -> scorer producing it; nrc_* -> nrc


def _step1_scorer(target: str) -> str | None:
    if target.startswith("nrc_"):
        return "nrc"
    return _STEP1_SCORERS.get(target)


_TOKEN_SETS: dict[tuple[int, str, int], tuple[Any, tuple[torch.Tensor, torch.Tensor] | None]] = {}


def step1_value(sets: tuple[torch.Tensor, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """The one-step view per row: ``logsumexp`` of the log-probabilities of ``T+`` minus that of
    ``T-`` at the first generated token (``sets`` from ``step1_token_sets``)."""
    lp = torch.log_softmax(logits.float(), dim=-1)  # (rows, vocab)
    pos, neg = (s.to(lp.device) for s in sets)
    return torch.logsumexp(lp[:, pos], -1) - torch.logsumexp(lp[:, neg], -1)


def step1_token_sets(model: Any, target: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(T+, T-)`` as boolean masks over the model's vocabulary (see the module doc), or ``None``
    when the target's scorer is not a cheap text scorer or no token scores above 0. Each token's
    text is its own decoding (``tokenizer.decode([id])``), scored once per tokenizer and target."""
    scorer = _step1_scorer(target)
    if scorer is None:
        return None
    vocab = int(model.vocab_size)
    key = (id(model.tokenizer), target, vocab)
    if key not in _TOKEN_SETS or _TOKEN_SETS[key][0] is not model.tokenizer:  # (an id can be reused)
        n = min(vocab, len(model.tokenizer))
        texts = model.tokenizer.batch_decode([[i] for i in range(n)])
        s = np.zeros(vocab)
        s[:n] = score_texts(texts, [scorer])[target]
        pos = torch.as_tensor(s > 0)
        neg = torch.as_tensor(s < 0) if (s < 0).any() else ~pos
        _TOKEN_SETS[key] = (model.tokenizer, (pos, neg) if bool(pos.any()) and bool(neg.any()) else None)
    return _TOKEN_SETS[key][1]
