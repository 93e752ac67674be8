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
(in the intended direction). The rate gets a bootstrap interval over prompts (a cluster
bootstrap: the seeds of one prompt are resampled together). The effect is the paired
difference between the vector's target change and the mean change of the random vectors on the
same prompt and seed (sign-flipped for negative strengths, so a positive effect always means
"moved the intended way more than random did"), averaged over the seeds of each prompt: the unit
is the prompt. It gets a bootstrap interval over prompts and a one-sided Wilcoxon signed-rank
test over prompts (``p_value``: the design is paired, each prompt is its own control, so
prompt-to-prompt spread does not drown the effect). The unpaired Mann-Whitney test of vector
against all random outputs is kept as ``p_unpaired``. A second, coarser number: the vector's
``rank`` among the k random vectors' mean changes in the cell and ``rank_p = rank / (k + 1)``,
which can never go below ``1 / (k + 1)`` (``core.stats.min_pvalue``), however strong the effect.

Random vectors come in two kinds (``random_kind`` column of the sweep table): ``isotropic`` and
``covariance`` (matched to the covariance of neutral activations). The unsuffixed columns are
against isotropic ones when the sweep ran them (the conventional control), the ``_cov`` columns
against covariance-matched ones. ``p_bonferroni`` corrects ``p_value`` over every cell tried; a
finding does not use it: it chooses its cell on half the prompts and reports the other half
(``emoscope.steering.findings``).

**Where steering breaks text** (``regime_shares``, ``regime_switches``, the pilot of
``strengths: auto``) is read on the prompts whose unsteered output is intact
(``intact_at_baseline``). A small model loops on some prompts with no steering at all (gemma3-270m
repeats itself on 2 of the 8 default prompts at 32 tokens); counting those outputs as "broken by
steering" calls every strength broken, down to the smallest. The search's fluency filter counts the
same way (``steering.findings``). The rows themselves keep their regime, and the ``fluency`` control
of a chosen cell and every statistic read all prompts as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from emoscope.core.stats import (
    bonferroni,
    bootstrap,
    paired_test,
    permutation_pvalue,
    unpaired_test,
)

__all__ = ["RegimeThresholds", "REGIMES", "BROKEN", "MIN_MEAN_TOKENS", "RANDOM_KINDS", "classify_regimes", "regime_switches",
           "regime_shares", "intact_at_baseline", "success_table",
           "random_rows", "judged_kind", "paired_effects", "prompt_effects"]

REGIMES = ("no effect", "surgical", "repetitive collapse", "explosive")
#: the regimes that count as broken text (the fluency filter of a search, the fluency control)
BROKEN = ("repetitive collapse", "explosive")
#: the multi-token control: a cell's outputs must average at least this many generated tokens
MIN_MEAN_TOKENS = 2.0


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


def intact_at_baseline(df: pd.DataFrame, rows: pd.DataFrame | None = None) -> pd.Series:
    """Per row of ``rows`` (default: ``df`` itself): whether the unsteered output of its prompt (and
    seed) in ``df`` is intact, i.e. whether the row can show steering breaking text. All true when
    ``df`` has no baseline rows, or when every unsteered output is broken (then nothing is left to
    compare, and every prompt counts).

    >>> df = pd.DataFrame({"kind": ["baseline", "baseline", "vector", "vector"], "prompt_id": [0, 1, 0, 1],
    ...                    "seed": 0, "regime": ["no effect", "repetitive collapse", "explosive", "explosive"]})
    >>> intact_at_baseline(df).tolist(), intact_at_baseline(df, df.iloc[[3]]).tolist()
    ([True, False, True, False], [False])
    """
    rows = df if rows is None else rows
    every = pd.Series(True, index=rows.index)
    if "kind" not in df or "prompt_id" not in df or "regime" not in df:
        return every
    keys = ["prompt_id", "seed"] if "seed" in df and "seed" in rows else ["prompt_id"]
    base = df[df["kind"] == "baseline"]
    good = base.loc[~base["regime"].isin(BROKEN), keys]
    if not len(base) or not len(good):
        return every
    return pd.Series(pd.MultiIndex.from_frame(rows[keys]).isin(pd.MultiIndex.from_frame(good)), index=rows.index)


def regime_shares(df: pd.DataFrame, kind: str = "vector") -> pd.DataFrame:
    """Per (``layer``, ``strength``) of the ``kind`` rows: ``n`` outputs counted and the share of each
    regime, on the prompts whose unsteered output is intact (``intact_at_baseline``).

    >>> df = pd.DataFrame({"kind": ["baseline", "baseline", "vector", "vector"], "layer": [-1, -1, 3, 3],
    ...                    "strength": [0.0, 0.0, 1.0, 1.0], "prompt_id": [0, 1, 0, 1], "seed": 0,
    ...                    "regime": ["no effect", "repetitive collapse", "surgical", "repetitive collapse"]})
    >>> regime_shares(df).to_dict("records")
    [{'layer': 3, 'strength': 1.0, 'n': 1, 'explosive': 0.0, 'no effect': 0.0, 'repetitive collapse': 0.0, 'surgical': 1.0}]
    """
    t = df[(df["kind"] == kind) & intact_at_baseline(df)]
    counts = t.groupby(["layer", "strength"])["regime"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=sorted(set(counts.columns) | set(REGIMES)), fill_value=0)
    n = counts.sum(axis=1)
    shares = counts.div(n.where(n > 0, 1), axis=0).astype(float)
    shares.insert(0, "n", n.astype(int))
    shares.columns.name = None
    return shares.reset_index()


