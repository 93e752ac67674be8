"""Per-cell effects of a patch sweep, computed with the steering sweep's own statistics.

A patch sweep's table is read as a steering sweep (``steering_view``): the ``patch`` rows are the
"vector" rows (named after the source class), the random patches are "random" rows of their
``random_kind`` (``isotropic`` ``random-k``, covariance-matched ``random-cov-k``), and the (layer, positions) cell is carried in the ``layer`` column as its index in
``cells_of`` (at strength 1, the direction the source should move the target). The paired effects,
the success table, the held-out choice and the seed spread of ``emoscope.steering`` then apply
unchanged: per prompt, effect = the patch's target change minus the mean target change of the
random patches on the same prompt and cell; the unit is the prompt. The unsuffixed columns are
against the isotropic patches when they ran (else the covariance-matched ones), the ``_cov``
columns against the covariance-matched ones when both ran (``steering.regimes.success_table``).

The neutral-source control is the same pairing against the ``neutral`` row of the prompt and cell
(``neutral_effects``). Every statistic also runs on ``step1_change`` (the next-token view, see
``emoscope.patching.sweep``), so ``cell_table`` puts the multi-token effect beside the step-1 one.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from emoscope.core.stats import bootstrap, paired_test
from emoscope.steering.regimes import BROKEN, judged_kind, random_rows, success_table

__all__ = ["cells_of", "steering_view", "neutral_effects", "cell_table", "report_effects", "CELL_COLUMNS"]


def cells_of(table: pd.DataFrame) -> pd.DataFrame:
    """The sweep's cells in order: columns ``cell`` (0..), ``layer``, ``positions``."""
    t = table.loc[table["kind"] != "baseline", ["layer", "positions"]]
    pairs = pd.DataFrame({"layer": t["layer"].astype(int).to_numpy(),
                          "positions": t["positions"].astype(str).to_numpy()}).drop_duplicates()
    return pd.DataFrame({"cell": range(len(pairs)), "layer": pairs["layer"].to_numpy(),
                         "positions": pairs["positions"].to_numpy()})


def _cell_ids(table: pd.DataFrame) -> np.ndarray:
    cells = cells_of(table)
    index = pd.MultiIndex.from_arrays([cells["layer"], cells["positions"]])
    rows = pd.MultiIndex.from_arrays([table["layer"].astype(int), table["positions"].astype(str)])
    return index.get_indexer(rows)


def steering_view(table: pd.DataFrame, value: str = "target_change") -> pd.DataFrame:
    """The baseline, patch and random rows in the schema of a steering sweep table (see the module
    doc), with ``target_change`` taken from column ``value``."""
    keep = table["kind"].isin(["baseline", "patch", "random"]).to_numpy()
    cell = _cell_ids(table)[keep]
    v = table[keep].copy()
    v["layer"] = np.where(v["kind"].to_numpy() == "baseline", -1, cell)
    v["kind"] = v["kind"].replace({"patch": "vector"})
    v["vector"] = v["source"].astype(str)
    rk = v["random_kind"].fillna("").astype(str).to_numpy() if "random_kind" in v else np.full(len(v), "")
    v["random_kind"] = np.where(v["kind"].to_numpy() == "random", np.where(rk == "", "isotropic", rk), "")
    v["strength"] = np.where(v["kind"].to_numpy() == "baseline", 0.0, 1.0)
    v["target_change"] = table.loc[keep, value].to_numpy(float)
    if "regime" not in v:
        v["regime"] = "no effect"
    return v


def neutral_effects(table: pd.DataFrame, value: str = "target_change") -> pd.DataFrame:
    """``(prompts, cells)``: the patch row's ``value`` minus the neutral row's, per prompt and cell
    (empty when no neutral rows ran)."""
    cell = _cell_ids(table)
    t = table.assign(cell=cell)
    pat = t[t["kind"] == "patch"].groupby(["prompt_id", "cell"])[value].mean().unstack("cell")
    neu = t[t["kind"] == "neutral"].groupby(["prompt_id", "cell"])[value].mean().unstack("cell")
    if not len(neu):
        return pat.iloc[:0]
    return pat - neu.reindex_like(pat)


CELL_COLUMNS = ["layer", "positions", "n", "n_random", "mean_patched", "dropped_tokens", "delta_norm",
                "mean_change", "mean_change_neutral", "mean_change_random", "effect", "effect_lo", "effect_hi",
                "p_value", "rank", "rank_p", "effect_vs_neutral", "p_vs_neutral",
                "step1_change", "step1_change_neutral", "step1_change_random", "step1_effect", "step1_effect_lo",
                "step1_effect_hi", "p_step1", "views", "success_rate", "share_surgical", "share_broken",
                "median_ppl_ratio", "mean_tokens", "random_kind", "n_random_cov", "mean_change_random_cov",
                "effect_cov", "effect_lo_cov", "effect_hi_cov", "p_value_cov", "rank_p_cov"]


def _success(table: pd.DataFrame, value: str, n_boot: int, seed: int) -> pd.DataFrame:
    view = steering_view(table, value)
    if not np.isfinite(view["target_change"].to_numpy(float)).any():
        return pd.DataFrame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = success_table(view, "target_score", n_boot=n_boot, seed=seed)
    return s.set_index("layer") if len(s) else s


