"""The answer measure: log-sum-exp of logits over "yes" spellings minus over "no" spellings.

A logit difference shows whether an injection moves *this* answer or every answer; a
probability alone hides that (the softmax denominator moves with everything else). Yes/no
probabilities are reported beside the difference, never instead of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from emoscope.errors import InputError

__all__ = ["AnswerTokens", "answer_tokens", "yes_no_diff", "YES_SPELLINGS", "NO_SPELLINGS"]

YES_SPELLINGS = ("yes", "Yes", " yes", " Yes")
NO_SPELLINGS = ("no", "No", " no", " No")


@dataclass(frozen=True)
class AnswerTokens:
    """Token ids (and their text) of the single-token spellings of yes and no."""

    yes_ids: tuple[int, ...]
    no_ids: tuple[int, ...]
    yes_text: tuple[str, ...]
    no_text: tuple[str, ...]

    @property
    def ids(self) -> list[int]:
        """Yes ids then no ids (the columns the logit lens reads)."""
        return [*self.yes_ids, *self.no_ids]


def _single_tokens(tokenizer: Any, spellings: Sequence[str]) -> tuple[list[int], list[str]]:
    ids: list[int] = []
    texts: list[str] = []
    for s in spellings:
        enc = tokenizer.encode(s, add_special_tokens=False)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(int(enc[0]))
            texts.append(s)
    return ids, texts


def answer_tokens(tokenizer: Any, yes: Sequence[str] = YES_SPELLINGS,
                  no: Sequence[str] = NO_SPELLINGS) -> AnswerTokens:
    """The tokenizer's single-token spellings of yes and no (with and without a leading space
    and a capital). Spellings that take two tokens are left out; none at all is an error.

    >>> at = answer_tokens(model.tokenizer)        # doctest: +SKIP
    >>> at.yes_text                                # doctest: +SKIP
    ('yes', 'Yes', ' yes', ' Yes')
    """
    yes_ids, yes_text = _single_tokens(tokenizer, yes)
    no_ids, no_text = _single_tokens(tokenizer, no)
    if not yes_ids or not no_ids:
        raise InputError(f"the tokenizer has no single-token spelling of "
                         f"{'yes' if not yes_ids else 'no'} among {list(yes if not yes_ids else no)}")
    if set(yes_ids) & set(no_ids):
        raise InputError("a token spells both yes and no; pass distinct spellings")
    return AnswerTokens(tuple(yes_ids), tuple(no_ids), tuple(yes_text), tuple(no_text))


def yes_no_diff(logits: torch.Tensor, tokens: AnswerTokens) -> torch.Tensor:
    """``logsumexp(logits[yes]) - logsumexp(logits[no])`` over the last axis.

    >>> at = AnswerTokens((0, 1), (2,), ("yes", "Yes"), ("no",))
    >>> float(yes_no_diff(torch.tensor([0.0, 0.0, 0.0]), at))   # log 2
    0.6931471824645996
    """
    yes = logits[..., list(tokens.yes_ids)].float().logsumexp(-1)
    no = logits[..., list(tokens.no_ids)].float().logsumexp(-1)
    return yes - no