def regime_switches(df: pd.DataFrame, kind: str = "vector") -> list[str]:
    """One line per layer: from which ``|strength|`` on each broken regime (repetitive collapse,
    explosive) is the most common regime of the ``kind`` rows, and the largest ``|strength|``
    at which most outputs are still intact (no effect or surgical); on the prompts whose unsteered
    output is intact (``intact_at_baseline``; the line says how many were left out).

    >>> df = pd.DataFrame({"kind": "vector", "layer": 5, "strength": [0.5, 1, 2, -2],
    ...                    "regime": ["surgical", "explosive", "repetitive collapse", "repetitive collapse"]})
    >>> regime_switches(df)
    ['layer 5: intact up to |strength| 0.5; explosive from |strength| 1; repetitive collapse from |strength| 2']
    """
    keep = intact_at_baseline(df)
    t = df[(df["kind"] == kind) & keep]
    left_out = ""
    if not keep.all() and "prompt_id" in df:
        base = df[df["kind"] == "baseline"]
        n_out = int((~keep[base.index]).sum())
        left_out = (f" (on {len(base) - n_out} of {len(base)} prompts: {n_out} left out, their unsteered output "
                    "is already broken)")
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
        out.append(f"layer {int(layer)}: " + "; ".join(parts) + left_out)
    return out


RANDOM_KINDS = ("isotropic", "covariance")
_CELL = ["layer", "strength", "prompt_id", "seed"]


def random_rows(df: pd.DataFrame, kind: str | None = None, vector: str | None = None) -> pd.DataFrame:
    """The random-vector rows of a sweep table, of one ``random_kind`` (a table without that
    column is all ``isotropic``) and belonging to ``vector`` (in raw units every vector draws its
    own controls, named ``random-k:vector``; the others are shared).

    >>> df = pd.DataFrame({"kind": ["random", "random", "vector"], "vector": ["random-0", "random-cov-0", "joy"],
    ...                    "random_kind": ["isotropic", "covariance", ""]})
    >>> random_rows(df, "covariance").vector.tolist()
    ['random-cov-0']
    """
    r = df[df["kind"] == "random"]
    if kind is not None:
        rk = r["random_kind"].fillna("isotropic") if "random_kind" in r else pd.Series("isotropic", index=r.index)
        r = r[rk.to_numpy() == kind]
    if vector is not None and len(r):
        names = r["vector"].astype(str)
        r = r[(~names.str.contains(":", regex=False) | names.str.endswith(f":{vector}")).to_numpy()]
    return r


def judged_kind(df: pd.DataFrame) -> str | None:
    """The random kind a vector is judged against: ``isotropic`` when the table has isotropic
    random rows (the kind every published control uses, so effects compare across papers), else
    ``covariance``, else ``None`` (no random control ran)."""
    return next((k for k in RANDOM_KINDS if len(random_rows(df, k))), None)


def paired_effects(df: pd.DataFrame, vector: str | None = None, against: str | None = "isotropic",
                   random_names: Sequence[str] | None = None) -> pd.DataFrame:
    """The steered vector rows (strength != 0) with two columns added: ``paired_random``, the mean
    target change of the random vectors of kind ``against`` (only ``random_names`` when given) on
    the same layer, strength, prompt and seed, and ``effect = sign(strength) * (target_change -
    paired_random)`` (positive: moved the intended way more than random did). ``against=None``:
    no random control, ``paired_random`` is 0 and the effect is the signed change from baseline."""
    vec = df[(df["kind"] == "vector") & (df["strength"] != 0)]
    if vector is not None:
        vec = vec[vec["vector"] == vector]
    parts = []
    for name, g in vec.groupby("vector", sort=False):
        if against is None:
            paired = np.zeros(len(g))
        else:
            r = random_rows(df, against, str(name))
            if random_names is not None:
                r = r[r["vector"].isin(list(random_names))]
            rmean = r.groupby(_CELL)["target_change"].mean()
            paired = rmean.reindex(pd.MultiIndex.from_frame(g[_CELL])).to_numpy(float)
        change = g["target_change"].to_numpy(float)
        parts.append(g.assign(paired_random=paired, effect=np.sign(g["strength"].to_numpy(float)) * (change - paired)))
    if not parts:
        return vec.assign(paired_random=np.zeros(0), effect=np.zeros(0))
    return pd.concat(parts)


