"""What a vector promotes: its direction read through the final norm and the unembedding.

``promoted_tokens(model, vector, layer)`` applies the model's final norm to the direction (as the
model applies it to the last residual, so the norm's per-dimension gains count) and the
unembedding, and lists the tokens with the highest and the lowest logits (a logit lens of the
vector alone). Every token is marked with its script (LATIN, CJK, CYRILLIC, ... by the Unicode
names of its letters; ``-`` for tokens without letters), so tokens outside the prompt's script
stand out. The letter-to-script rule is the one ``emoscope.steering.scorers`` uses for script
leakage (``tests/test_promote.py`` checks they agree).

>>> token_script("Hello"), token_script(" 喜び"), token_script("..."), token_script("мир")
('LATIN', 'CJK', '-', 'CYRILLIC')
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from emoscope.core.scripts import letter_script
from emoscope.errors import InputError

__all__ = ["token_script", "promoted_tokens", "logit_lens", "top_in_script"]


_letter_script = letter_script


def token_script(text: str) -> str:
    """The most common script among the letters of a token string; ``-`` when it has none."""
    counts = Counter(s for s in map(_letter_script, text) if s)
    return counts.most_common(1)[0][0] if counts else "-"


def logit_lens(model: Any, direction: Any) -> np.ndarray:
    """``unembed(final_norm(direction))`` as float64 ``(vocab,)``."""
    import torch

    v = np.array(direction, dtype=np.float64)  # a copy: torch wants a writable array
    if v.shape != (model.d_model,) or not np.all(np.isfinite(v)):
        raise InputError(f"direction must be a finite ({model.d_model},) vector, got shape {v.shape}")
    with torch.inference_mode():
        h = torch.as_tensor(v, dtype=model.dtype, device=model.device)[None, None]  # (1, 1, d)
        logits = model.unembed(model.final_norm(h))[0, 0]
    return logits.double().cpu().numpy()


def promoted_tokens(model: Any, vector: Any, layer: int, k: int = 10, *, name: str | None = None) -> list[dict[str, Any]]:
    """Top and bottom ``k`` tokens of ``vector[layer]`` through the final norm and unembedding.

    Rows: ``vector``, ``layer``, ``side`` (``top`` / ``bottom``), ``rank``, ``token_id``, ``token``
    (decoded), ``script`` and ``logit``; ``logit_z``: the logit in standard deviations over the vocabulary.

    >>> rows = promoted_tokens(model, joy, layer=15, k=5)      # doctest: +SKIP
    >>> [r["token"] for r in rows if r["side"] == "top"]       # doctest: +SKIP
    """
    if hasattr(vector, "vectors"):
        if layer not in vector.vectors:
            raise InputError(f"vector {vector.name!r} has no layer {layer} (layers: {vector.layers})")
        v, vname = vector.vectors[layer], name or vector.name
    else:
        v, vname = vector, name or "vector"
    logits = logit_lens(model, np.asarray(v))
    z = (logits - logits.mean()) / (logits.std() or 1.0)
    order = np.argsort(-logits, kind="stable")
    rows = []
    for side, ids in (("top", order[:k]), ("bottom", order[::-1][:k])):
        for rank, t in enumerate(ids.tolist(), 1):
            tok = model.tokenizer.decode([t])
            rows.append({"vector": vname, "layer": int(layer), "side": side, "rank": rank, "token_id": int(t),
                         "token": tok, "script": token_script(tok), "logit": float(logits[t]),
                         "logit_z": float(z[t])})
    return rows


def top_in_script(model: Any, vector_at_layer: Any, *, exclude: str = "LATIN", k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` highest-logit tokens whose letters are in a script other than ``exclude``
    (tokens without letters skipped): which non-Latin tokens a vector promotes."""
    logits = logit_lens(model, np.asarray(vector_at_layer))
    z = (logits - logits.mean()) / (logits.std() or 1.0)
    out = []
    for i, t in enumerate(np.argsort(-logits, kind="stable").tolist()):
        tok = model.tokenizer.decode([t])
        s = token_script(tok)
        if s not in ("-", exclude):
            out.append({"rank": len(out) + 1, "rank_overall": i + 1, "token_id": int(t), "token": tok, "script": s,
                        "logit": float(logits[t]), "logit_z": float(z[t])})
            if len(out) >= k:
                break
    return out
