"""Effects of a head sweep: the chosen heads against random heads of the same count, per prompt.

For a method (``zero``, ``mean``, ``patch``) and a metric column (``proj_gen``, ``target_score``,
``valence``, ``ppl_ratio``, ``rep4``, ``broken``, ...):

- ``change`` of a row = its metric minus the baseline row's (same prompt and seed);
- per prompt (mean over seeds, so the unit is the prompt): the chosen heads' change, and the
  mean change over the ``k`` random sets;
- ``effect`` = mean over prompts of (chosen change - mean random change), with a bootstrap
  interval over prompts and ``p_value``: the per-prompt paired Wilcoxon signed-rank test of that
  difference (two-sided unless asked otherwise: ablation may raise or lower a score);
- ``rank`` of the chosen set's mean change among the ``k`` random sets' mean changes and
  ``rank_p`` (two-sided: twice the smaller one-sided rank p, capped at 1), which cannot go below
  ``floor = 1 / (k + 1)`` (``core.stats.min_pvalue``).

``seed_spread`` re-estimates the effect on seeded halves of the prompts, each against a seeded
half of the random sets (re-drawing random heads would need new generations).

>>> eff = effect_table(result.table, ["proj_gen", "target_score"])     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emoscope.core.stats import Interval, bootstrap, min_pvalue, paired_test, permutation_pvalue
from emoscope.errors import InputError
from emoscope.steering.findings import SEED_SD_SHARE, SPREAD_SEEDS, SeedSpread

__all__ = ["METRICS", "metric_label", "changes", "prompt_effects", "effect_row", "effect_table", "Spread",
           "seed_spread", "SPREAD_SEEDS", "SEED_SD_SHARE"]

METRICS = ("proj_gen", "proj_last", "target_score", "valence", "ppl_ratio", "rep4", "distinct_1", "broken")
_LABELS = {"proj_gen": "vector projection (mean over generated tokens)",
           "proj_last": "vector projection at the last prompt token", "target_score": "target score",
           "valence": "valence (VADER)", "ppl_ratio": "perplexity ratio to baseline",
           "rep4": "repeated 4-gram share", "distinct_1": "distinct-1", "broken": "share collapsed or explosive"}


def metric_label(metric: str) -> str:
    return _LABELS.get(metric, metric)


def changes(table: pd.DataFrame, metric: str) -> pd.Series:
    """Each row's ``metric`` minus the baseline row's of the same prompt and seed."""
    if metric not in table:
        raise InputError(f"metric {metric!r} is not a column of the sweep table")
    base = table[table["kind"] == "baseline"].set_index(["prompt_id", "seed"])[metric]
    ref = base.reindex(pd.MultiIndex.from_frame(table[["prompt_id", "seed"]])).to_numpy(float)
    return pd.Series(table[metric].to_numpy(float) - ref, index=table.index, name=f"{metric}_change")


def prompt_effects(table: pd.DataFrame, method: str, metric: str,
                   random_names: Sequence[str] | None = None) -> tuple[pd.Series, pd.DataFrame]:
    """``(chosen change per prompt, random change per (prompt x random set))`` for ``method``."""
    t = table.assign(_change=changes(table, metric))
    t = t[t["method"] == method]
    chosen = t[t["kind"] == "chosen"].groupby("prompt_id")["_change"].mean()
    r = t[t["kind"] == "random"]
    if random_names is not None:
        r = r[r["config"].isin(list(random_names))]
    rand = r.groupby(["prompt_id", "config"])["_change"].mean().unstack("config")
    return chosen, rand.reindex(chosen.index)


def _rank(mine: float, per_random: np.ndarray, alternative: str) -> tuple[int, float]:
    if per_random.size == 0 or not np.isfinite(mine):
        return 0, float("nan")
    if alternative == "greater":
        return 1 + int(np.sum(per_random >= mine - 1e-12)), permutation_pvalue(mine, per_random, "greater")
    if alternative == "less":
        return 1 + int(np.sum(per_random <= mine + 1e-12)), permutation_pvalue(mine, per_random, "less")
    pg, pl = permutation_pvalue(mine, per_random, "greater"), permutation_pvalue(mine, per_random, "less")
    rank = 1 + int(np.sum(per_random >= mine - 1e-12)) if pg <= pl else 1 + int(np.sum(per_random <= mine + 1e-12))
    return rank, min(1.0, 2 * min(pg, pl))


def effect_row(table: pd.DataFrame, method: str, metric: str, *, alternative: str = "two-sided", n_boot: int = 2000,
               seed: int = 0, random_names: Sequence[str] | None = None,
               prompts: Sequence[int] | None = None) -> dict:
    """One row of :func:`effect_table` (optionally on a subset of random sets and prompts)."""
    chosen, rand = prompt_effects(table, method, metric, random_names)
    if prompts is not None:
        chosen, rand = chosen[chosen.index.isin(list(prompts))], rand[rand.index.isin(list(prompts))]
    rmean = rand.mean(axis=1).to_numpy(float) if rand.shape[1] else np.full(len(chosen), np.nan)
    eff = chosen.to_numpy(float) - rmean
    est = bootstrap(eff, n_boot=n_boot, seed=seed) if len(eff) else Interval(np.nan, np.nan, np.nan)
    p = paired_test(eff, alternative) if np.isfinite(eff).any() else float("nan")
    per_random = rand.mean(axis=0).to_numpy(float)  # (k,) mean change of each random set over prompts
    mine = float(np.nanmean(chosen.to_numpy(float))) if len(chosen) else float("nan")
    rank, rank_p = _rank(mine, per_random[np.isfinite(per_random)], alternative)
    ch = bootstrap(chosen.to_numpy(float), n_boot=n_boot, seed=seed) if len(chosen) else Interval(np.nan, np.nan, np.nan)
    k = int(rand.shape[1])
    return {"method": method, "metric": metric, "n": int(np.isfinite(eff).sum()), "k": k,
            "mean_change": ch.point, "change_lo": ch.lo, "change_hi": ch.hi,
            "mean_change_random": float(np.nanmean(rmean)) if np.isfinite(rmean).any() else float("nan"),
            "random_sd": float(np.std(per_random, ddof=1)) if k > 1 else float("nan"),
            "effect": est.point, "effect_lo": est.lo, "effect_hi": est.hi, "p_value": p, "alternative": alternative,
            "rank": rank, "rank_p": rank_p, "floor": min_pvalue(k) if k else float("nan")}


def effect_table(table: pd.DataFrame, metrics: Sequence[str] = METRICS, *, alternative: str = "two-sided",
                 n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per method and metric (columns of ``table`` only): the chosen heads against the random sets."""
    methods = [m for m in table["method"].unique() if m != "none"]
    rows = [effect_row(table, m, metric, alternative=alternative, n_boot=n_boot, seed=seed)
            for m in methods for metric in metrics if metric in table and table[metric].notna().any()]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Spread(SeedSpread):
    """The effect re-estimated over seeded halves of prompts and random sets (``mean``, ``sd`` and
    ``passed``: same sign in every seed and sd < ``sd_share`` x |mean|, as the steering sweep's
    ``SeedSpread``)."""

    n_prompts: int = 0

    def note(self) -> str:
        return (f"effect over {len(self.seeds)} seeds (seeds {list(self.seeds)}), each on a random half "
                f"({self.n_prompts}) of the prompts against a random {self.subset} of the {self.k} random head "
                "sets (re-drawing random heads would need new generations): "
                + ", ".join(f"{x:.3g}" for x in self.estimates)
                + f"; mean {self.mean:.3g}, sd {self.sd:.3g}; passes with the same sign in every seed and "
                  f"sd < {self.sd_share:g} x |mean|")


def seed_spread(table: pd.DataFrame, method: str, metric: str, *, seed: int = 0,
                n_seeds: int = SPREAD_SEEDS) -> Spread:
    """:func:`effect_row`'s effect over ``n_seeds`` seeded (prompt half, random-set half) draws."""
    t = table[(table["method"] == method) & (table["kind"] == "random")]
    names = sorted(t["config"].unique())
    prompts = sorted(table.loc[table["kind"] == "chosen", "prompt_id"].unique())
    k, m = len(names), max(1, len(names) // 2)
    half = max(2, len(prompts) // 2) if len(prompts) >= 2 else len(prompts)
    seeds = tuple(int(seed) + j for j in range(int(n_seeds)))
    est = []
    for s in seeds:
        rng = np.random.default_rng([s, 4])
        sub = sorted(rng.choice(names, size=m, replace=False)) if k else None
        ps = sorted(rng.choice(prompts, size=half, replace=False)) if prompts else []
        est.append(float(effect_row(table, method, metric, n_boot=0, random_names=sub, prompts=ps)["effect"]))
    return Spread(seeds=seeds, estimates=tuple(est), cells=(), k=k, subset=m if k else 0, n_prompts=half)
