"""Effects of a head sweep: the chosen heads against random head sets of the same count, the
set being the unit.

For a method (``zero``, ``mean``, ``patch``) and a metric column (``proj_gen``, ``target_score``,
``valence``, ``ppl_ratio``, ``rep4``, ``broken``, ...):

- ``change`` of a row = its metric minus the baseline row's (same prompt and seed);
- per prompt (mean over seeds), the chosen heads' change and each random set's change;
- each set's value is its mean change over the prompts: the chosen set's is the candidate, each
  random set's is one draw of the null (a random set has an effect of its own, so the question is
  whether a random set treated the same way would move the metric this far, not whether the chosen
  set differs from the random sets' average on many prompts);
- ``effect`` = the chosen set's value minus the random sets' mean, with the 95% prediction
  interval of one more draw (``effect_lo``/``effect_hi``), ``p_value`` from
  ``core.draws.draw_test`` (two-sided unless asked otherwise: ablation may raise or lower a
  score), ``rank`` among the ``k`` sets and ``rank_p`` (two-sided: twice the smaller one-sided rank
  p, capped at 1), which cannot go below ``floor = 2 / (k + 1)``;
- ``mean_change`` with ``change_lo``/``change_hi``: the chosen set's own change, bootstrapped over
  prompts (descriptive).

Nothing is searched here (no cells), so every prompt reports. ``seed_spread`` re-estimates the
effect on seeded halves of the prompts, every set measured on the same half.

>>> eff = effect_table(result.table, ["proj_gen", "target_score"])     # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emoscope.core.draws import DEFAULT_DRAW_TEST, draw_test
from emoscope.core.stats import Interval, bootstrap
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
    if metric not in table:
        raise InputError(f"metric {metric!r} is not a column of the sweep table")
    t = table[(table["method"] == method) | (table["kind"] == "baseline")]
    t = t.assign(_change=changes(t, metric))
    t = t[t["method"] == method]
    chosen = t[t["kind"] == "chosen"].groupby("prompt_id")["_change"].mean()
    r = t[t["kind"] == "random"]
    if random_names is not None:
        r = r[r["config"].isin(list(random_names))]
    rand = r.pivot_table(index="prompt_id", columns="config", values="_change", aggfunc="mean")
    return chosen, rand.reindex(chosen.index)


def effect_row(table: pd.DataFrame, method: str, metric: str, *, alternative: str = "two-sided", n_boot: int = 2000,
               seed: int = 0, random_names: Sequence[str] | None = None, prompts: Sequence[int] | None = None,
               test: str = DEFAULT_DRAW_TEST, alpha: float = 0.05,
               effects: tuple[pd.Series, pd.DataFrame] | None = None) -> dict:
    """One row of :func:`effect_table` (optionally on a subset of random sets and prompts); the
    :class:`~emoscope.core.draws.DrawTest` is under ``"draws"``. ``effects``: this (method,
    metric)'s :func:`prompt_effects`, when already computed."""
    chosen, rand = effects if effects is not None else prompt_effects(table, method, metric, random_names)
    if prompts is not None:
        chosen, rand = chosen[chosen.index.isin(list(prompts))], rand[rand.index.isin(list(prompts))]
    c = chosen.to_numpy(float)
    mine = float(np.nanmean(c)) if np.isfinite(c).any() else float("nan")
    with warnings.catch_warnings():  # a set with no finite change on these prompts: NaN, dropped by the test
        warnings.simplefilter("ignore", RuntimeWarning)
        per_random = np.nanmean(rand.to_numpy(float), axis=0) if rand.shape[1] else np.zeros(0)  # (k,)
    t = draw_test(mine, per_random, alternative=alternative, test=test, alpha=alpha)
    ch = bootstrap(c, n_boot=n_boot, seed=seed) if len(c) else Interval(np.nan, np.nan, np.nan)
    k = t.k
    return {"method": method, "metric": metric, "n": int(np.isfinite(c).sum()), "k": k,
            "mean_change": ch.point, "change_lo": ch.lo, "change_hi": ch.hi,
            "mean_change_random": t.mean, "random_sd": t.sd,
            "effect": t.excess.point, "effect_lo": t.excess.lo, "effect_hi": t.excess.hi, "z": t.z,
            "p_value": t.p, "alternative": alternative, "rank": t.rank, "rank_p": t.p_rank,
            "floor": t.floor, "test": t.decided_by, "draws": t}


def effect_table(table: pd.DataFrame, metrics: Sequence[str] = METRICS, *, alternative: str = "two-sided",
                 n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per method and metric (columns of ``table`` only): the chosen heads against the random sets."""
    methods = [m for m in table["method"].unique() if m != "none"]
    rows = [effect_row(table, m, metric, alternative=alternative, n_boot=n_boot, seed=seed)
            for m in methods for metric in metrics if metric in table and table[metric].notna().any()]
    return pd.DataFrame(rows).drop(columns="draws", errors="ignore")


@dataclass(frozen=True)
class Spread(SeedSpread):
    """The effect re-estimated over seeded halves of the prompts (``mean``, ``sd`` and ``passed``:
    same sign in every seed and sd < ``sd_share`` x |mean|, as the steering sweep's ``SeedSpread``)."""

    n_prompts: int = 0

    def note(self, cell_text: object = None) -> str:
        return (f"effect (chosen set minus the {self.k} random sets' mean) over {len(self.seeds)} seeds (seeds "
                f"{list(self.seeds)}), each on a random half ({self.n_prompts}) of the prompts, every set measured "
                "on the same half: " + ", ".join(f"{x:.3g}" for x in self.estimates)
                + f"; mean {self.mean:.3g}, sd {self.sd:.3g}; passes with the same sign in every seed and "
                  f"sd < {self.sd_share:g} x |mean|")


def seed_spread(table: pd.DataFrame, method: str, metric: str, *, seed: int = 0,
                n_seeds: int = SPREAD_SEEDS) -> Spread:
    """:func:`effect_row`'s effect over ``n_seeds`` seeded halves of the prompts."""
    chosen, rand = prompt_effects(table, method, metric)
    k = int(rand.shape[1])
    prompts = sorted(chosen.index)
    half = max(2, len(prompts) // 2) if len(prompts) >= 2 else len(prompts)
    seeds = tuple(int(seed) + j for j in range(int(n_seeds)))
    est = []
    for s in seeds:
        rng = np.random.default_rng([s, 4])
        ps = sorted(rng.choice(prompts, size=half, replace=False)) if prompts else []
        est.append(float(effect_row(table, method, metric, n_boot=0, prompts=ps, effects=(chosen, rand))["effect"]))
    return Spread(seeds=seeds, estimates=tuple(est), cells=(), k=k, n_prompts=half, what="random head sets")
