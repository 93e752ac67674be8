"""What the model is asked to write, and which of its texts are kept.

Instruct models get a chat message; base models a completion prompt that the text continues.
Both name the emotion (that is the point of the 2x2 design in ``emoscope.elicit.modes_stage``: the
instruction is in context while the model writes). ``neutral`` gets the same frame with an
everyday topic and no feeling, so generated and read arms share a baseline.

The filter reuses the forbidden-word lists of the implicit datasets
(``emoscope/datasets/data/forbidden-words.yaml``) and adds the regular inflections of every
listed word and of the emotion's own name, so a text that names the feeling is rejected even
when the list misses a form ("angers", "scaredly", "joyless").

>>> rejects("She could not stop grinning at the letter.", "joy") is None
True
>>> rejects("What a JOYOUS morning!", "joy")
'JOYOUS'
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from emoscope.datasets import find_words, load_forbidden_words
from emoscope.errors import InputError

__all__ = ["NEUTRAL", "CHAT_TEMPLATE", "COMPLETION_TEMPLATE", "NEUTRAL_TOPIC", "check_emotions",
           "forbidden_for", "rejects", "instruction", "completion_prompt", "class_prompts"]

NEUTRAL = "neutral"
# The emotion is named once: small models copy words from the prompt, and a second mention (as in
# 'do not use the word "joy"') made them name it more often.
CHAT_TEMPLATE = ("Describe, in one short first-person sentence, a small moment that shows {emotion} only through "
                 "what happens and what you do. Never name a feeling.")
NEUTRAL_TOPIC = ("Describe, in one short first-person sentence, {topic}, only through what happens and what you "
                 "do. Never name a feeling.")
NEUTRAL_TOPICS = ("an ordinary errand", "a routine chore at home", "the weather today", "a bus timetable",
                  "tidying a desk", "a recipe step", "a train schedule", "sorting the mail")
COMPLETION_TEMPLATE = ("Short sentences in which a person feels {emotion}, without naming the feeling:\n"
                       "1.")
COMPLETION_NEUTRAL = "Short sentences about ordinary everyday things, with no feelings in them:\n1."
_NAME = re.compile(r"^[a-z][a-z_\-]{0,39}$")
# Regular English endings added to every forbidden word (and the emotion's name): the list has the
# common forms; these catch the rest. Stems drop a final "e" / "y" before a vowel ending.
_ENDINGS = ("s", "es", "ed", "d", "ing", "ly", "ness", "ful", "fully", "less", "er", "est", "ish")


def check_emotions(emotions: Iterable[str] | str) -> list[str]:
    """Validated emotion names (lower-case words), ``neutral`` excluded, in the given order.

    One ``InputError`` line for an empty list, an empty name, a duplicate, or a name that is
    not a lower-case word; ``neutral`` is always elicited and need not be listed.

    >>> check_emotions("joy, fear")
    ['joy', 'fear']
    >>> check_emotions("joy,,fear")
    Traceback (most recent call last):
    ...
    emoscope.errors.InputError: emotion 2 of 'joy,,fear' is empty; give comma-separated names such as joy,fear
    """
    raw = emotions.split(",") if isinstance(emotions, str) else list(emotions)
    shown = emotions if isinstance(emotions, str) else ",".join(map(str, raw))
    if not raw or all(not str(e).strip() for e in raw):
        raise InputError("no emotions given; pass e.g. --emotions joy,sadness,anger")
    out: list[str] = []
    for i, e in enumerate(raw, 1):
        name = str(e).strip().lower()
        if not name:
            raise InputError(f"emotion {i} of {shown!r} is empty; give comma-separated names such as joy,fear")
        if not _NAME.match(name):
            raise InputError(f"emotion {name!r} must be one lower-case word (letters, '-' or '_')")
        if name in out:
            raise InputError(f"emotion {name!r} is listed twice in {shown!r}; list each emotion once")
        if name == NEUTRAL:
            raise InputError("'neutral' is always elicited as the baseline; leave it out of the emotion list")
        out.append(name)
    return out


def _inflections(word: str) -> set[str]:
    w = word.lower()
    stems = {w}
    if w.endswith("e"):
        stems.add(w[:-1])
    if w.endswith("y"):
        stems.add(w[:-1] + "i")
    return {w} | {s + end for s in stems for end in _ENDINGS}


@functools.cache
def forbidden_for(emotion: str) -> tuple[str, ...]:
    """Every word a text for ``emotion`` must not contain: its forbidden-word list (if the emotion
    has one), its own name, and the regular inflections of all of them. ``neutral`` gets the words
    of every list (a neutral text names no feeling).

    >>> {"anger", "angers", "angrily", "furious"} <= set(forbidden_for("anger"))
    True
    >>> "awe" in forbidden_for("awe"), "awed" in forbidden_for("awe")
    (True, True)
    """
    lists = load_forbidden_words()
    base = [w for ws in lists.values() for w in ws] if emotion == NEUTRAL else [*lists.get(emotion, ()), emotion]
    return tuple(sorted({f for w in base for f in _inflections(w)}))


def rejects(text: str, emotion: str) -> str | None:
    """The first forbidden word ``text`` contains for ``emotion`` (as written), or ``None``."""
    hits = find_words(text, forbidden_for(emotion))
    return hits[0] if hits else None


def instruction(emotion: str, index: int = 0) -> str:
    """The chat instruction for ``emotion`` (``neutral``: an everyday topic, cycling with ``index``).

    >>> instruction("joy").startswith("Describe, in one short first-person sentence")
    True
    """
    if emotion == NEUTRAL:
        return NEUTRAL_TOPIC.format(topic=NEUTRAL_TOPICS[index % len(NEUTRAL_TOPICS)])
    return CHAT_TEMPLATE.format(emotion=emotion)


def completion_prompt(emotion: str) -> str:
    """The completion prompt a base model continues (one line per text).

    >>> completion_prompt("fear").endswith("1.")
    True
    """
    return COMPLETION_NEUTRAL if emotion == NEUTRAL else COMPLETION_TEMPLATE.format(emotion=emotion)


def class_prompts(model, emotions: Sequence[str], chat: bool, n: int) -> tuple[list[str], list[str]]:  # noqa: ANN001, ARG001
    """Per generated row (``n`` per emotion, then ``n`` neutral), the label and the instruction as
    written (chat: the user message, neutral rows cycling through everyday topics; completion:
    the prompt itself).

    >>> class_prompts(None, ["joy"], False, 2)[0]
    ['joy', 'joy', 'neutral', 'neutral']
    """
    labels, texts = [], []
    for e in [*emotions, NEUTRAL]:
        for j in range(n):
            labels.append(e)
            texts.append(instruction(e, j) if chat else completion_prompt(e))
    return labels, texts
