"""Scorers: one registry of functions that turn generated texts into numeric columns.

A scorer is made by a factory registered with ``@register_scorer("name")``; the factory takes
keyword options and returns ``fn(batch: ScoreBatch) -> {column: (n,) array}``.

Built-ins (columns in brackets):

- ``nrc``: NRC emotion lexicon (package ``nrclex``, bundled lexicon; tokenised here, no
  corpora needed) [``nrc_<emotion>`` = share of words tagged with the emotion, ten emotions]
- ``vader``: VADER valence [``valence`` = compound score in [-1, 1]]
- ``classifier``: any text-classification model by local path (a hub id only when online)
  [``clf_<label>`` probabilities]
- ``perplexity``: perplexity of the output under the *unsteered* model, given the prompt
  [``perplexity``; the sweep adds ``ppl_ratio`` = perplexity / the same prompt's baseline]
- ``repetition``: [``distinct_1``, ``distinct_2``, ``rep4`` = share of 4-grams that already
  occurred earlier in the same output, over words; inside a sweep also ``distinct_1_tok`` and
  ``rep4_tok`` over the output tokens]
- ``script``: [``script_leakage`` = share of letters outside the prompt's main script, e.g. CJK
  under English]

>>> score_texts(["What a wonderful, happy day!"], ["nrc", "vader"])["nrc_joy"].round(2).tolist()
[0.4]
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from emoscope.core.scripts import letter_script
from emoscope.errors import InputError, ModelError

__all__ = ["ScoreBatch", "score_table", "register_scorer", "make_scorer", "known_scorers", "score_texts", "words",
           "main_script", "DEFAULT_SCORERS", "NRC_EMOTIONS"]

ScoreFn = Callable[["ScoreBatch"], dict[str, np.ndarray]]
_REGISTRY: dict[str, Callable[..., ScoreFn]] = {}
DEFAULT_SCORERS = ("nrc", "vader", "perplexity", "repetition", "script")
NRC_EMOTIONS = ("anger", "anticipation", "disgust", "fear", "joy", "negative", "positive", "sadness",
                "surprise", "trust")


@dataclass
class ScoreBatch:
    """What a scorer sees: ``texts`` (the outputs), ``prompts`` (the prompts as written by the
    user), and for model-based scorers the ``model`` with ``prompt_ids`` / ``output_ids``."""

    texts: list[str]
    prompts: list[str] | None = None
    model: Any = None
    prompt_ids: list[list[int]] | None = None
    output_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts)


def register_scorer(name: str) -> Callable[[Callable[..., ScoreFn]], Callable[..., ScoreFn]]:
    """Register a scorer factory ``factory(**options) -> fn(ScoreBatch) -> {column: array}``.

    >>> @register_scorer("length")
    ... def _length():
    ...     return lambda b: {"n_chars": np.array([len(t) for t in b.texts], float)}
    >>> score_texts(["abc"], ["length"])["n_chars"].tolist()
    [3.0]
    """
    def deco(factory: Callable[..., ScoreFn]) -> Callable[..., ScoreFn]:
        _REGISTRY[name] = factory
        return factory
    return deco


def known_scorers() -> list[str]:
    return sorted(_REGISTRY)


def make_scorer(spec: str | tuple[str, Mapping[str, Any]], **options: Any) -> ScoreFn:
    """A scorer from a name, ``"name:arg"`` (``classifier:/path/to/model``), or ``(name, options)``."""
    if isinstance(spec, tuple):
        name, kw = spec[0], {**spec[1], **options}
    else:
        name, _, arg = str(spec).partition(":")
        kw = {**({"model": arg} if arg else {}), **options}
    if name not in _REGISTRY:
        raise InputError(f"unknown scorer {name!r}; known: {', '.join(known_scorers())}")
    return _REGISTRY[name](**kw)


def score_texts(texts: Sequence[str], scorers: Sequence[str | tuple] = ("nrc", "vader", "repetition", "script"),
                prompts: Sequence[str] | None = None, **batch: Any) -> dict[str, np.ndarray]:
    """Run ``scorers`` on ``texts``; columns from all of them in one dict."""
    b = ScoreBatch(list(texts), list(prompts) if prompts is not None else None, **batch)
    out: dict[str, np.ndarray] = {}
    for spec in scorers:
        for col, values in make_scorer(spec)(b).items():
            arr = np.asarray(values, dtype=float)
            if arr.shape != (len(b),):
                raise ValueError(f"scorer {spec!r} returned {arr.shape} for column {col!r}, expected ({len(b)},)")
            out[col] = arr
    return out


# ---- text helpers ------------------------------------------------------------------------------
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, inner apostrophes)."""
    return _WORD.findall(text.lower())


