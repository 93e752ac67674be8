"""Which heads: the ``--heads`` spec, range checks, and the seeded random-head control.

A head is ``(layer, head)``: head ``head`` (0-based query head) of decoder block ``layer``.

Head specs (``parse_heads``):

- ``top:K``: the K best heads of a screen (rank 1 first);
- ``L.H,L.H,...`` or ``L:H,L:H,...`` (the two separators may be mixed): those heads.

Random heads (``random_head_sets``): ``k`` sets of the same size as the chosen set, drawn from a
seeded generator, never containing a chosen head. ``match="layer"`` (the default) draws each set
with as many heads in each layer as the chosen set has there (ablating a head of block 0 is not
the same intervention as ablating one of block 20), from the other heads of that layer. When a
layer has too few other heads the draw falls back to ``band``: uniform over the other heads of the
layers the chosen set spans (its lowest to its highest layer), which keeps the random sets at the
chosen set's depth; and, when the band is too small, to ``any`` (uniform over the pool of all other
heads). The matching used is returned, so callers can say so. Sets within one draw are distinct when enough distinct sets exist. A chosen
set ranked among ``k`` random sets cannot reach a rank p-value below ``1 / (k + 1)``
(``core.stats.min_pvalue``): 20 random sets put that floor below 0.05.

>>> parse_heads("top:8")
HeadSpec(top=8, heads=())
>>> parse_heads("3.1, 12:4").heads
((3, 1), (12, 4))
>>> sets, how = random_head_sets([(0, 1), (1, 2)], 3, n_layers=2, n_heads=4, seed=0)
>>> len(sets), how, all((0, 1) not in s and (1, 2) not in s for s in sets)
(3, 'layer', True)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from emoscope.core.stats import rng_from
from emoscope.errors import InputError

__all__ = ["Head", "HeadSpec", "parse_heads", "check_heads", "format_heads", "random_head_sets", "RANDOM_MATCH",
           "describe_match"]

Head = tuple[int, int]
RANDOM_MATCH = ("layer", "band", "any")
_HELP = "use top:K, L.H,L.H (e.g. 12.3,14.0) or L:H"
_ONE = re.compile(r"^\s*(\d+)\s*[.:]\s*(\d+)\s*$")


@dataclass(frozen=True)
class HeadSpec:
    """A parsed ``--heads``: ``top`` = K for ``top:K`` (else 0), or the explicit ``heads``."""

    top: int = 0
    heads: tuple[Head, ...] = ()

    @property
    def spec(self) -> str:
        return f"top:{self.top}" if self.top else format_heads(self.heads)


def parse_heads(spec: str | HeadSpec) -> HeadSpec:
    """``top:K`` (K >= 1), or a comma list of ``L.H`` / ``L:H``; a one-line ``InputError`` otherwise.

    >>> parse_heads("2.0,2.0").heads
    ((2, 0),)
    >>> parse_heads("top:0")
    Traceback (most recent call last):
    ...
    emoscope.errors.InputError: heads 'top:0': K must be at least 1; use top:K, L.H,L.H (e.g. 12.3,14.0) or L:H
    """
    if isinstance(spec, HeadSpec):
        return spec
    text = str(spec).strip() if spec is not None else ""
    if not text:
        raise InputError(f"no heads given; {_HELP}")
    low = text.lower()
    if low.startswith("top"):
        arg = low[4:] if low.startswith("top:") else "x"
        try:
            k = int(arg.strip())
        except ValueError:
            raise InputError(f"heads {text!r} not understood; {_HELP}") from None
        if k < 1:
            raise InputError(f"heads {text!r}: K must be at least 1; {_HELP}")
        return HeadSpec(top=k)
    heads: list[Head] = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = _ONE.match(part)
        if m is None:
            raise InputError(f"heads {text!r}: {part.strip()!r} is not a head; {_HELP}")
        head = (int(m.group(1)), int(m.group(2)))
        if head not in heads:
            heads.append(head)
    if not heads:
        raise InputError(f"heads {text!r} names no head; {_HELP}")
    return HeadSpec(heads=tuple(heads))


def check_heads(heads: Iterable[Head], n_layers: int, n_heads: int, model: str = "the model") -> list[Head]:
    """The heads as a sorted list; a one-line ``InputError`` for a layer or head out of range.

    >>> check_heads([(1, 9)], 30, 9, "smollm2-135m")
    Traceback (most recent call last):
    ...
    emoscope.errors.InputError: head 1.9 is out of range for smollm2-135m: it has heads 0..8 in layers 0..29
    """
    out = []
    for layer, head in heads:
        if not (0 <= int(layer) < n_layers and 0 <= int(head) < n_heads):
            raise InputError(f"head {layer}.{head} is out of range for {model}: it has heads 0..{n_heads - 1} in "
                             f"layers 0..{n_layers - 1}")
        out.append((int(layer), int(head)))
    return sorted(set(out))


def format_heads(heads: Iterable[Head]) -> str:
    """``"3.1,12.4"``.

    >>> format_heads([(12, 4), (3, 1)])
    '3.1,12.4'
    """
    return ",".join(f"{layer}.{head}" for layer, head in sorted(heads))


def random_head_sets(chosen: Sequence[Head], k: int, *, n_layers: int, n_heads: int,
                     seed: int | np.random.Generator | None = 0, match: str = "layer",
                     pool: Sequence[Head] | None = None) -> tuple[list[tuple[Head, ...]], str]:
    """``k`` seeded random head sets of ``len(chosen)`` heads each, none containing a chosen head,
    and the matching actually used (``"layer"``, ``"band"`` or ``"any"``; see the module docstring).

    ``pool`` restricts ``band`` and ``any`` draws (e.g. to the heads a screen covered); default every head.

    >>> sets, how = random_head_sets([(1, 0), (1, 1), (3, 2)], 4, n_layers=6, n_heads=2, seed=0)
    >>> how, all(1 <= a <= 3 for s in sets for a, _ in s)
    ('band', True)
    """
    if match not in RANDOM_MATCH:
        raise InputError(f"random head matching must be one of {RANDOM_MATCH}, got {match!r}")
    chosen_set = {(int(a), int(b)) for a, b in chosen}
    if not chosen_set:
        raise InputError("no heads chosen, so there is nothing to match random heads to")
    if k < 0:
        raise InputError(f"the number of random head sets must be >= 0, got {k}")
    everything = [(a, b) for a in range(n_layers) for b in range(n_heads)]
    pool_list = sorted({(int(a), int(b)) for a, b in (pool if pool is not None else everything)})
    others = [h for h in pool_list if h not in chosen_set]
    need = Counter(a for a, _ in chosen_set)
    by_layer = {a: [(a, b) for b in range(n_heads) if (a, b) not in chosen_set] for a in need}
    lo, hi = min(need), max(need)
    band = [h for h in others if lo <= h[0] <= hi]
    if match == "layer" and any(len(by_layer[a]) < c for a, c in need.items()):
        match = "band"
    if match == "band" and len(band) < len(chosen_set):
        match = "any"
    if match == "any" and len(others) < len(chosen_set):
        raise InputError(f"only {len(others)} heads are left outside the {len(chosen_set)} chosen ones: too few to "
                         "draw random sets of the same size")
    rng = rng_from(seed)
    sets: list[tuple[Head, ...]] = []
    seen: set[tuple[Head, ...]] = set()
    tries = 0
    while len(sets) < k:
        if match == "layer":
            draw = [by_layer[a][j] for a in sorted(need)
                    for j in rng.choice(len(by_layer[a]), size=need[a], replace=False)]
        else:
            src = band if match == "band" else others
            draw = [src[j] for j in rng.choice(len(src), size=len(chosen_set), replace=False)]
        key = tuple(sorted(draw))
        tries += 1
        if key in seen and tries < 100 * max(k, 1):  # distinct sets while distinct ones remain likely
            continue
        seen.add(key)
        sets.append(key)
    return sets, match


def describe_match(match: str, chosen: Sequence[Head]) -> str:
    """How random sets were matched to ``chosen``, in words (run notes and findings).

    >>> describe_match("band", [(3, 1), (7, 0)])
    'any heads of the layers 3..7 the chosen heads span'
    """
    if match == "layer":
        return "the same number per layer"
    if match == "band":
        return f"any heads of the layers {min(a for a, _ in chosen)}..{max(a for a, _ in chosen)} the chosen heads span"
    return "any layers"
