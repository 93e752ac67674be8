"""Cross-lingual leakage under steering: how much of a steered output leaves the prompt's script.

Per output of a steering sweep (``emoscope.steering.SteeringSweep``):

- ``char_share``: share of letters outside the prompt's main script (the steering ``script``
  scorer, ``script_leakage``);
- ``token_share``: share of the output tokens that have letters whose main script
  (``emoscope.vectors.promote.token_script``) is not the prompt's;
- ``scripts``: the scripts of those tokens with their counts.

``leakage_table`` summarises by kind (``vector``; ``negated``: the vector at negative strength;
``random``: random vectors of the same norm, both signs) and ``|strength|``, with the random
vectors' 95% range beside the vector's mean and the share of broken outputs (``broken``:
repetitive collapse or explosive).

>>> import pandas as pd
>>> t = pd.DataFrame({"kind": ["vector", "vector", "random"], "strength": [1.0, -1.0, 1.0], "vector": ["joy"] * 2 + ["r0"],
...                   "char_share": [0.5, 0.0, 0.0], "token_share": [0.4, 0.0, 0.1], "any_leak": [True, False, True]})
>>> leakage_table(t)[["kind", "abs_strength", "token_share"]].values.tolist()
[['negated', 1.0, 0.0], ['random', 1.0, 0.1], ['vector', 1.0, 0.4]]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from emoscope.steering.scorers import ScoreBatch, main_script, make_scorer
from emoscope.vectors.promote import token_script

__all__ = ["score_leakage", "leakage_table", "script_counts"]


def score_leakage(model: Any, table: pd.DataFrame, tokens: Sequence[Sequence[int]], prompts: Sequence[str]) -> pd.DataFrame:
    """Add ``char_share``, ``token_share``, ``n_letter_tokens``, ``any_leak`` and ``scripts`` (``"CJK:3 CYRILLIC:1"``)
    to a sweep table (one row per output; ``tokens[i]`` its new ids, ``prompts[i]`` its prompt as written)."""
    out = table.copy()
    texts = out["text"].fillna("").astype(str).tolist()
    out["char_share"] = make_scorer("script")(ScoreBatch(texts, list(prompts)))["script_leakage"]
    cache: dict[int, str] = {}
    shares, n_letter, scripts = [], [], []
    for ids, prompt in zip(tokens, prompts, strict=True):
        ref = main_script(prompt)
        marks = []
        for t in ids:
            if t not in cache:
                cache[t] = token_script(model.tokenizer.decode([t]))
            marks.append(cache[t])
        lettered = [s for s in marks if s != "-"]
        away = Counter(s for s in lettered if s != ref)
        n_letter.append(len(lettered))
        shares.append(sum(away.values()) / len(lettered) if lettered else 0.0)
        scripts.append(" ".join(f"{s}:{c}" for s, c in sorted(away.items())))
    out["token_share"] = shares
    out["n_letter_tokens"] = n_letter
    out["scripts"] = scripts
    out["any_leak"] = out["token_share"].to_numpy(float) > 0
    return out


def _kind(row_kind: str, strength: float) -> str:
    if row_kind == "vector":
        return "vector" if strength > 0 else "negated"
    return row_kind


def leakage_table(table: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean ``token_share`` and ``char_share`` (and the share of outputs with any leaked token) per kind
    and ``|strength|``; for random rows also the spread of the per-vector means (``lo``/``hi``: the
    ``level`` range over random vectors)."""
    t = table[table["kind"].isin(["vector", "random", "baseline"])].copy()
    t["kind"] = [_kind(k, s) for k, s in zip(t["kind"], t["strength"], strict=True)]
    t["abs_strength"] = t["strength"].abs()
    q = (1 - level) / 2
    rows = []
    for (kind, s), g in t.groupby(["kind", "abs_strength"], sort=True):
        row = {"kind": kind, "abs_strength": float(s), "n_outputs": len(g),
               "token_share": float(g["token_share"].mean()), "char_share": float(g["char_share"].mean()),
               "any_leak": float(g["any_leak"].mean())}
        if "regime" in g:  # leakage inside broken text (a loop of one foreign token) is not fluent leakage
            row["broken"] = float(g["regime"].isin(["repetitive collapse", "explosive"]).mean())
        if kind == "random":
            per = g.groupby("vector")["token_share"].mean().to_numpy(float)
            row["token_share_lo"], row["token_share_hi"] = (float(x) for x in np.quantile(per, [q, 1 - q]))
            per_c = g.groupby("vector")["char_share"].mean().to_numpy(float)
            row["char_share_lo"], row["char_share_hi"] = (float(x) for x in np.quantile(per_c, [q, 1 - q]))
        rows.append(row)
    return pd.DataFrame(rows)


def script_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Leaked tokens per script, kind and ``|strength|`` (from the ``scripts`` column)."""
    rows: dict[tuple[str, float, str], int] = Counter()
    for k, s, sc in zip(table["kind"], table["strength"], table["scripts"].fillna(""), strict=True):
        for part in str(sc).split():
            name, _, c = part.rpartition(":")
            rows[(_kind(k, s), abs(float(s)), name)] += int(c)
    return pd.DataFrame([{"kind": k, "abs_strength": s, "script": n, "tokens": c} for (k, s, n), c in sorted(rows.items())])
