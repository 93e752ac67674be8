"""The writing system of a character, by its Unicode name: the one definition that the steering
script-leakage scorer and the promoted-token view share.

>>> letter_script("a"), letter_script("ж"), letter_script("喜"), letter_script("の"), letter_script("1")
('LATIN', 'CYRILLIC', 'CJK', 'CJK', None)
"""

from __future__ import annotations

import unicodedata

__all__ = ["letter_script"]


def letter_script(ch: str) -> str | None:
    """Script of a letter by its Unicode name (LATIN, CJK, CYRILLIC, ...); ``None`` for non-letters.
    Han, kana, Hangul and Bopomofo are all ``CJK``."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    if name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO")):
        return "CJK"
    return name.split(" ")[0] or None
