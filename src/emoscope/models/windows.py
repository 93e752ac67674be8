"""Which token columns an edit touches, kept right under the KV cache.

- ``Window`` / ``parse_window``: the columns (``all``, ``prompt``, ``generated``, ``from:K``);
- ``PositionTracker``: where the current forward sits in its sequence, so windows stay right
  under the KV cache.

The hooks that use them are in ``emoscope.models.interventions`` (which re-exports all three).

Positions under the KV cache
----------------------------
During cached generation every forward sees only the new tokens, so a hook cannot tell a
prompt token from a generated one by its index in the current call. A pre-hook on the
decoder stack (``model.base``) therefore records, for every forward, the absolute column of its
first token (the length of the KV cache it was given), the attention mask (for left padding), and
the prompt length (the width of the first forward of a sequence). A forward without a cache
that re-reads a longer copy of the same sequence (``generate(use_cache=False)``) is recognised
as the same sequence, so "generated" means the same columns with and without the cache. A tracker
made with ``continues_prompt=True`` is for a prompt whose head was prefilled without it (the
decode loop's shared prompt heads): the first forward it sees is the prompt's tail, so the prompt
ends with that forward.

Windows: ``all``; ``prompt`` (columns before the prompt length); ``generated`` (columns from
the prompt length on); ``from:K`` (tokens from the K-th real token of each row on, counting from
0 after any left padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from emoscope.errors import PositionError
from emoscope.models.kvcache import input_cache, past_length

__all__ = ["Window", "parse_window", "PositionTracker"]


@dataclass(frozen=True)
class Window:
    """Which token columns an edit touches. ``kind``: all | prompt | generated | from; ``k``: the
    first token for ``from``."""

    kind: str
    k: int = 0

    @property
    def spec(self) -> str:
        return f"from:{self.k}" if self.kind == "from" else self.kind

    def mask(self, tracker: PositionTracker, batch: int, width: int, device: torch.device) -> torch.Tensor | None:
        """``(batch, width)`` bool of columns to edit in the current forward, or ``None`` for all."""
        if self.kind == "all":
            return None
        cols = torch.arange(tracker.offset, tracker.offset + width, device=device)  # (width,)
        if self.kind == "prompt":
            m = cols < tracker.prompt_len
        elif self.kind == "generated":
            m = cols >= tracker.prompt_len
        else:
            first = tracker.first_real(batch, device)  # (batch,)
            return (cols[None, :] - first[:, None]) >= self.k
        return m[None, :].expand(batch, width)


def parse_window(spec: str | Window) -> Window:
    """``"all"``, ``"prompt"``, ``"generated"`` or ``"from:K"`` (K >= 0).

    >>> parse_window("from:3")
    Window(kind='from', k=3)
    """
    if isinstance(spec, Window):
        return spec
    text = str(spec).strip().lower()
    if text in ("all", "prompt", "generated"):
        return Window(text)
    if text.startswith("from:"):
        try:
            k = int(text[5:])
        except ValueError:
            k = -1
        if k >= 0:
            return Window("from", k)
    raise PositionError(f"positions {spec!r} not understood; use all, prompt, generated or from:K (K >= 0)")


class PositionTracker:
    """Forward pre-hook on the decoder stack: where the current forward sits in its sequence."""

    def __init__(self, *, continues_prompt: bool = False) -> None:
        self.offset = 0  # absolute column of the current forward's first token
        self.prompt_len = 0  # width of the first forward of the sequence
        # the first forward seen continues a prompt whose head was prefilled without this tracker:
        # the prompt ends with that forward (decode_rows with shared_prefix)
        self.continues_prompt = continues_prompt
        self._ids: torch.Tensor | None = None  # (batch, seen) token ids of the sequence so far
        self._mask: torch.Tensor | None = None  # (batch, seen + width) attention mask, if given
        self.calls = 0

    def first_real(self, batch: int, device: torch.device) -> torch.Tensor:
        """``(batch,)`` column of each row's first real token (non-zero under left padding)."""
        m = self._mask
        if m is None or m.dim() != 2 or m.shape[0] != batch:
            return torch.zeros(batch, dtype=torch.long, device=device)
        return m.to(device).long().argmax(dim=1)

    def __call__(self, _module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        x = ids if ids is not None else kwargs.get("inputs_embeds")
        if x is None:
            return
        width = int(x.shape[1])
        past_len = past_length(input_cache(kwargs))
        if past_len > 0:  # a cached continuation
            if self.continues_prompt:
                if self.calls == 0:
                    self.prompt_len = past_len + width  # the prompt's tail: the prompt ends here
            elif self.calls == 0 or self._ids is None:
                self.prompt_len = past_len  # entered mid-sequence: what is cached is the prompt
            self.offset = past_len
            if ids is not None and self._ids is not None and self._ids.shape[1] == past_len \
                    and self._ids.shape[0] == ids.shape[0]:
                self._ids = torch.cat([self._ids, ids], dim=1)
            else:
                self._ids = None
        else:
            prev = self._ids
            same = (ids is not None and prev is not None and prev.shape[0] == ids.shape[0]
                    and width > prev.shape[1] and torch.equal(ids[:, : prev.shape[1]], prev))
            if not same:  # a new sequence
                self.prompt_len = width
            self.offset = 0
            self._ids = ids
        self._mask = kwargs.get("attention_mask")
        self.calls += 1
