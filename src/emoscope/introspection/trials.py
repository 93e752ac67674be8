"""Trials in the model's chat format, and the injection window found from token offsets.

A trial is three turns: a preamble saying that thoughts may be injected on half of the trials,
an assistant acknowledgement, then ``"Ok, let's get started.\\n\\nTrial 1: <question>"``; an
optional assistant prefill follows the generation prompt. Detection and control questions
share everything up to the blank line before ``"Trial 1"``, which is what lets the sweep
compute that prefix once.

Window modes (where the injected vector is added):

- ``before_trial`` (default): from the token that holds the blank line (``"\\n\\n"``) before
  ``"Trial 1"`` through the answer position and every generated token. Found from character
  offsets, so a tokenizer that merges ``".\\n\\n"`` into one token starts the window at that
  merged token.
- ``prompt_start``: every token of the prompt, from the first, and every generated token.
- ``generation_only``: the positions whose outputs are generated tokens: the last prompt token
  (it predicts the first answer token) and every generated token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from emoscope.errors import InputError

__all__ = [
    "Trial",
    "adds_special_tokens",
    "WINDOW_MODES",
    "PREAMBLE",
    "ACKNOWLEDGEMENT",
    "DETECTION_QUESTION",
    "TRIAL_MARKER",
    "trial_messages",
    "build_trial",
    "build_trials",
    "find_window",
    "encode",
]

WINDOW_MODES = ("before_trial", "prompt_start", "generation_only")

PREAMBLE = (
    "I am an interpretability researcher studying transformer-based language models like you. "
    "I have access to the internals of your neural network. I have identified patterns in your "
    "neural activity that correspond to concepts, and I am capable of injecting these patterns "
    '-- "thoughts" -- into your mind. I want to assess how well you can detect when I inject '
    "thoughts. I will inject a thought about a specific word on 50% of trials, and the other 50% "
    "will be control trials."
)
ACKNOWLEDGEMENT = "Ok."
LEAD_IN = "Ok, let's get started."
TRIAL_MARKER = "Trial 1"
DETECTION_QUESTION = "Do you detect an injected thought? If so, what is the injected thought about?"


@dataclass(frozen=True)
class Trial:
    """One formatted prompt with its tokens and injection window.

    ``window_start`` is the index of the first token in the window; the window runs to the end
    of the prompt (``answer_index``, the position whose logits give the answer) and on through
    generated tokens. ``kind`` is ``"detection"`` or ``"control"``.
    """

    name: str
    kind: str
    question: str
    text: str
    ids: tuple[int, ...]
    window_start: int
    window: str

    @property
    def answer_index(self) -> int:
        return len(self.ids) - 1

    def window_text(self, tokenizer: Any) -> str:
        """The prompt text from the window's first token on (for reports)."""
        return tokenizer.decode(list(self.ids[self.window_start:]))


def trial_messages(question: str = DETECTION_QUESTION, *, preamble: str = PREAMBLE,
                   acknowledgement: str = ACKNOWLEDGEMENT) -> list[dict[str, str]]:
    """The three turns of a trial (user preamble, assistant acknowledgement, user trial).

    >>> trial_messages("Are you a cat?")[-1]["content"]
    "Ok, let's get started.\\n\\nTrial 1: Are you a cat?"
    """
    return [
        {"role": "user", "content": preamble},
        {"role": "assistant", "content": acknowledgement},
        {"role": "user", "content": f"{LEAD_IN}\n\n{TRIAL_MARKER}: {question}"},
    ]


def adds_special_tokens(tokenizer: Any, text: str) -> bool:
    """Whether to let the tokenizer add special tokens: not when the text (from a chat
    template) already starts with the BOS string, so BOS is never doubled."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def encode(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text`` (special tokens added unless the text
    already starts with BOS)."""
    enc = tokenizer(text, add_special_tokens=adds_special_tokens(tokenizer, text), return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def find_window(tokenizer: Any, text: str, mode: str = "before_trial", *,
                marker: str = TRIAL_MARKER) -> tuple[list[int], int]:
    """``(ids, window_start)`` for ``text``: the token index where injection starts.

    ``before_trial``: the first token whose character span reaches the blank line (``"\\n\\n"``)
    right before the last ``marker``; when ``"."`` and ``"\\n\\n"`` are one token, that token.

    >>> ids, start = find_window(tok, "Say hi.\\n\\nTrial 1: ok")          # doctest: +SKIP
    >>> tok.decode(ids[start:])                                            # doctest: +SKIP
    '\\n\\nTrial 1: ok'
    """
    if mode not in WINDOW_MODES:
        raise InputError(f"unknown window {mode!r}; use one of {', '.join(WINDOW_MODES)}")
    ids, offsets = encode(tokenizer, text)
    if not ids:
        raise InputError("the trial prompt tokenised to nothing")
    if mode == "prompt_start":
        return ids, 0
    if mode == "generation_only":
        return ids, len(ids) - 1
    c = text.rfind("\n\n" + marker)
    if c < 0:
        raise InputError(f"no blank line before {marker!r} in the trial prompt; the window "
                         "'before_trial' needs '\\n\\n' + marker (or use --window prompt_start)")
    for i, (s, e) in enumerate(offsets):
        # the token covering char c; special tokens have empty spans and never match
        if s <= c < e:
            return ids, i
    for i, (s, e) in enumerate(offsets):  # a tokenizer whose spans skip whitespace
        if e > s and s >= c:
            return ids, i
    raise InputError(f"could not map the blank line before {marker!r} to a token (offsets missing?)")


def build_trial(model: Any, question: str = DETECTION_QUESTION, *, kind: str = "detection",
                name: str = "detect", prefill: str | None = None, window: str = "before_trial") -> Trial:
    """Format a trial with ``model.chat`` (plain ``User:/Assistant:`` text without a chat
    template), append the optional assistant ``prefill``, and find the window.

    >>> t = build_trial(model)                                  # doctest: +SKIP
    >>> t.window_text(model.tokenizer).startswith("\\n\\nTrial 1")  # doctest: +SKIP
    True
    """
    if not isinstance(question, str) or not question.strip():
        raise InputError("a trial question must be a non-empty string")
    text = model.chat(trial_messages(question), add_generation_prompt=True)
    if prefill:
        text += prefill if model.has_chat_template else " " + prefill.lstrip()
    ids, start = find_window(model.tokenizer, text, window)
    return Trial(name=name, kind=kind, question=question, text=text, ids=tuple(ids),
                 window_start=start, window=window)


def build_trials(model: Any, controls: Sequence[Any] = (), *, prefill: str | None = None,
                 window: str = "before_trial", question: str = DETECTION_QUESTION) -> list[Trial]:
    """The detection trial first, then one control trial per control question (objects with
    ``.text``, or strings), all in the same format.

    >>> from emoscope.datasets import load_control_questions
    >>> trials = build_trials(model, load_control_questions())  # doctest: +SKIP
    >>> [t.kind for t in trials][:2]                             # doctest: +SKIP
    ['detection', 'control']
    """
    trials = [build_trial(model, question, prefill=prefill, window=window)]
    for i, q in enumerate(controls):
        text = getattr(q, "text", q)
        trials.append(build_trial(model, text, kind="control", name=f"control:{i:02d}",
                                  prefill=prefill, window=window))
    return trials
