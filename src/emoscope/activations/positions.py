"""Position specs: which token(s) of each text an activation is read from.

``last``           the last real (non-padding) token
``mean``           mean over all real tokens
``mean_from:K``    mean over real tokens K, K+1, ... (K counts from the first real token)
``token:I``        the real token at index I (negative counts from the end: ``token:-1`` = last)
``all``            every real token (ragged; stored flattened with per-text offsets)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from emoscope.errors import PositionError

__all__ = ["Position", "parse_position"]

_HELP = "use one of: last, mean, mean_from:K, token:I, all"


@dataclass(frozen=True)
class Position:
    kind: str  # "last" | "mean" | "mean_from" | "token" | "all"
    arg: int = 0

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.arg}" if self.kind in ("mean_from", "token") else self.kind

    @property
    def pooled(self) -> bool:
        return self.kind != "all"

    def check_lengths(self, lengths: list[int], texts: list[str] | None = None) -> None:
        """Every text must have the token this position reads (the error quotes the first short
        text when ``texts`` are given)."""

        def which(i: int) -> str:
            if texts is None or i >= len(texts):
                return f"text {i}"
            t = str(texts[i])
            return f"text {i} ({t if len(t) <= 40 else t[:37] + '...'!r})"
        if self.kind == "mean_from":
            short = [i for i, n in enumerate(lengths) if n <= self.arg]
            if short:
                raise PositionError(
                    f"position mean_from:{self.arg} needs more than {self.arg} tokens, but {which(short[0])} "
                    f"has {lengths[short[0]]} ({len(short)} such texts); use a smaller K, or drop the short texts"
                )
        elif self.kind == "token":
            need = self.arg + 1 if self.arg >= 0 else -self.arg
            short = [i for i, n in enumerate(lengths) if n < need]
            if short:
                raise PositionError(
                    f"position token:{self.arg} needs at least {need} tokens, but {which(short[0])} "
                    f"has {lengths[short[0]]} ({len(short)} such texts); use a smaller index (token:-1 is the "
                    "last token), or drop the short texts"
                )

    def reduce(self, h: torch.Tensor, mask: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Pool hidden states.

        h: (batch, seq, d_model); mask: (batch, seq) 1 for real tokens; start: (batch,) index of
        each row's first real token (non-zero under left padding). Returns (batch, d_model),
        or for ``all`` the (n_real_tokens, d_model) rows in text order.
        """
        lengths = mask.sum(1)  # (batch,)
        rows = torch.arange(h.shape[0], device=h.device)
        if self.kind == "last":
            return h[rows, start + lengths - 1]
        if self.kind == "token":
            idx = start + (self.arg if self.arg >= 0 else lengths + self.arg)
            return h[rows, idx]
        if self.kind == "all":
            return h[mask.bool()]
        m = mask.to(h.dtype)
        if self.kind == "mean_from":
            pos = torch.arange(h.shape[1], device=h.device)[None, :] - start[:, None]
            m = m * (pos >= self.arg).to(h.dtype)
        # Sum in float32: bf16 sums over long prompts lose digits.
        return (h.float() * m[..., None].float()).sum(1) / m.float().sum(1, keepdim=True)


def parse_position(spec: str | Position) -> Position:
    """Parse a position spec.

    >>> parse_position("mean_from:3")
    Position(kind='mean_from', arg=3)
    >>> parse_position("token:-1").spec
    'token:-1'
    """
    if isinstance(spec, Position):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise PositionError(f"position spec must be a non-empty string; {_HELP}")
    s = spec.strip().lower()
    if s in ("last", "mean", "all"):
        return Position(s)
    kind, sep, arg = s.partition(":")
    if sep and kind in ("mean_from", "token"):
        try:
            k = int(arg)
        except ValueError:
            raise PositionError(f"position {spec!r}: {arg!r} is not an integer; {_HELP}") from None
        if kind == "mean_from" and k < 0:
            raise PositionError(f"position {spec!r}: K must be >= 0")
        return Position(kind, k)
    raise PositionError(f"unknown position spec {spec!r}; {_HELP}")
