"""How the CLI reads flag values: argparse converters (``type=``) that refuse what can be refused
without a model, one line naming the flag (a malformed layer list, a non-finite number, an
unknown position word), and the one position grammar. ``emoscope.cli.common`` builds the shared
flags from these.
"""

from __future__ import annotations

import argparse
import math
import sys

__all__ = ["floats", "number", "strengths", "ints", "words", "word_list", "layers", "count_or_all", "read_position",
           "Positions", "READ_POSITIONS", "EDIT_POSITIONS", "note_once", "reset_notes"]


# -- one warning line per renamed flag or word ----------------------------------------------------
_NOTED: set[str] = set()


def note_once(key: str, message: str) -> None:
    """Print ``emoscope: warning: MESSAGE`` on stderr the first time ``key`` is seen (per command)."""
    if key in _NOTED:
        return
    _NOTED.add(key)
    print(f"emoscope: warning: {message}", file=sys.stderr, flush=True)


def reset_notes() -> None:
    """Forget which notes were printed (``cli.main`` calls it once per command)."""
    _NOTED.clear()


# -- converters (argparse ``type=``): one-line errors name the flag --------------------------------
def _split(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _numbers(text: str, cast: type, what: str, example: str) -> list:
    parts = _split(text)
    try:
        vals = [cast(x) for x in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated {what}, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"is empty; give e.g. {example}")
    return vals


def floats(text: str) -> list[float]:
    """``"-2,0,2"`` -> ``[-2.0, 0.0, 2.0]``; NaN and infinities are refused.

    >>> floats("-2,0,2")
    [-2.0, 0.0, 2.0]
    """
    vals = _numbers(text, float, "numbers", "-2,0,2")
    bad = next((v for v in vals if not math.isfinite(v)), None)
    if bad is not None:
        raise argparse.ArgumentTypeError(f"must be finite numbers, got {bad!r} in {text!r}")
    return vals


def number(text: str) -> float:
    """One finite number (NaN and infinities are refused).

    >>> number("0.9")
    0.9
    """
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def strengths(text: str) -> list[float] | str:
    """Comma-separated finite strengths, or ``auto`` (the stage picks the grid).

    >>> strengths("auto"), strengths("-1,1")
    ('auto', [-1.0, 1.0])
    """
    if str(text).strip().lower() == "auto":
        return "auto"
    return floats(text)


def ints(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    return _numbers(text, int, "integers", "0,1,2")


def words(text: str) -> str | list[str]:
    """A name or path stays a string; ``"a,b,c"`` becomes a list of words."""
    return _split(text) if "," in text else text


def word_list(text: str) -> list[str]:
    """Always a list: ``"nrc"`` -> ``["nrc"]``, ``"a,b"`` -> ``["a", "b"]``."""
    out = _split(text)
    if not out:
        raise argparse.ArgumentTypeError("is empty; give e.g. nrc,vader")
    return out


_MAX_RANGE = 100_000  # a layer range wider than this is a typo (and would build a huge list)


def layers(text: str) -> str | list[int | float]:
    """``"all"`` and ranges (``"0-14"``) stay strings for the model to resolve; ``"12,18"`` and
    relative depths (``"0.5"``) become lists. Malformed text (``"1-"``, ``"x"``) is refused here.

    >>> layers("12,18"), layers("0-14"), layers("0.5")
    ([12, 18], '0-14', [0.5])
    """
    from emoscope.errors import LayerError
    from emoscope.models.standard import parse_layer_text

    parts = _split(text)
    if not parts:
        raise argparse.ArgumentTypeError("is empty; give e.g. all, 0-14, 12,18 or 0.5")
    if text.strip().lower() == "all":
        return "all"
    for part in parts:
        lo, sep, hi = part[1:].partition("-")
        if sep and (lo := part[0] + lo).lstrip("-").isdigit() and hi.lstrip("-").isdigit():
            if int(hi) < int(lo) or int(hi) - int(lo) > _MAX_RANGE:
                raise argparse.ArgumentTypeError(f"range {part!r} must run upwards, e.g. 0-14, got {text!r}")
    try:
        items = parse_layer_text(text)
    except LayerError as e:
        raise argparse.ArgumentTypeError(f"{e} (got {text!r})") from None
    bad = next((x for x in items if isinstance(x, float) and not 0.0 <= x <= 1.0), None)
    if bad is not None:
        raise argparse.ArgumentTypeError(f"relative depth {bad} must lie in [0, 1] (got {text!r})")
    if any("-" in x[1:] for x in parts):
        return text.strip()
    return items


def count_or_all(text: str) -> int | None:
    """A positive count, or ``all`` (``None``)."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'all', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (or 'all'), got {n}")
    return n


# -- the position grammar ---------------------------------------------------------------------
READ_POSITIONS = "last | mean | mean_from:K | token:I | all"
"""``--position``: where a vector or an activation is read (one token, or a pool of tokens)."""
EDIT_POSITIONS = {
    "all": "every token: the prompt's and the generated ones",
    "prompt": "every prompt token",
    "generated": "every generated token",
    "from:K": "every token from the K-th real token on (prompt and generated)",
    "last": "the last prompt token",
    "window:K": "the last K prompt tokens",
}
"""``--positions``: which tokens an edit (steering, ablation, patching) writes. One word, one meaning."""


def read_position(text: str) -> str:
    """A read position, in its canonical spelling (``emoscope.activations.positions``)."""
    from emoscope.activations.positions import parse_position
    from emoscope.errors import PositionError

    try:
        return parse_position(text).spec
    except PositionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class Positions:
    """``--positions``: words of ``EDIT_POSITIONS``; each command accepts the words it can do
    (``accept``), and a comma list only when it runs one cell per entry (``many``).

    >>> Positions(("all", "prompt", "generated", "from:K"))("from:3")
    'from:3'
    """

    grammar = EDIT_POSITIONS

    def __init__(self, accept: tuple[str, ...], *, many: bool = False, renamed: dict[str, str] | None = None,
                 spell: dict[str, str] | None = None) -> None:
        self.accept, self.many = accept, many
        self.renamed = dict(renamed or {})  # an old word -> its word in the grammar (a note, once)
        self.spell = dict(spell or {})  # a word -> how the stage's options spell it
        self.__name__ = "positions"

    def _one(self, word: str) -> str:
        w = word.strip().lower()
        if w in self.renamed:
            new = self.renamed[w]
            note_once(f"positions={w}", f"--positions {w} is spelled {new} here ({EDIT_POSITIONS[new]}; the old "
                      "spelling works until the next release)")
            w = new
        kind, sep, arg = w.partition(":")
        key = f"{kind}:K" if sep else kind
        if key not in EDIT_POSITIONS:
            raise argparse.ArgumentTypeError(f"unknown position {word!r}; the words are "
                                             f"{', '.join(EDIT_POSITIONS)}")
        if key not in self.accept:
            raise argparse.ArgumentTypeError(f"{word!r} ({EDIT_POSITIONS[key]}) is not a position this command "
                                             f"writes; use {' | '.join(self.accept)}")
        if sep:
            if not arg.isdigit() or (kind == "window" and int(arg) < 1):
                raise argparse.ArgumentTypeError(f"{word!r}: K must be an integer >= {1 if kind == 'window' else 0}")
            w = f"{kind}:{int(arg)}"
        return self.spell.get(w, w)

    def __call__(self, text: str) -> str:
        parts = _split(text)
        if not parts:
            raise argparse.ArgumentTypeError(f"is empty; use {' | '.join(self.accept)}")
        if len(parts) > 1 and not self.many:
            raise argparse.ArgumentTypeError(f"takes one position, got {text!r}")
        return ",".join(dict.fromkeys(self._one(p) for p in parts))
