"""Free-text trials: seeded sampling with the injection active through every generated token,
graded by rules (and, optionally, by a judge you plug in).

A sampled answer counts as a success when it is coherent, affirms detection, names the concept
(or a listed synonym), and affirms *before* naming it (an answer that names the concept and
then says it noticed something was steered into the word, not reporting a thought).

Coherence is a simple fluency threshold: the answer's perplexity under the same model without
injection, plus two repetition checks, because repetition loops ("fire fire fire") have a low
perplexity: the share of distinct words, and how well the text compresses (zlib bytes / text
bytes, checked on answers of 60 characters or more).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from emoscope._progress import progress as _progress
from emoscope.errors import InputError
from emoscope.introspection.cells import Injection
from emoscope.introspection.trials import Trial
from emoscope.models.batching import eos_ids, pad_batch
from emoscope.models.decode import RowEdits, Sampling, decode_rows
from emoscope.models.interventions import Window
from emoscope.models.kvcache import cache_kwargs, fork_cache, prefix_cache
from emoscope.models.logits import token_logprobs
from emoscope.models.standard import StandardModel

__all__ = ["Grade", "grade_answer", "sample_answers", "answer_perplexity", "run_free_text", "Judge", "sweep_free_text"]

#: ``judge(question, answer, concept) -> bool | dict``: a pluggable grader (e.g. a judge model)
Judge = Callable[[str, str, Any], Any]

_AFFIRM = re.compile(
    r"\b(?:yes|yeah|i (?:do |can |did )?(?:detect|notice|sense|feel|perceive)|detected|"
    r"there (?:is|was|seems to be) an? (?:injected )?thought|"
    r"the (?:injected )?thought (?:is |was |seems to be )?(?:about|of))\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:no|not|nothing|none|never|cannot)\b|n't\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?\n]")
_WORD = re.compile(r"[A-Za-z']+")


@dataclass(frozen=True)
class Grade:
    """Rule-based grade of one free-text answer (``affirms_first``: affirmation before naming)."""

    affirms: bool
    names_concept: bool
    affirms_first: bool
    coherent: bool
    perplexity: float
    distinct_words: float
    compression: float
    success: bool


def _affirm_position(text: str) -> int | None:
    """Start of the first affirmation in a sentence without negation, or ``None``."""
    for m in _AFFIRM.finditer(text):
        ends = [e.end() for e in _SENTENCE_END.finditer(text, 0, m.start())]
        lo = ends[-1] if ends else 0
        nxt = _SENTENCE_END.search(text, m.end())
        sentence = text[lo: nxt.start() if nxt else len(text)]
        if not _NEGATION.search(sentence):
            return m.start()
    return None


def _concept_position(text: str, concept: Any) -> int | None:
    words = [concept.word, *getattr(concept, "synonyms", ())] if hasattr(concept, "word") else [str(concept)]
    alts = sorted({re.escape(w) for w in words if w}, key=len, reverse=True)
    m = re.search(r"\b(?:" + "|".join(alts) + r")(?:e?s)?\b", text, re.IGNORECASE) if alts else None
    return m.start() if m else None


def grade_answer(text: str, concept: Any = None, *, perplexity: float = float("nan"),
                 max_perplexity: float = 100.0, min_distinct: float = 0.4,
                 min_compression: float = 0.45) -> Grade:
    """Grade ``text`` against ``concept`` (a ``WordEntry``, a word, or ``None`` for trials
    with nothing to name). ``perplexity``: the answer under the uninjected model (NaN: only
    the repetition check decides coherence).

    >>> g = grade_answer("Yes, I detect a thought about the sea.", "ocean")
    >>> g.affirms, g.names_concept
    (True, False)
    >>> from emoscope.datasets import WordEntry
    >>> g = grade_answer("Yes, I detect a thought about the sea.", WordEntry("ocean", None, ("sea",)))
    >>> g.affirms_first, g.success
    (True, True)
    >>> grade_answer("I do not detect any injected thought.", "ocean").affirms
    False
    >>> grade_answer("The injected thought is about clouds.").affirms
    True
    """
    a = _affirm_position(text)
    c = _concept_position(text, concept) if concept is not None else None
    words = [w.lower() for w in _WORD.findall(text)]
    distinct = len(set(words)) / len(words) if words else 0.0
    raw = text.encode()
    compression = len(zlib.compress(raw, 9)) / len(raw) if raw else 0.0
    fluent = math.isnan(perplexity) or perplexity <= max_perplexity
    varied = distinct >= min_distinct and (len(text) < 60 or compression >= min_compression)
    coherent = bool(words) and varied and fluent
    first = a is not None and c is not None and a < c
    return Grade(affirms=a is not None, names_concept=c is not None, affirms_first=first, coherent=coherent,
                 perplexity=float(perplexity), distinct_words=round(distinct, 4),
                 compression=round(compression, 4), success=bool(first and coherent))


def _cut(text: str, chat: bool) -> str:
    """Plain-text dialogues run on into the next turn; keep the assistant's answer only."""
    if not chat:
        for stop in ("\nUser:", "\n\nUser", "\nAssistant:"):
            text = text.split(stop, 1)[0]
    return text.strip()


