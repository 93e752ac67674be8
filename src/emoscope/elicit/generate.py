"""``elicit``: the model writes short texts for each emotion (and neutral) in one batched decode.

Every (class, sample) is one row of a single ``decode_rows`` batch (no loop over emotions), with
its own seeded random stream (``seed * 1_000_003 + row``), so a rerun writes the same texts.
The text of a row is its generated tokens from the first one that is not whitespace up to (not
including) the first end-of-sequence token, the first line break after some text, or
``max_new_tokens``. Texts that name the emotion (``emoscope.elicit.prompts.rejects``), empty
texts and duplicates are dropped and counted.

With ``layers``, the residual states at the text's tokens are captured while the model writes
them (``StepRecorder``): one extra token is decoded and discarded so the last kept token has
been fed through the model too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emoscope.elicit.capture import StepRecorder, pool_steps
from emoscope.elicit.prompts import NEUTRAL, check_emotions, class_prompts, rejects
from emoscope.errors import InputError, ModelError
from emoscope.models.batching import eos_ids
from emoscope.models.decode import RowEdits, Sampling, decode_rows
from emoscope.models.interventions import Window

__all__ = ["Elicited", "elicit", "check_request"]


@dataclass
class Elicited:
    """What ``elicit`` returns. Per generated row: ``labels``, ``prompts`` (instruction as written),
    ``prompt_ids``, ``tokens`` (the text's token ids), ``spans`` ((a, b) into the generated ids),
    ``texts`` and ``status`` (``kept``, ``forbidden:<word>``, ``empty``, ``duplicate``, ``surplus``: passed
    after the class already had ``n``);
    ``generated``: every generated id of the row (the text is ``generated[r][a:b]``).
    ``states[pool][layer]``: ``(rows, d)`` captured at generation (NaN for rows with no text)."""

    labels: list[str]
    prompts: list[str]
    prompt_ids: list[list[int]]
    tokens: list[list[int]]
    spans: list[tuple[int, int]]
    texts: list[str]
    status: list[str]
    settings: dict[str, Any]
    generated: list[list[int]] = field(default_factory=list)
    states: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    seconds: float = 0.0
    new_tokens: int = 0

    @property
    def kept(self) -> np.ndarray:
        """Indices of the rows kept."""
        return np.flatnonzero(np.asarray(self.status) == "kept")

    def rejection_counts(self) -> dict[str, dict[str, int]]:
        """Per class: generated, kept, and each rejection reason's count."""
        out: dict[str, dict[str, int]] = {}
        for lab, st in zip(self.labels, self.status, strict=True):
            c = out.setdefault(lab, {"generated": 0, "kept": 0, "forbidden": 0, "empty": 0, "duplicate": 0,
                                     "surplus": 0})
            c["generated"] += 1
            c[st.split(":")[0]] += 1
        return out


def check_request(model: Any | None, emotions: Any, n: int, max_new_tokens: int, chat: bool | str) -> list[str]:
    """Validate an elicitation request (the model part only when one is given); one-line errors."""
    names = check_emotions(emotions)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"--n must be a positive number of texts per emotion, got {n!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 2:
        raise InputError(f"max_new_tokens must be at least 2, got {max_new_tokens!r}")
    if chat not in (True, False, "auto"):
        raise InputError(f"chat must be true, false or 'auto', got {chat!r}")
    if model is not None and chat is True and not model.has_chat_template:
        raise ModelError(f"{getattr(model, 'name', 'the model')} has no chat template, so it cannot be asked "
                         "through one; use --style completion (a base-model prompt the text continues)")
    return names


def _span(model: Any, ids: list[int], stop: set[int], cap: int) -> tuple[int, int]:
    """``(a, b)``: from the first non-blank token to the end of the first line, EOS or ``cap``."""
    tok = model.tokenizer
    a, b = None, 0
    for i, t in enumerate(ids[:cap]):
        if t in stop:
            break
        piece = tok.decode([t], skip_special_tokens=False)
        if a is None:
            if not piece.strip():
                continue
            a = i
        elif "\n" in piece:
            break
        b = i + 1
    return (0, 0) if a is None else (a, b)


def elicit(model: Any, emotions: Any, n: int, *, seed: int = 0, max_new_tokens: int = 40,
           temperature: float = 0.9, top_p: float = 0.95, top_k: int = 0, chat: bool | str = "auto",
           layers: Any = None, oversample: float = 1.0, require_all: bool = True, progress: bool = True) -> Elicited:
    """Generate ``n`` texts per emotion and ``n`` neutral ones in one batched, seeded decode.

    ``chat``: ``"auto"`` uses the chat template when the model has one, ``True`` requires it,
    ``False`` writes a completion prompt. ``oversample``: generate ``ceil(n * oversample)`` rows per
    class and keep the first ``n`` that pass (the rest are counted as ``surplus``). ``layers``: capture
    ``resid[l]`` at the text's tokens
    during generation (``states["mean"|"last"][l]``). With ``require_all`` an emotion whose
    every text is rejected is a one-line ``InputError`` (nothing is written by the caller).

    >>> el = elicit(model, "joy,fear", n=4, seed=0, max_new_tokens=30)      # doctest: +SKIP
    >>> el.rejection_counts()["joy"]                                       # doctest: +SKIP
    {'generated': 4, 'kept': 4, 'forbidden': 0, 'empty': 0, 'duplicate': 0, 'surplus': 0}
    """
    from emoscope._progress import progress as bar

    names = check_request(model, emotions, n, max_new_tokens, chat)
    use_chat = model.has_chat_template if chat == "auto" else bool(chat)
    sampling = Sampling(float(temperature), int(top_k), float(top_p))
    if sampling.greedy and n > 1:
        raise InputError("temperature 0 is greedy: every sample of an emotion would be the same text; "
                         "use a temperature above 0 or --n 1")
    if not (isinstance(oversample, (int, float)) and 1.0 <= oversample <= 20.0):
        raise InputError(f"oversample must be between 1 and 20, got {oversample!r}")
    n_gen = int(np.ceil(n * oversample))
    labels, prompts = class_prompts(model, names, use_chat, n_gen)
    tok = model.tokenizer
    formatted = {p: (model.chat(p) if use_chat else p) for p in dict.fromkeys(prompts)}
    uniq = list(formatted)
    uniq_ids = [list(tok(formatted[p], add_special_tokens=not use_chat)["input_ids"]) for p in uniq]
    at = {p: i for i, p in enumerate(uniq)}
    row_prompt = [at[p] for p in prompts]
    rows = len(labels)
    layer_list = model.resolve_layers(layers) if layers is not None else []
    seeds = [int(seed) * 1_000_003 + r for r in range(rows)]
    pbar = bar(total=rows * (max_new_tokens + 1), desc="elicit", unit="tok") if progress else None
    rec = StepRecorder(model, layer_list, rows)
    try:
        with rec:
            dec = decode_rows(model, uniq_ids, row_prompt, RowEdits(), Window("generated"),
                              max_new_tokens=max_new_tokens + 1, sampling=sampling, row_seeds=seeds,
                              batch_rows=rows, progress=pbar)
    finally:
        if pbar is not None:
            pbar.close()
    stop = eos_ids(model)
    spans, texts, status, kept_tokens = [], [], [], []
    seen: set[str] = set()
    kept_per: dict[str, int] = {}
    for r in range(rows):
        a, b = _span(model, dec.tokens[r], stop, max_new_tokens)
        ids = dec.tokens[r][a:b]
        text = tok.decode(ids, skip_special_tokens=True).strip() if b > a else ""
        key = " ".join(text.lower().split())
        if not any(ch.isalpha() for ch in text):
            st = "empty"
        elif (hit := rejects(text, labels[r])) is not None:
            st = f"forbidden:{hit}"
        elif key in seen:
            st = "duplicate"
        elif kept_per.get(labels[r], 0) >= n:
            st = "surplus"
        else:
            kept_per[labels[r]] = kept_per.get(labels[r], 0) + 1
            st = "kept"
            seen.add(key)
        spans.append((a, b))
        texts.append(text)
        status.append(st)
        kept_tokens.append(ids)
    out = Elicited(labels=labels, prompts=prompts, prompt_ids=[uniq_ids[i] for i in row_prompt], tokens=kept_tokens,
                   spans=spans, texts=texts, status=status, seconds=dec.seconds, generated=dec.tokens,
                   new_tokens=sum(len(t) for t in dec.tokens),
                   settings={"model": getattr(model, "name", ""), "weights_sha256": getattr(model, "weights_sha256", ""),
                             "style": "chat" if use_chat else "completion", "emotions": names, "n": n,
                             "generated_per_class": n_gen,
                             "seed": int(seed), "row_seed": "seed * 1000003 + row",
                             "max_new_tokens": max_new_tokens, "temperature": sampling.temperature,
                             "top_p": sampling.top_p, "top_k": sampling.top_k,
                             "prompts": {lab: p for lab, p in zip(labels, prompts, strict=True) if lab != NEUTRAL},
                             "neutral_prompts": sorted({p for lab, p in zip(labels, prompts, strict=True)
                                                        if lab == NEUTRAL})})
    if layer_list:
        pooled = {layer: pool_steps(rec.steps[layer], spans) for layer in layer_list}
        out.states = {p: {layer: pooled[layer][p] for layer in layer_list} for p in ("mean", "last")}
    if require_all:
        counts = out.rejection_counts()
        empty = [c for c in [*names, NEUTRAL] if counts[c]["kept"] == 0]
        if empty:
            c = counts[empty[0]]
            why = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("generated", "kept") and v)
            why = why or "none kept"
            raise InputError(f"all {c['generated']} texts of {empty[0]!r} were rejected ({why}); nothing was written; "
                             "raise --n or --max-new-tokens, or try another --seed")
    return out


def summarise_lengths(el: Elicited) -> dict[str, dict[str, float]]:
    """Per class, token-length statistics of the kept texts (n, mean, sd, min, max)."""
    out: dict[str, dict[str, float]] = {}
    lens: dict[str, list[int]] = {}
    for r in el.kept:
        a, b = el.spans[r]
        lens.setdefault(el.labels[r], []).append(b - a)
    for lab, v in lens.items():
        arr = np.asarray(v, dtype=float)
        out[lab] = {"n": int(arr.size), "mean": round(float(arr.mean()), 2), "sd": round(float(arr.std()), 2),
                    "min": int(arr.min()), "max": int(arr.max())}
    return out