_script = letter_script


def main_script(text: str, default: str = "LATIN") -> str:
    """The most common script among the letters of ``text``.

    >>> main_script("Hello"), main_script("你好吗")
    ('LATIN', 'CJK')
    """
    counts = Counter(s for s in map(_script, text) if s)
    return counts.most_common(1)[0][0] if counts else default


# ---- built-ins ---------------------------------------------------------------------------------
@functools.cache
def _nrc_lexicon() -> dict[str, frozenset[str]]:
    try:
        raw = resources.files("nrclex.data").joinpath("nrc_en.json").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        raise ModelError("the NRC scorer needs the package 'nrclex' (pip install nrclex --no-deps)") from None
    return {w: frozenset(e) for w, e in json.loads(raw).items()}


def _lookup(word: str, lex: Mapping[str, frozenset[str]]) -> frozenset[str]:
    if word in lex:
        return lex[word]
    # A light lemmatiser instead of TextBlob/WordNet (corpora that may not be installed).
    for suffix, repl in (("ies", "y"), ("ied", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"), ("ing", ""),
                         ("ing", "e"), ("ly", ""), ("ness", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)] + repl
            if stem in lex:
                return lex[stem]
    return frozenset()


@register_scorer("nrc")
def nrc_scorer() -> ScoreFn:
    """Share of words carrying each NRC emotion (0 for an empty text)."""
    lex = _nrc_lexicon()

    def fn(b: ScoreBatch) -> dict[str, np.ndarray]:
        out = {f"nrc_{e}": np.zeros(len(b)) for e in NRC_EMOTIONS}
        for i, text in enumerate(b.texts):
            ws = words(text)
            if not ws:
                continue
            counts = Counter(e for w in ws for e in _lookup(w, lex))
            for e in NRC_EMOTIONS:
                out[f"nrc_{e}"][i] = counts.get(e, 0) / len(ws)
        return out
    return fn


@register_scorer("vader")
def vader_scorer() -> ScoreFn:
    """VADER compound valence in [-1, 1]."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ModuleNotFoundError:
        raise ModelError("the VADER scorer needs the package 'vadersentiment'") from None
    sia = SentimentIntensityAnalyzer()
    return lambda b: {"valence": np.array([sia.polarity_scores(t)["compound"] if t.strip() else 0.0
                                           for t in b.texts])}


@register_scorer("repetition")
def repetition_scorer() -> ScoreFn:
    """distinct-1/2 (unique n-grams / n-grams) and rep4 (share of repeated 4-grams) over words;
    with the output token ids (inside a sweep) also ``distinct_1_tok`` and ``rep4_tok`` over
    tokens, which catch loops that make no words ("estestest...", "\\n\\n*\\n\\n*...")."""
    def grams(seq: Sequence[Any], n: int) -> list[tuple[Any, ...]]:
        return [tuple(seq[i: i + n]) for i in range(len(seq) - n + 1)]

    def distinct(seq: Sequence[Any], n: int) -> float:
        g = grams(seq, n)
        return len(set(g)) / len(g) if g else math.nan

    def rep4(seq: Sequence[Any]) -> float:
        g = grams(seq, 4)
        return 1.0 - len(set(g)) / len(g) if g else 0.0

    def fn(b: ScoreBatch) -> dict[str, np.ndarray]:
        cols: dict[str, list[float]] = {"distinct_1": [], "distinct_2": [], "rep4": []}
        for text in b.texts:
            # words, or every non-space character run for texts without letters ("!!!! ????")
            ws = words(text) or text.split()
            cols["distinct_1"].append(distinct(ws, 1))
            cols["distinct_2"].append(distinct(ws, 2))
            cols["rep4"].append(rep4(ws))
        if b.output_ids is not None:
            cols["distinct_1_tok"] = [distinct(list(ids), 1) for ids in b.output_ids]
            cols["rep4_tok"] = [rep4(list(ids)) for ids in b.output_ids]
        return {k: np.asarray(v, dtype=float) for k, v in cols.items()}
    return fn


@register_scorer("script")
def script_scorer(script: str | None = None) -> ScoreFn:
    """Share of letters whose script differs from the prompt's (or the given ``script``)."""
    def fn(b: ScoreBatch) -> dict[str, np.ndarray]:
        out = np.zeros(len(b))
        for i, text in enumerate(b.texts):
            ref = script or (main_script(b.prompts[i]) if b.prompts else "LATIN")
            letters = [s for s in map(_script, text) if s]
            out[i] = sum(s != ref for s in letters) / len(letters) if letters else 0.0
        return {"script_leakage": out}
    return fn


@register_scorer("perplexity")
def perplexity_scorer(batch_size: int = 16) -> ScoreFn:
    """Perplexity of the output tokens under the unsteered model, conditioned on the prompt."""
    def fn(b: ScoreBatch) -> dict[str, np.ndarray]:
        if b.model is None or b.prompt_ids is None or b.output_ids is None:
            raise InputError("the perplexity scorer needs the model and token ids (run it inside a SteeringSweep)")
        return {"perplexity": output_perplexity(b.model, b.prompt_ids, b.output_ids, batch_size)}
    return fn


def output_perplexity(model: Any, prompt_ids: Sequence[Sequence[int]], output_ids: Sequence[Sequence[int]],
                      batch_size: int = 16) -> np.ndarray:
    """``exp(mean NLL)`` of each output given its prompt, no hooks; NaN for an empty output.

    A sweep has few distinct prompts and many outputs per prompt, so each distinct prompt is run
    once (left padded, like the decode loop) and its KV cache is forked to the rows that continue
    it; only the output tokens run per row. Logits only where they are read
    (``emoscope.models.logits``): the prompts' last position, then each output position that
    predicts a next output token; not the padding, and the last output token is not run at all.
    """
    import torch

    from emoscope.models.batching import pad_batch, pad_token_id
    from emoscope.models.kvcache import cache_kwargs, fork_cache, new_cache, output_cache
    from emoscope.models.logits import token_logprobs, unembed

    out = np.full(len(output_ids), np.nan)
    uniq: dict[tuple[int, ...], int] = {}
    which = [uniq.setdefault(tuple(int(t) for t in p), len(uniq)) for p in prompt_ids]
    order = sorted((i for i in range(len(output_ids)) if len(output_ids[i])), key=lambda i: len(output_ids[i]))
    if not order:
        return out
    pad = pad_token_id(model)
    dev = model.device
    with torch.inference_mode():
        pids, pmask, ppos, _ = pad_batch(list(uniq), pad, "left", dev)  # (prompts, width)
        pre = model.base(input_ids=pids, attention_mask=pmask, position_ids=ppos,
                         use_cache=True, **cache_kwargs(model.base, new_cache(model)))
        # (prompts, vocab): the first output token of every row, from its prompt's last position
        first = unembed(model, pre.last_hidden_state[:, -1]).float().log_softmax(-1)
        for lo in range(0, len(order), batch_size):
            rows = order[lo: lo + batch_size]
            sub = torch.as_tensor([which[i] for i in rows], device=dev)
            width = max(len(output_ids[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long, device=dev)
            omask = torch.zeros_like(ids)
            for j, i in enumerate(rows):  # right padded: the prompt cache stays flush with the outputs
                ids[j, : len(output_ids[i])] = torch.as_tensor(list(output_ids[i]), device=dev)
                omask[j, : len(output_ids[i])] = 1
            nll = torch.empty(len(rows), width, device=dev)
            nll[:, 0] = -first[sub].gather(-1, ids[:, :1])[:, 0]
            if width > 1:  # tokens 0 .. width-2 run; position k predicts token k+1 where that is real
                cache = fork_cache(output_cache(pre), sub)  # these rows' prompt caches; `pre`'s stays intact
                mask = torch.cat([pmask[sub], omask[:, :-1]], dim=1)
                pos = pmask[sub].sum(1, keepdim=True) + torch.arange(width - 1, device=dev)[None]  # (rows, width-1)
                o = model.base(input_ids=ids[:, :-1], attention_mask=mask, position_ids=pos, use_cache=True,
                               **cache_kwargs(model.base, cache))
                nll[:, 1:] = -token_logprobs(model, o.last_hidden_state, ids[:, 1:], omask[:, 1:].bool())
            for j, i in enumerate(rows):
                out[i] = float(torch.exp(nll[j, : len(output_ids[i])].mean()))
    return out


@register_scorer("classifier")
def classifier_scorer(model: str = "", batch_size: int = 32, prefix: str = "clf_") -> ScoreFn:
    """Any ``transformers`` text-classification model by local path (hub id only when online);
    one ``clf_<label>`` column of probabilities per label."""
    if not model:
        raise InputError("the classifier scorer needs a model: 'classifier:/path/to/model'")
    try:
        from transformers import pipeline

        clf = pipeline("text-classification", model=model, top_k=None, device=-1)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load text classifier {model!r} ({str(e).splitlines()[0]}); pass a local directory "
                         "or go online for a hub id") from None

    def fn(b: ScoreBatch) -> dict[str, np.ndarray]:
        res = clf([t if t.strip() else " " for t in b.texts], batch_size=batch_size, truncation=True)
        labels = sorted({d["label"] for r in res for d in r})
        cols = {f"{prefix}{re.sub(r'[^0-9a-zA-Z]+', '_', lab).lower()}": np.zeros(len(b)) for lab in labels}
        for i, r in enumerate(res):
            for d in r:
                cols[f"{prefix}{re.sub(r'[^0-9a-zA-Z]+', '_', d['label']).lower()}"][i] = d["score"]
        return cols
    return fn


def score_table(table: Any, model: Any, scorers: Sequence[Any], target: str, prompt_ids: Sequence[Sequence[int]],
                output_ids: Sequence[Sequence[int]], given: Mapping[str, Any] | None = None) -> None:
    """Add one column per score to a table of generations (``text`` and ``prompt`` columns, one
    row per output), in place; the one scoring step of every sweep (steering, patching, heads).

    ``given``: columns a sweep already computed for a scorer of the same name (the steering
    decode's ``perplexity``, ``models.rescore``), used in that scorer's place and order.
    With no scorers (benchmarks) the ``target`` column is NaN; otherwise a target no scorer
    produces is an ``InputError`` naming the columns that exist.
    """
    import numpy as np

    batch = ScoreBatch(texts=table["text"].tolist(), prompts=table["prompt"].tolist(), model=model,
                       prompt_ids=prompt_ids, output_ids=output_ids)
    given = dict(given or {})
    for spec in scorers:
        if isinstance(spec, str) and spec in given:
            table[spec] = np.asarray(given[spec], dtype=float)
            continue
        for col, values in make_scorer(spec)(batch).items():
            table[col] = np.asarray(values, dtype=float)
    if target not in table and not scorers:
        table[target] = np.nan
    if target not in table:
        cols = [c for c in table.columns if c.startswith(("nrc_", "valence", "clf_"))]
        raise InputError(f"target score {target!r} is not produced by the scorers {list(scorers)}; "
                         f"available: {', '.join(cols) or 'none'}")