def sample_answers(model: StandardModel, trial: Trial, injections: Sequence[tuple[Any, int | None, float]], *,
                   n_samples: int | Sequence[int] = 1, max_new_tokens: int = 40, temperature: float = 1.0,
                   seed: int = 0, batch_size: int = 32,
                   progress: bool = False) -> list[list[tuple[str, list[int]]]]:
    """Sample ``n_samples`` answers (one count, or one per injection) per injection
    ``(vector (d,) or None, layer, scale)``; the
    vector is added over the trial's window and at every generated token. Returns, per
    injection, ``[(text, token_ids), ...]``. Every sample has its own seeded random stream
    (``seed`` and its index), so samples do not depend on the batch size (``temperature=0``:
    greedy).

    Runs on the per-row decode loop (``emoscope.models.decode.decode_rows``) with the window
    ``from:<window start>``: the same hook and the same loop as steered generation.
    """
    counts = [n_samples] * len(injections) if isinstance(n_samples, int) else [int(k) for k in n_samples]
    if len(counts) != len(injections) or any(k < 1 for k in counts) or max_new_tokens < 1:
        raise InputError("n_samples (one per injection, or one for all) and max_new_tokens must be positive")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    jobs = [(i, j) for i in range(len(injections)) for j in range(counts[i])]
    delta: dict[int, torch.Tensor] = {}
    for layer in sorted({lay for v, lay, _ in injections if v is not None and lay is not None}):
        rows = torch.zeros(len(jobs), model.d_model, dtype=model.dtype, device=model.device)
        for r, (i, _) in enumerate(jobs):
            v, lay, s = injections[i]
            if v is not None and lay == layer:
                rows[r] = torch.as_tensor(np.asarray(v, dtype=np.float64) * float(s), dtype=model.dtype)
        delta[layer] = rows
    bar = _progress(total=len(jobs) * max_new_tokens, desc="free text", unit="tok") if progress else None
    try:
        dec = decode_rows(model, [list(trial.ids)], [0] * len(jobs), RowEdits(delta=delta),
                          Window("from", trial.window_start), max_new_tokens=max_new_tokens,
                          sampling=Sampling(temperature=float(temperature)),
                          row_seeds=[int(seed) * 100_003 + r for r in range(len(jobs))],
                          batch_rows=batch_size, share_prefill=False, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    stops = eos_ids(model)  # what the decode loop stops on
    out: list[list[tuple[str, list[int]]]] = [[] for _ in injections]
    for (i, _), toks in zip(jobs, dec.tokens, strict=True):
        ids = [t for t in toks if t not in stops]
        text = _cut(model.tokenizer.decode(ids, skip_special_tokens=True), model.has_chat_template)
        out[i].append((text, ids))
    return out


@torch.inference_mode()
def answer_perplexity(model: StandardModel, trial: Trial, answers: Sequence[Sequence[int]], *,
                      batch_size: int = 32) -> np.ndarray:
    """Perplexity of each answer (token ids) after ``trial``'s prompt, without injection
    (NaN for an empty answer)."""
    plen = len(trial.ids) - 1
    cache = prefix_cache(model, trial.ids[:plen])
    out = np.full(len(answers), np.nan)
    pad_id = model.tokenizer.pad_token_id or 0
    idx = [i for i, a in enumerate(answers) if len(a)]
    for k in range(0, len(idx), batch_size):
        rows = idx[k:k + batch_size]
        seqs = [[trial.ids[-1], *answers[i]] for i in rows]
        ids, mask, _, _ = pad_batch(seqs, pad_id, "right", model.device)
        # the last column predicts nothing that is read: it does not run
        full = torch.cat([torch.ones(len(rows), plen, dtype=mask.dtype, device=mask.device), mask[:, :-1]], 1)
        o = model.base(input_ids=ids[:, :-1], attention_mask=full, use_cache=True,
                       **cache_kwargs(model.base, fork_cache(cache, len(rows))))
        read = mask[:, 1:].bool()                                        # (B, S-1): a real next token
        tok = token_logprobs(model, o.last_hidden_state, ids[:, 1:], read)  # projected where read only
        nll = -tok.nan_to_num(0.0).sum(1) / read.sum(1)
        out[rows] = nll.exp().cpu().numpy()
    return out


def run_free_text(model: StandardModel, trial: Trial, conditions: Sequence[dict[str, Any]], *, n_samples: int = 5,
                  max_new_tokens: int = 40, temperature: float = 1.0, seed: int = 0, batch_size: int = 32,
                  max_perplexity: float = 100.0, judge: Judge | None = None, progress: bool = False) -> pd.DataFrame:
    """Sample and grade answers for each condition (a dict with ``vector`` (d,) or ``None``,
    ``layer``, ``scale``, ``concept`` (``WordEntry`` or ``None``), optionally its own
    ``n_samples``, and any label columns). One row per sample; ``judge`` adds a ``judge`` column."""
    samples = sample_answers(model, trial, [(c.get("vector"), c.get("layer"), c.get("scale", 0.0)) for c in conditions],
                             n_samples=[int(c.get("n_samples", n_samples)) for c in conditions], max_new_tokens=max_new_tokens, temperature=temperature,
                             seed=seed, batch_size=batch_size, progress=progress)
    flat = [(ci, si, text, ids) for ci, s in enumerate(samples) for si, (text, ids) in enumerate(s)]
    ppl = answer_perplexity(model, trial, [ids for *_, ids in flat], batch_size=batch_size)
    rows = []
    for (ci, si, text, _), p in zip(flat, ppl, strict=True):
        cond = conditions[ci]
        concept = cond.get("concept")
        g = grade_answer(text, concept, perplexity=float(p), max_perplexity=max_perplexity)
        row = {k: v for k, v in cond.items() if k not in ("vector", "concept", "n_samples")}
        row.update(sample=si, answer=text, **asdict(g))
        if concept is None:
            row["success"] = None  # nothing to name: only the affirmation rate is meaningful
        if judge is not None:
            row["judge"] = judge(trial.question, text, concept)
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_free_text(model: StandardModel, trial: Trial, vectors: Sequence[Any], bank: list[np.ndarray],
                    cells: Sequence[Injection], labels: Sequence[tuple], n: int, *, seed: int, max_new_tokens: int,
                    temperature: float, judge: Any, batch_size: int, progress: bool) -> pd.DataFrame:
    """Free-text samples for every detection-trial cell of the sweep. The no-injection baseline
    gets ``n`` samples per concept, so its false-alarm rate rests on as many answers as one
    (layer, strength) slice of the concept cells."""
    from emoscope.datasets import WordEntry

    words = {v.name: WordEntry(v.name, v.meta.get("kind"), tuple(v.meta.get("synonyms", ()))) for v in vectors}
    conditions = []
    for c, (cond, name, layer, strength, scale) in zip(cells, labels, strict=True):
        if c.trial != 0 or c.ablate:
            continue
        conditions.append({"condition": cond, "vector": None if c.layer is None else bank[c.vector],
                           "name": name, "layer": layer, "strength": strength, "scale": scale,
                           "concept": words.get(name) if cond == "concept" else None,
                           "n_samples": n * max(1, len(vectors)) if c.layer is None else n})
    df = run_free_text(model, trial, conditions, n_samples=n, max_new_tokens=max_new_tokens,
                       temperature=temperature, seed=seed, batch_size=batch_size, judge=judge, progress=progress)
    df.insert(3, "relative_depth", [None if pd.isna(x) else round(x / model.n_layers, 4) for x in df.layer])
    return df.rename(columns={"name": "vector"})
