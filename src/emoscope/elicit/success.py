"""Steering success, defined: per vector, each output judged on the vector's own target score.

A sweep table (``emoscope.steering.SteeringSweep``) can hold vectors of many emotions; each is
judged on its own target column (``emoscope.steering.sweep.default_target``: ``nrc_joy`` for joy,
``nrc_fear`` for fear, ...), against the random vectors of the same norm at the same layer and
strength, scored on that same column.

**Success** of one steered output: its target change from the prompt's unsteered baseline moves
the intended way *beyond the random vectors' 95% range* (above the 97.5th percentile of the
random outputs' changes in that column, at that layer and strength; below the 2.5th for a
negative strength) **and** the output stays fluent: its regime (``emoscope.steering.regimes``,
recomputed on the own target) is neither ``repetitive collapse`` nor ``explosive``. The success
rate is the share of a vector's outputs that succeed (a Wilson interval over outputs beside it).
The **random-controlled effect** is the mean over prompts of the vector's change minus the mean
change of the random vectors on the same prompt.

>>> import pandas as pd
>>> t = pd.DataFrame({"kind": ["baseline", "vector", "random", "random"], "vector": ["baseline", "joy", "r0", "r1"],
...                   "layer": [-1, 5, 5, 5], "strength": [0.0, 1.0, 1.0, 1.0], "prompt_id": 0, "seed": 0,
...                   "nrc_joy": [0.0, 0.3, 0.0, 0.05], "n_words": 20})
>>> own_target_effects(t, {"joy": "joy"})[["vector", "effect", "success_rate"]].round(3).values.tolist()
[['joy', 0.275, 1.0]]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from emoscope.core.stats import binomial_interval
from emoscope.steering.regimes import BROKEN, classify_regimes
from emoscope.steering.sweep import default_target

__all__ = ["own_target_effects"]


def _changes(table: pd.DataFrame, col: str) -> np.ndarray:
    """Each row's ``col`` minus the baseline row's of the same prompt and seed."""
    base = table[table["kind"] == "baseline"].set_index(["prompt_id", "seed"])[col]
    ref = base.reindex(pd.MultiIndex.from_frame(table[["prompt_id", "seed"]])).to_numpy(float)
    return table[col].to_numpy(float) - ref


def own_target_effects(table: pd.DataFrame, emotion_of: Mapping[str, str], *, level: float = 0.95) -> pd.DataFrame:
    """Per (vector, layer, strength): ``target``, ``n_outputs``, ``mean_change``, ``random_change``,
    ``effect`` (random-controlled, mean over prompts), ``random_hi`` / ``random_lo`` (the random
    range), ``success_rate`` with ``success_lo`` / ``success_hi``, ``fluent`` (share not broken)."""
    rows = []
    q = (1 - level) / 2
    vec = table[(table["kind"] == "vector") & (table["strength"] != 0)]
    rnd_all = table[table["kind"] == "random"]
    for (name, layer, s), g in vec.groupby(["vector", "layer", "strength"], sort=True):
        if name not in emotion_of:
            continue
        col = default_target(emotion_of[name])
        sign = 1.0 if s > 0 else -1.0
        change = _changes(table, col)
        pos = table.index.get_indexer(g.index)
        v = change[pos]
        r_idx = rnd_all[(rnd_all["layer"] == layer) & (rnd_all["strength"] == s)].index
        r = change[table.index.get_indexer(r_idx)]
        sub = g.assign(target_change=v)
        sub[col] = g[col].to_numpy(float)
        regime = classify_regimes(sub, col).to_numpy()
        fluent = ~np.isin(regime, BROKEN)
        if r.size:
            lo, hi = np.quantile(r, [q, 1 - q])
            beyond = v > hi if sign > 0 else v < lo
            r_prompt = pd.Series(r).groupby(rnd_all.loc[r_idx, "prompt_id"].to_numpy()).mean()
            paired = r_prompt.reindex(g["prompt_id"].to_numpy()).to_numpy(float)
            per_prompt = pd.Series(sign * (v - paired)).groupby(g["prompt_id"].to_numpy()).mean()
            effect, r_mean = float(per_prompt.mean()), float(r.mean())
        else:
            lo = hi = effect = r_mean = float("nan")
            beyond = np.zeros(v.size, dtype=bool)
        ok = beyond & fluent
        iv = binomial_interval(int(ok.sum()), int(ok.size))
        rows.append({"vector": name, "emotion": emotion_of[name], "target": col, "layer": int(layer),
                     "strength": float(s), "n_outputs": int(v.size), "mean_change": float(v.mean()),
                     "random_change": r_mean, "random_lo": float(lo), "random_hi": float(hi), "effect": effect,
                     "success_rate": iv.point, "success_lo": iv.lo, "success_hi": iv.hi,
                     "fluent": float(fluent.mean())})
    return pd.DataFrame(rows)
