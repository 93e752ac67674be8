"""Concept vectors for injection, and random directions to inject as a control.

A concept vector at layer ``l`` is ``resid[l]`` at the last token of the chat-formatted prompt
"Tell me about {word}." minus the mean of the same quantity over a list of baseline words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emoscope.errors import InputError
from emoscope.vectors import ConceptVector

__all__ = ["CONCEPT_PROMPT", "load_words", "concept_vectors", "random_vectors"]

CONCEPT_PROMPT = "Tell me about {word}."


def load_words(words: Any, default: str) -> list[Any]:
    """Word entries from ``"default"`` (the built-in list ``default``), a built-in name, a
    file path, or a list of strings / ``WordEntry`` objects. Plain strings found in the
    built-in list keep its kind and synonyms (used to grade free text).

    >>> load_words(["ocean", "kettle"], "concepts")[0].synonyms[:2]
    ('sea', 'seas')
    """
    from emoscope.datasets import WordEntry, load_word_list

    if words is None or (isinstance(words, str) and words == "default"):
        return load_word_list(default)
    if isinstance(words, str):
        return load_word_list(words)
    known = {w.word.lower(): w for w in load_word_list(default)}
    out = [w if isinstance(w, WordEntry) else known.get(str(w).strip().lower(), WordEntry(str(w).strip()))
           for w in words]
    if not out or any(not w.word for w in out):
        raise InputError("word list is empty or has an empty word")
    return out


def concept_vectors(model: Any, concepts: Any = "default", baseline: Any = "default", *,
                    layers: Any = "all", prompt: str = CONCEPT_PROMPT,
                    batch_size: int = 32, progress: bool = False) -> list[ConceptVector]:
    """One ``ConceptVector`` per concept word: last-token ``resid[l]`` of the chat-formatted
    ``prompt`` minus its mean over the baseline words, at every requested layer.

    ``concepts`` / ``baseline``: ``"default"`` (built-in ``concepts`` / ``baseline-words``), a
    word-list name or path, or a list of words.

    >>> vecs = concept_vectors(model, ["ocean", "bread"], ["table", "chair"])   # doctest: +SKIP
    >>> vecs[0].name, vecs[0].layers[:2]                                        # doctest: +SKIP
    ('ocean', [0, 1])
    """
    from emoscope.activations import extract
    from emoscope.introspection.trials import adds_special_tokens

    if "{word}" not in prompt:
        raise InputError(f"concept prompt {prompt!r} must contain '{{word}}'")
    cwords = load_words(concepts, "concepts")
    bwords = load_words(baseline, "baseline-words")
    overlap = {w.word.lower() for w in cwords} & {w.word.lower() for w in bwords}
    if overlap:
        raise InputError(f"concept and baseline lists share {sorted(overlap)}; remove them from one list")
    texts = [model.chat(prompt.format(word=w.word)) for w in [*cwords, *bwords]]
    acts = extract(model, texts, layers=layers, position="last", cache=False, progress=progress,
                   batch_size=batch_size, add_special_tokens=adds_special_tokens(model.tokenizer, texts[0]))
    n = len(cwords)
    out = []
    for i, w in enumerate(cwords):
        vecs = {layer: acts.get(layer)[i] - acts.get(layer)[n:].mean(0) for layer in acts.layers}
        out.append(ConceptVector(w.word, vecs, {
            "method": "last token minus baseline mean", "prompt": prompt, "kind": w.kind,
            "synonyms": list(w.synonyms), "n_baseline": len(bwords), "model": getattr(model, "name", ""),
        }))
    return out


def random_vectors(d: int, layers: Sequence[int], k: int, *, seed: Any = 0,
                   cov: Mapping[int, np.ndarray] | None = None, prefix: str = "random") -> list[ConceptVector]:
    """``k`` random directions per layer (unit norm; the sweep scales them exactly like the
    concept vectors, so their norms match), seeded: isotropic Gaussian draws, or
    covariance-matched ones when ``cov`` maps each layer to an activation covariance (see
    ``emoscope.core.directions``). ``seed``: an int, or a tuple of ints (a seed sequence, so
    two kinds drawn for one run get independent streams). Named ``{prefix}:{j}``.

    >>> r = random_vectors(8, [0, 3], 2, seed=1)
    >>> [v.name for v in r], round(r[0].norms()[3], 6)
    (['random:0', 'random:1'], 1.0)
    """
    from emoscope.core.directions import random_layer_directions

    method = "isotropic gaussian" if cov is None else "covariance-matched gaussian (neutral-corpus covariance)"
    out = []
    for j, draw in enumerate(random_layer_directions(d, layers, k, seed, cov=cov)):
        vecs = {layer: v.astype(np.float32) for layer, v in draw.items()}
        out.append(ConceptVector(f"{prefix}:{j}", vecs, {"method": method,
                                                          "seed": list(seed) if isinstance(seed, tuple) else seed}))
    return out