def _direction(row: dict, prefix: str) -> str:
    """``up`` / ``down`` when the view's interval excludes 0, ``none`` when it contains 0, ``""``
    when the view was not measured."""
    lo, hi = row.get(f"{prefix}effect_lo", np.nan), row.get(f"{prefix}effect_hi", np.nan)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return "up" if lo > 0 else "down" if hi < 0 else "none"


def compare_views(multi: str, step1: str) -> str:
    """How the multi-token effect and the step-1 view relate, each judged by its interval:
    ``agree`` (both move the same way), ``disagree`` (opposite ways), ``step-1 only`` (the
    next-token view moves, the text does not: the case a one-step analysis would misreport),
    ``multi-token only``, ``neither``; ``""`` when a view is missing.

    >>> compare_views("up", "up"), compare_views("none", "up"), compare_views("up", "down")
    ('agree', 'step-1 only', 'disagree')
    """
    if not multi or not step1:
        return ""
    if multi == step1:
        return "neither" if multi == "none" else "agree"
    if "none" in (multi, step1):
        return "step-1 only" if multi == "none" else "multi-token only"
    return "disagree"


def cell_table(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (layer, positions) cell: the multi-token effect (target change over the random
    patches, interval, one-sided Wilcoxon over prompts, rank among the random draws), the same
    against the neutral source, and the step-1 view with the same statistics (``step1_*``);
    ``views`` compares the two views by their intervals (``compare_views``)."""
    cells = cells_of(table)
    cell = _cell_ids(table)
    t = table.assign(cell=cell)
    multi = _success(table, "target_change", n_boot, seed)
    step = _success(table, "step1_change", n_boot, seed)
    neu_e = neutral_effects(table, "target_change")
    main = judged_kind(table) or ""
    rows = []
    for c in cells.itertuples():
        g = t[t["cell"] == c.cell]
        pat, neu = (g[g["kind"] == k] for k in ("patch", "neutral"))
        rnd = random_rows(g, main) if main else g.iloc[:0]
        row: dict = {"layer": int(c.layer), "positions": c.positions, "n": int(pat["prompt_id"].nunique()),
                     "n_random": int(rnd["source"].nunique()),
                     "mean_patched": float(pat["n_patched"].mean()),
                     "dropped_tokens": float((pat["unpatched_target"] + pat["unused_source"]).mean()),
                     "delta_norm": float(pat["delta_norm"].mean()),
                     "mean_change": float(pat["target_change"].mean()),
                     "mean_change_neutral": float(neu["target_change"].mean()) if len(neu) else np.nan,
                     "mean_change_random": float(rnd["target_change"].mean()) if len(rnd) else np.nan}
        m = multi.loc[c.cell] if len(multi) and c.cell in multi.index else None
        for col in ("effect", "effect_lo", "effect_hi", "p_value", "rank", "rank_p", "success_rate", "n_random_cov",
                    "mean_change_random_cov", "effect_cov", "effect_lo_cov", "effect_hi_cov", "p_value_cov",
                    "rank_p_cov"):
            row[col] = float(m[col]) if m is not None and col in m else np.nan
        row["random_kind"] = main
        if c.cell in neu_e.columns:
            d = neu_e[c.cell].to_numpy(float)
            row["effect_vs_neutral"] = float(np.nanmean(d)) if np.isfinite(d).any() else np.nan
            row["p_vs_neutral"] = paired_test(d, "greater")
        else:
            row["effect_vs_neutral"] = row["p_vs_neutral"] = np.nan
        row["step1_change"] = float(pat["step1_change"].mean())
        row["step1_change_neutral"] = float(neu["step1_change"].mean()) if len(neu) else np.nan
        row["step1_change_random"] = float(rnd["step1_change"].mean()) if len(rnd) else np.nan
        s = step.loc[c.cell] if len(step) and c.cell in step.index else None
        for src, dst in (("effect", "step1_effect"), ("effect_lo", "step1_effect_lo"), ("effect_hi", "step1_effect_hi"),
                         ("p_value", "p_step1")):
            row[dst] = float(s[src]) if s is not None and src in s else np.nan
        row["views"] = compare_views(_direction(row, ""), _direction(row, "step1_"))
        row["share_surgical"] = float((pat["regime"] == "surgical").mean()) if len(pat) else np.nan
        row["share_broken"] = float(pat["regime"].isin(BROKEN).mean()) if len(pat) else np.nan
        row["median_ppl_ratio"] = float(np.nanmedian(pat["ppl_ratio"])) if "ppl_ratio" in pat and len(pat) \
            and np.isfinite(pat["ppl_ratio"].to_numpy(float)).any() else np.nan
        row["mean_tokens"] = float(pat["n_tokens"].mean()) if len(pat) else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def report_effects(table: pd.DataFrame, cell: int, prompts: list[int], value: str = "target_change",
                   n_boot: int = 2000, seed: int = 0) -> tuple[np.ndarray, tuple]:
    """Per-prompt patch-minus-neutral ``value`` of one cell on ``prompts`` with its bootstrap
    interval: ``(values, Interval)``."""
    e = neutral_effects(table, value)
    if cell not in e.columns:
        return np.zeros(0), bootstrap(np.zeros(0))
    v = e.loc[e.index.isin(prompts), cell].to_numpy(float)
    return v, bootstrap(v, n_boot=n_boot, seed=seed)
