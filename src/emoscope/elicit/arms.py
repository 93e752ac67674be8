"""The extraction modes ("arms") compared by ``emoscope.elicit.modes_stage``, as token sequences.

Two differences hide in "generation-based vs comprehension-based": whether the instruction
(which names the emotion) is in context, and where the text came from. The 2x2 separates them:

============  =====================================  =======================================
              instruction in context                 read plainly
============  =====================================  =======================================
generated     ``gen_instr``: states captured while   ``gen_plain``: the same texts re-read
              the model writes the text              as plain prompts
human         ``read_instr``: the built-in texts as  ``read_plain``: today's
              the assistant's reply to the same      comprehension-based vectors
              instruction
============  =====================================  =======================================

plus ``token``: the token-based arm (``emotion-word-templates``, the slot word's last token).

Positions are pooled the same way in the four arms: the mean over the text's tokens from its
first one, and its last token (``emoscope.elicit.capture``). The special tokens a tokenizer puts
in front of a plain text (BOS) are context, not text. The first position of a sequence (the
attention sink, whose state has an outsized norm) is never pooled: in the framed arms it belongs
to the prompt anyway; a plain text read without BOS starts its mean at its second token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from emoscope.elicit.prompts import completion_prompt, instruction

__all__ = ["ARMS", "ARM_LABELS", "PAIRS", "plain_sequences", "framed_sequences", "slot_sequences"]

ARMS = ("gen_instr", "gen_plain", "read_instr", "read_plain", "token")
ARM_LABELS = {
    "gen_instr": "generated text, instruction in context (captured while writing)",
    "gen_plain": "generated text, re-read without the instruction",
    "read_instr": "human-written text as the reply to the instruction",
    "read_plain": "human-written text read plainly (comprehension-based)",
    "token": "token-based: the emotion word minus its neutral twin, at the word",
}
#: (a, b, what the difference isolates)
PAIRS = [
    ("gen_instr", "read_plain", "generation- vs comprehension-based (both differences at once)"),
    ("gen_instr", "gen_plain", "instruction in context, generated text"),
    ("read_instr", "read_plain", "instruction in context, human text"),
    ("gen_plain", "read_plain", "text source, read plainly"),
    ("gen_instr", "read_instr", "text source, instruction in context"),
    ("token", "read_plain", "token-based vs sentence-level comprehension"),
]



def _prefix(model: Any) -> list[int]:
    """The special tokens the tokenizer puts before a plain text (e.g. BOS)."""
    tok = model.tokenizer
    with_special = list(tok("a", add_special_tokens=True)["input_ids"])
    bare = list(tok("a", add_special_tokens=False)["input_ids"])
    if bare and with_special[-len(bare):] == bare:
        return with_special[: len(with_special) - len(bare)]
    return []


def plain_sequences(model: Any, texts: Sequence[str]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Each text as a plain prompt: ``(ids, span of the text's tokens)``."""
    pre = _prefix(model)
    seqs, spans = [], []
    for t in texts:
        ids = list(model.tokenizer(t, add_special_tokens=False)["input_ids"])
        seqs.append(pre + ids)
        # the first position of a sequence is the attention sink (a state of outsized norm): with no
        # BOS in front it is the text's first token and is left out, as in every other arm
        start = len(pre) if pre or len(ids) < 2 else 1
        spans.append((start, len(pre) + len(ids)))
    return seqs, spans


def framed_sequences(model: Any, texts: Sequence[str], labels: Sequence[str], chat: bool
                     ) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Each text placed where the model would have written it for its label's instruction: after the
    chat prompt (``chat``) or after the completion prompt (a space, then the text)."""
    tok = model.tokenizer
    seqs, spans, counts = [], [], {}
    for t, lab in zip(texts, labels, strict=True):
        j = counts[lab] = counts.get(lab, -1) + 1
        if chat:
            head = list(tok(model.chat(instruction(lab, j)), add_special_tokens=False)["input_ids"])
            body = list(tok(t, add_special_tokens=False)["input_ids"])
        else:
            head = list(tok(completion_prompt(lab))["input_ids"])
            body = list(tok(" " + t, add_special_tokens=False)["input_ids"])
        seqs.append(head + body)
        spans.append((len(head), len(head) + len(body)))
    return seqs, spans


def slot_sequences(model: Any, texts: Sequence[str]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Template texts that end in their slot word: the span is the last token only."""
    seqs, _ = plain_sequences(model, texts)
    return seqs, [(len(s) - 1, len(s)) for s in seqs]
