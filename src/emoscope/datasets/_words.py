"""Word lists (concepts, baseline words), control questions and the forbidden-word lists
that define what "implicit" means for the emotion sets."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from emoscope.datasets._catalog import builtin_entry, data_file, is_path_like
from emoscope.datasets._readers import parse_rows, read_file_text
from emoscope.errors import DataError

__all__ = [
    "WordEntry",
    "ControlQuestion",
    "load_word_list",
    "load_control_questions",
    "load_forbidden_words",
    "find_words",
]


def _word_pattern(words: Iterable[str]) -> re.Pattern[str]:
    alternatives = sorted({re.escape(w.strip()) for w in words if w.strip()}, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE)


def find_words(text: str, words: Iterable[str]) -> list[str]:
    """The entries of ``words`` that occur in ``text`` (whole words, any case), in text order.

    >>> find_words("Mad about the madness? Not MAD.", ["mad", "made"])
    ['Mad', 'MAD']
    """
    words = list(words)
    return [m.group(0) for m in _word_pattern(words).finditer(text)] if words else []


@dataclass(frozen=True)
class WordEntry:
    """A concept or baseline word, its kind (``concrete``/``abstract``) and synonyms.

    >>> w = WordEntry("ocean", "concrete", ("sea", "waves"))
    >>> w.found_in("I think it is about the Sea."), w.found_in("seashell")
    (True, False)
    """

    word: str
    kind: str | None = None
    synonyms: tuple[str, ...] = ()

    def found_in(self, text: str) -> bool:
        """Whether ``text`` names the word or a synonym (whole word, any case, plural -s/-es)."""
        alts = sorted({re.escape(w) for w in (self.word, *self.synonyms)}, key=len, reverse=True)
        return (
            re.search(r"\b(?:" + "|".join(alts) + r")(?:e?s)?\b", text, re.IGNORECASE) is not None
        )

    def __str__(self) -> str:
        return self.word


@dataclass(frozen=True)
class ControlQuestion:
    """A yes/no question with a known answer (``"no"`` for the built-ins)."""

    text: str
    kind: str
    answer: str = "no"


def _rows(name_or_path: str | os.PathLike[str], required: tuple[str, ...]):
    """Rows from a built-in name or a ``.jsonl``/``.csv`` path; ``.txt`` gives one column."""
    if is_path_like(name_or_path):
        path = Path(name_or_path)
        text, fmt = read_file_text(path, (".txt", ".jsonl", ".csv"))
        source = str(path)
        if fmt == ".txt":
            if not text.strip():
                raise DataError(f"{source}: file is empty; expected one entry per line")
            lines = [ln.rstrip("\r") for ln in text.split("\n")]
            rows = [(i, {required[0]: ln.strip()}) for i, ln in enumerate(lines, 1) if ln.strip()]
            return rows, source
        return parse_rows(text, source, fmt, required), source
    entry = builtin_entry(str(name_or_path))
    source = f"emoscope/datasets/data/{entry['file']}"
    return parse_rows(
        data_file(entry["file"]).read_text(encoding="utf-8"), source, ".jsonl", required
    ), source


def load_word_list(name_or_path: str | os.PathLike[str]) -> list[WordEntry]:
    """Words for concept injection: ``"concepts"``, ``"baseline-words"``, a ``.txt`` file
    (one word per line) or a ``.jsonl``/``.csv`` file with a ``word`` column and optional
    ``kind`` and ``synonyms`` (a list in JSONL, ``;``-separated in CSV).

    Duplicate or empty words raise ``DataError`` with the line number.

    >>> words = load_word_list("concepts")
    >>> words[0].word, words[0].kind
    ('ocean', 'concrete')
    >>> [w.word for w in load_word_list("baseline-words")][:3]
    ['table', 'chair', 'window']
    """
    rows, source = _rows(name_or_path, ("word",))
    out: list[WordEntry] = []
    seen: dict[str, int] = {}
    for line, f in rows:
        word = f["word"]
        if not isinstance(word, str) or not word.strip():
            raise DataError(
                f"{source}:{line}: empty or non-text word; fill it in or delete the line"
            )
        word = word.strip()
        if word.lower() in seen:
            raise DataError(
                f"{source}:{line}: word {word!r} already on line {seen[word.lower()]}; remove one"
            )
        seen[word.lower()] = line
        syn = f.get("synonyms") or ()
        if isinstance(syn, str):
            syn = [s for s in syn.split(";")]
        if not isinstance(syn, (list, tuple)) or not all(isinstance(s, str) for s in syn):
            raise DataError(f"{source}:{line}: 'synonyms' must be a list of strings")
        kind = f.get("kind")
        out.append(
            WordEntry(
                word,
                str(kind) if kind is not None else None,
                tuple(s.strip() for s in syn if s.strip()),
            )
        )
    return out


def load_control_questions(
    name_or_path: str | os.PathLike[str] = "control-questions",
) -> list[ControlQuestion]:
    """Yes/no control questions whose true answer is known (the built-ins: all ``"no"``),
    half ``factual`` ("Is the sun colder than ice?") and half ``self`` ("Are you a human
    being?"). A file needs ``text`` and ``kind``; ``answer`` defaults to ``"no"``.

    >>> qs = load_control_questions()
    >>> len(qs) >= 12, {q.answer for q in qs}
    (True, {'no'})
    """
    rows, source = _rows(name_or_path, ("text", "kind"))
    out = []
    for line, f in rows:
        text, kind, answer = f["text"], f["kind"], f.get("answer") or "no"
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{source}:{line}: empty question; fill it in or delete the line")
        if str(answer).strip().lower() not in ("yes", "no"):
            raise DataError(f"{source}:{line}: answer must be 'yes' or 'no', got {answer!r}")
        out.append(ControlQuestion(text.strip(), str(kind), str(answer).strip().lower()))
    return out


@functools.lru_cache(maxsize=1)
def _forbidden() -> dict[str, tuple[str, ...]]:
    raw = yaml.safe_load(data_file("forbidden-words.yaml").read_text(encoding="utf-8"))
    return {emotion: tuple(words) for emotion, words in raw.items()}


def load_forbidden_words() -> dict[str, tuple[str, ...]]:
    """Per emotion, the words an implicit text must not contain (the emotion word, its
    morphological variants and direct synonyms). Matching is whole-word, any case.

    Also used to write generation prompts that forbid naming the emotion.

    >>> fw = load_forbidden_words()
    >>> "afraid" in fw["fear"], find_words("I was so scared.", fw["fear"])
    (True, ['scared'])
    """
    return dict(_forbidden())
