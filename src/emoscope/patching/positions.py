"""Which prompt tokens a patch writes, and how source and target line up.

Position specs (``--positions``, a comma-separated list makes several cells):

- ``last``: the target's last prompt token gets the source's last token;
- ``all``: every prompt token;
- ``window:K``: the last ``K`` prompt tokens (K >= 1).

Positions align **from the end**: the source's last token goes to the target's last prompt token,
the source's second-to-last to the target's second-to-last, and so on. When source and target
have different lengths, only ``min(requested, target length, source length)`` tokens are patched:
the target's earlier tokens keep their own states (``unpatched_target``) and the source's earlier
tokens are not used (``unused_source``). Both counts go into the run's table and notes.

>>> parse_positions("window:4")
PatchPositions(kind='window', k=4)
>>> align_from_end(12, 9, parse_positions("all"))
Alignment(n_patched=9, unpatched_target=3, unused_source=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from emoscope.errors import PositionError

__all__ = ["PatchPositions", "parse_positions", "parse_position_list", "Alignment", "align_from_end"]


@dataclass(frozen=True)
class PatchPositions:
    """``kind``: ``last`` | ``all`` | ``window``; ``k``: the window width (1 for ``last``)."""

    kind: str
    k: int = 1

    @property
    def spec(self) -> str:
        return f"window:{self.k}" if self.kind == "window" else self.kind

    def requested(self, target_len: int) -> int:
        """How many prompt tokens (from the end) this spec asks to patch in a prompt of ``target_len``."""
        if self.kind == "all":
            return int(target_len)
        return min(int(self.k), int(target_len))


def parse_positions(spec: str | PatchPositions) -> PatchPositions:
    """``"last"``, ``"all"`` or ``"window:K"`` (K >= 1); a one-line ``PositionError`` otherwise."""
    if isinstance(spec, PatchPositions):
        return spec
    text = str(spec).strip().lower()
    if text == "last":
        return PatchPositions("last", 1)
    if text == "all":
        return PatchPositions("all", 0)
    if text.startswith("window:"):
        try:
            k = int(text[len("window:"):])
        except ValueError:
            k = 0
        if k >= 1:
            return PatchPositions("window", k)
    raise PositionError(f"patch positions {spec!r} not understood; use last, all or window:K (the last K prompt "
                        "tokens, K >= 1), comma-separated for several")


def parse_position_list(specs: str | Sequence[str]) -> list[PatchPositions]:
    """A list of position specs (or one comma-separated string), parsed, duplicates dropped."""
    items = [s for s in (specs.split(",") if isinstance(specs, str) else specs)]
    out: list[PatchPositions] = []
    for s in items:
        if isinstance(s, str) and not s.strip():
            continue
        p = parse_positions(s)
        if p not in out:
            out.append(p)
    if not out:
        raise PositionError("no patch positions given; use last, all or window:K")
    return out


class Alignment(NamedTuple):
    """``n_patched`` tokens written (the last ones of both); ``unpatched_target``: target tokens the
    spec asked for that have no source token; ``unused_source``: source tokens in the requested
    span that have no target token."""

    n_patched: int
    unpatched_target: int
    unused_source: int

    @property
    def dropped(self) -> int:
        return self.unpatched_target + self.unused_source


def align_from_end(target_len: int, source_len: int, positions: PatchPositions) -> Alignment:
    """How a source of ``source_len`` tokens lines up with a target prompt of ``target_len``."""
    want_t = positions.requested(target_len)
    want_s = int(source_len) if positions.kind == "all" else min(int(positions.k), int(source_len))
    n = min(want_t, want_s)
    return Alignment(n, want_t - n, want_s - n)
