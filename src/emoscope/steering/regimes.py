"""Regimes of steered outputs and the success statistics of a vector against its controls.

All thresholds live in ``RegimeThresholds`` (the one documented place; the report prints them).
Each output gets exactly one regime, tested in this order:

1. ``repetitive collapse``: ``rep4 >= max_rep4`` or ``distinct_1 <= min_distinct1``, over words
   (checked only with at least ``min_words`` words, so a short answer is not "collapse"), or the
   same over output tokens (``rep4_tok``, ``distinct_1_tok``; at least ``min_words`` tokens), so a
   loop that makes no words ("Morestestest...", "\\n\\n*\\n\\n*...") is collapse too;
2. ``explosive`` (degenerate text): ``ppl_ratio >= max_ppl_ratio`` (perplexity under the
   unsteered model over the same prompt's unsteered output) or
   ``script_leakage >= max_script_leakage``;
3. ``surgical``: fluent (neither of the above) and the target score moved from the same
   prompt's baseline by at least ``min_target_change`` in the intended direction (the sign of
   the strength; either direction for random vectors);
4. ``no effect``: everything else (fluent, target unchanged).

Success of a vector at a (layer, strength): an output succeeds when it is ``surgical`` and its
target change beats the mean change of the random vectors on the same prompt and seed
(in the intended direction). The rate gets a bootstrap interval over prompts (a cluster bootstrap: the seeds of one prompt are resampled together). The effect is
the paired difference, per output, between the vector's target change and the mean change of
the random vectors on the same prompt and seed (sign-flipped for negative strengths, so a
positive effect always means "moved the intended way more than random did"); it gets a
bootstrap interval and a one-sided Wilcoxon signed-rank test (``p_value``: the design is paired,
each prompt is its own control, so prompt-to-prompt spread does not drown the effect). The
unpaired Mann-Whitney test of vector against all random outputs is kept as ``p_unpaired``.
p-values are also reported Bonferroni-corrected over every (vector, layer, strength) cell
tested, since the best cell is chosen after the fact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from emoscope.core.stats import bonferroni, bootstrap, paired_test, unpaired_test

__all__ = ["RegimeThresholds", "REGIMES", "classify_regimes", "regime_switches", "success_table"]

REGIMES = ("no effect", "surgical", "repetitive collapse", "explosive")


@dataclass(frozen=True)
class RegimeThresholds:
    """Thresholds for :func:`classify_regimes` (see the module docstring for the rules).

    >>> RegimeThresholds().max_ppl_ratio
    3.0
    """

    max_rep4: float = 0.5  # share of repeated 4-grams at which text counts as looping
    min_distinct1: float = 0.3  # distinct-1 at or below which text counts as looping
    min_words: int = 8  # outputs with fewer words (tokens, for the token rule) are never called collapsed
    max_ppl_ratio: float = 3.0  # perplexity / baseline perplexity at which text counts as degenerate
    max_script_leakage: float = 0.1  # share of letters outside the prompt's script
    min_target_change: float = 0.03  # target-score change from baseline that counts as an effect

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def classify_regimes(df: pd.DataFrame, target: str, thresholds: RegimeThresholds | None = None) -> pd.Series:
    """One regime per row of a sweep table.

    Needs columns ``target`` (the target score), ``target_change`` (vs the prompt's baseline),
    ``strength``, ``kind``; uses ``rep4``, ``distinct_1``, ``n_words``, ``rep4_tok``,
    ``distinct_1_tok``, ``n_tokens``, ``ppl_ratio`` and ``script_leakage`` where present (a missing
    column never triggers its rule).

    >>> df = pd.DataFrame({"kind": ["vector"] * 2, "strength": [4.0, 4.0], "nrc_joy": [.2, .2],
    ...                    "target_change": [.2, .2], "rep4": [0.0, 0.9], "n_words": [20, 20]})
    >>> classify_regimes(df, "nrc_joy").tolist()
    ['surgical', 'repetitive collapse']
    """
    t = thresholds or RegimeThresholds()
    n = len(df)

    def col(name: str, fill: float) -> np.ndarray:
        return df[name].to_numpy(dtype=float, na_value=fill) if name in df else np.full(n, fill)

    long_enough = col("n_words", t.min_words) >= t.min_words
    collapse = long_enough & ((col("rep4", 0.0) >= t.max_rep4) | (col("distinct_1", 1.0) <= t.min_distinct1))
    long_tokens = col("n_tokens", t.min_words) >= t.min_words
    collapse |= long_tokens & ((col("rep4_tok", 0.0) >= t.max_rep4) | (col("distinct_1_tok", 1.0) <= t.min_distinct1))
    explosive = (col("ppl_ratio", 1.0) >= t.max_ppl_ratio) | (col("script_leakage", 0.0) >= t.max_script_leakage)
    change = col("target_change", 0.0)
    sign = np.sign(col("strength", 0.0))
    signed = np.where(df["kind"].to_numpy() == "random", np.abs(change), change * sign) if "kind" in df else np.abs(change)
    effect = signed >= t.min_target_change
    out = np.where(collapse, "repetitive collapse",
                   np.where(explosive, "explosive", np.where(effect, "surgical", "no effect")))
    return pd.Series(out, index=df.index, name="regime")


def regime_switches(df: pd.DataFrame, kind: str = "vector") -> list[str]:
    """One line per layer: from which ``|strength|`` on each broken regime (repetitive collapse,
    explosive) is the most common regime of the ``kind`` rows, and the largest ``|strength|``
    at which most outputs are still intact (no effect or surgical).

    >>> df = pd.DataFrame({"kind": "vector", "layer": 5, "strength": [0.5, 1, 2, -2],
    ...                    "regime": ["surgical", "explosive", "repetitive collapse", "repetitive collapse"]})
    >>> regime_switches(df)
    ['layer 5: intact up to |strength| 0.5; explosive from |strength| 1; repetitive collapse from |strength| 2']
    """
    t = df[df["kind"] == kind]
    out = []
    for layer, g in t.groupby("layer"):
        by = g.groupby(g["strength"].abs())["regime"]
        top = by.agg(lambda r: r.value_counts().idxmax())
        intact = by.agg(lambda r: r.isin(["no effect", "surgical"]).mean())
        parts = []
        ok = intact[intact > 0.5]
        parts.append(f"intact up to |strength| {ok.index.max():g}" if len(ok) else "broken at every strength tried")
        for reg in ("explosive", "repetitive collapse"):
            hit = top[top == reg]
            parts.append(f"{reg} from |strength| {hit.index.min():g}" if len(hit) else f"never mostly {reg}")
        out.append(f"layer {int(layer)}: " + "; ".join(parts))
    return out


def success_table(df: pd.DataFrame, target: str, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (vector, layer, strength != 0): the vector's target change against random vectors.

    Columns: ``n``, ``mean_change`` (vector), ``mean_change_random``, ``effect`` (mean paired
    difference, intended direction positive) with ``effect_lo``/``effect_hi``, ``p_value``
    (Wilcoxon signed-rank on the paired differences, one-sided), ``p_unpaired`` (Mann-Whitney),
    ``p_bonferroni``, ``success_rate`` with ``success_lo``/``success_hi``, and the share of each
    regime among the vector's outputs.
    """
    vec = df[(df["kind"] == "vector") & (df["strength"] != 0)]
    rnd = df[df["kind"] == "random"]
    # mean random change per (layer, strength, prompt, seed): the paired control of each output
    rmean = rnd.groupby(["layer", "strength", "prompt_id", "seed"])["target_change"].mean()
    rows = []
    for (name, layer, s), g in vec.groupby(["vector", "layer", "strength"], sort=True):
        sign = 1.0 if s > 0 else -1.0
        r = rnd[(rnd["layer"] == layer) & (rnd["strength"] == s)]["target_change"].to_numpy(float)
        v = g["target_change"].to_numpy(float)
        keys = list(zip(g["layer"], g["strength"], g["prompt_id"], g["seed"], strict=True))
        paired = np.array([rmean.get(k, np.nan) for k in keys], dtype=float)
        beats = sign * (v - np.nan_to_num(paired, nan=0.0)) > 0
        ok = (g["regime"].to_numpy() == "surgical") & beats
        units = g["prompt_id"].to_numpy()  # intervals resample prompts (seeds of one prompt move together)
        row = {"vector": name, "layer": int(layer), "strength": float(s), "n": len(v),
               "mean_change": float(v.mean()), "mean_change_random": float(r.mean()) if len(r) else np.nan}
        if len(r):
            diff = sign * (v - np.nan_to_num(paired, nan=float(r.mean())))  # (n,) paired, intended way > 0
            row["effect"] = float(diff.mean())
            _, row["effect_lo"], row["effect_hi"] = bootstrap(diff, units, n_boot=n_boot, seed=seed)
            row["p_value"] = paired_test(diff, "greater")
            row["p_unpaired"] = unpaired_test(v, r, "greater" if sign > 0 else "less")
        else:
            row["effect"] = row["effect_lo"] = row["effect_hi"] = row["p_value"] = row["p_unpaired"] = np.nan
        row["success_rate"] = float(ok.mean())
        _, row["success_lo"], row["success_hi"] = bootstrap(ok.astype(float), units, n_boot=n_boot, seed=seed)
        for reg in REGIMES:
            row[f"share_{reg.replace(' ', '_')}"] = float((g["regime"] == reg).mean())
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out["p_bonferroni"] = bonferroni(out["p_value"].to_numpy(float))
    return out