def prompt_effects(df: pd.DataFrame, vector: str, against: str | None = "isotropic",
                   random_names: Sequence[str] | None = None) -> pd.DataFrame:
    """``(n_prompts, n_cells)``: the paired effect (:func:`paired_effects`) of ``vector`` per prompt
    (mean over its seeds, so the unit is the prompt) and (layer, strength) cell; NaN where a prompt
    has no value. Columns are a ``(layer, strength)`` MultiIndex, rows ``prompt_id``."""
    e = paired_effects(df, vector, against, random_names)
    return e.groupby(["prompt_id", "layer", "strength"])["effect"].mean().unstack(["layer", "strength"])


def success_table(df: pd.DataFrame, target: str, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (vector, layer, strength != 0): the vector's target change against random vectors.

    Columns: ``n`` (prompts), ``n_outputs``, ``mean_change`` (vector), ``random_kind`` (the kind
    the unsuffixed columns are against, :func:`judged_kind`), ``mean_change_random``, ``effect``
    (mean over prompts of the paired difference, intended direction positive) with
    ``effect_lo``/``effect_hi`` (bootstrap over prompts), ``p_value`` (one-sided Wilcoxon
    signed-rank over prompts: per-prompt paired test of vector change minus mean random change,
    unit: prompt), ``p_unpaired`` (Mann-Whitney, outputs), ``n_random`` (k, random vectors of that
    kind), ``rank`` (1 + how many random vectors' mean change, intended way, reach the vector's)
    and ``rank_p = rank / (k + 1)`` (a rank among k draws cannot go below ``1 / (k + 1)``), the
    same against covariance-matched random vectors with the suffix ``_cov`` when the table has
    both kinds, ``p_bonferroni`` (over every cell; for reference: a finding reports its best cell
    held out instead), ``success_rate`` with ``success_lo``/``success_hi``, and the share of each
    regime among the vector's outputs.
    """
    vec = df[(df["kind"] == "vector") & (df["strength"] != 0)]
    kinds = [k for k in RANDOM_KINDS if len(random_rows(df, k))]
    main = kinds[0] if kinds else None
    suffix = {k: ("" if k == main else "_cov") for k in kinds}
    effects = {k: paired_effects(df, against=k) for k in kinds}
    cells: dict[tuple[str, str], dict[tuple[int, float], pd.DataFrame]] = {}  # (kind, vector) -> cell -> rows

    def random_cell(kind: str, name: str, layer: int, s: float) -> pd.DataFrame:
        if (kind, name) not in cells:
            cells[kind, name] = dict(tuple(random_rows(df, kind, name).groupby(["layer", "strength"])))
        return cells[kind, name].get((layer, s), df.iloc[:0])

    rows = []
    for (name, layer, s), g in vec.groupby(["vector", "layer", "strength"], sort=True):
        sign = 1.0 if s > 0 else -1.0
        v = g["target_change"].to_numpy(float)
        units = g["prompt_id"].to_numpy()  # intervals resample prompts (seeds of one prompt move together)
        row = {"vector": name, "layer": int(layer), "strength": float(s), "n": int(g["prompt_id"].nunique()),
               "n_outputs": len(v), "mean_change": float(v.mean()), "random_kind": main or ""}
        paired = np.full(len(g), np.nan)
        if main is None:
            row.update({c: np.nan for c in ("mean_change_random", "effect", "effect_lo", "effect_hi", "p_value",
                                            "p_unpaired", "rank", "rank_p")})
            row["n_random"] = 0
        for k in kinds:
            sfx = suffix[k]
            e = effects[k].loc[g.index]
            if k == main:
                paired = e["paired_random"].to_numpy(float)
            r = random_cell(k, str(name), layer, s)
            per_prompt = e.groupby("prompt_id")["effect"].mean().to_numpy(float)  # (prompts,)
            row[f"mean_change_random{sfx}"] = float(r["target_change"].mean()) if len(r) else np.nan
            row[f"effect{sfx}"], row[f"effect_lo{sfx}"], row[f"effect_hi{sfx}"] = bootstrap(
                per_prompt, n_boot=n_boot, seed=seed)
            row[f"p_value{sfx}"] = paired_test(per_prompt, "greater")
            row[f"p_unpaired{sfx}"] = unpaired_test(v, r["target_change"].to_numpy(float),
                                                    "greater" if sign > 0 else "less")
            per_random = sign * r.groupby("vector")["target_change"].mean().to_numpy(float)  # (k,)
            mine = sign * float(v.mean())
            row[f"n_random{sfx}"] = int(per_random.size)
            row[f"rank{sfx}"] = 1 + int(np.sum(per_random >= mine - 1e-12))
            row[f"rank_p{sfx}"] = permutation_pvalue(mine, per_random, "greater")
        beats = sign * (v - np.nan_to_num(paired, nan=0.0)) > 0
        ok = (g["regime"].to_numpy() == "surgical") & beats
        row["success_rate"] = float(ok.mean())
        _, row["success_lo"], row["success_hi"] = bootstrap(ok.astype(float), units, n_boot=n_boot, seed=seed)
        for reg in REGIMES:
            row[f"share_{reg.replace(' ', '_')}"] = float((g["regime"] == reg).mean())
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out["p_bonferroni"] = bonferroni(out["p_value"].to_numpy(float))
    return out
