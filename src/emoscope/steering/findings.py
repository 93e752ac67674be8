"""The ``steering`` finding of a sweep: its best cell chosen on half the prompts, reported on the other.

A sweep searches many (layer, strength) cells, and the largest effect among them is the maximum
of what was searched: on pure noise it still looks like an effect. So a finding never reports the
cell it chose on the prompts it chose it with:

1. Per vector, the paired effect per prompt and cell (``regimes.prompt_effects``: the vector's
   target change minus the mean change of the random vectors on the same prompt and seed,
   sign-flipped for negative strengths, averaged over seeds so the unit is the prompt) against
   the random kind it is judged by (``regimes.judged_kind``: isotropic when run, else
   covariance-matched).
2. The prompts are split at random (``seed``) into a selection half and a report half
   (``core.stats.heldout_select``). Candidate cells are those whose vector outputs on the
   *selection* half mostly stay fluent (collapsed plus explosive share below ``MAX_BROKEN``;
   every cell when none is), so the report half is untouched by every choice.
3. The chosen cell's effect, bootstrap interval and one-sided Wilcoxon p-value come from the
   report half only. That p needs no Bonferroni correction for the search: the choice used none
   of the report prompts. ``Observation.n`` is the number of report prompts (unit ``prompts``).
4. Controls: ``random_vectors`` (held-out p < alpha and interval above 0), ``heldout_selection``,
   ``multi_token_outputs`` and ``fluency`` (on the report half's outputs of the chosen cell) and
   ``seed_spread`` (the whole selection re-run over ``SPREAD_SEEDS`` prompt splits, each against
   a random half of the k random vectors: re-drawing random vectors would need new generations).

>>> findings, summary = steering_findings(result, alpha=0.05)   # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from emoscope.core.stats import (
    Interval,
    bootstrap,
    heldout_select,
    min_pvalue,
    paired_test,
    permutation_pvalue,
)
from emoscope.errors import InputError
from emoscope.steering.regimes import RANDOM_KINDS, judged_kind, prompt_effects, random_rows
from emoscope.steering.stage import MIN_MEAN_TOKENS

__all__ = ["HeldOutCell", "SeedSpread", "select_cell", "seed_spread", "steering_findings", "MIN_MEAN_TOKENS",
           "MAX_BROKEN", "SPREAD_SEEDS", "SEED_SD_SHARE"]

MAX_BROKEN = 0.5  # a candidate cell: below this share of collapsed or explosive outputs
SPREAD_SEEDS = 5  # prompt splits (and random-vector halves) the seed_spread control re-runs
SEED_SD_SHARE = 0.5  # seed_spread passes when the sd of the held-out effect over seeds is below this x |mean|
_BROKEN = ("repetitive collapse", "explosive")


@dataclass(frozen=True)
class HeldOutCell:
    """A cell chosen on ``select_prompts`` and reported on ``report_prompts``: ``estimate``
    (mean paired effect, bootstrap interval), ``p_value`` (one-sided Wilcoxon over the report
    prompts), ``n`` (report prompts with a value), ``n_cells`` searched, ``n_candidates`` fluent
    on the selection half, ``against`` the random kind (``None``: no random control ran, the
    effect is the signed change from baseline)."""

    vector: str
    layer: int
    strength: float
    against: str | None
    estimate: Interval
    p_value: float
    n: int
    n_cells: int
    n_candidates: int
    select_prompts: tuple[int, ...]
    report_prompts: tuple[int, ...]


def select_cell(table: pd.DataFrame, vector: str, *, against: str | None = "isotropic", seed: int = 0,
                random_names: Sequence[str] | None = None, max_broken: float = MAX_BROKEN,
                n_boot: int = 2000) -> HeldOutCell:
    """Choose ``vector``'s best fluent cell on half the prompts of a sweep ``table`` and report
    it on the other half (see the module docstring). ``random_names`` restricts the random
    control to those random vectors. Needs at least 2 prompts."""
    effects = prompt_effects(table, vector, against, random_names)  # (prompts, cells)
    if effects.shape[0] < 2 or effects.shape[1] < 1:
        raise InputError(f"a held-out choice of {vector}'s cell needs at least 2 prompts and 1 steered cell, "
                         f"got {effects.shape[0]} prompts and {effects.shape[1]} cells")
    prompts = effects.index.to_numpy()
    split = heldout_select(np.zeros((len(prompts), 1)), seed=seed, n_boot=0)  # the split alone
    t = table[(table["kind"] == "vector") & (table["vector"] == vector) & (table["strength"] != 0)
              & table["prompt_id"].isin(prompts[split.select_units])]
    broken = t["regime"].isin(_BROKEN).groupby([t["layer"], t["strength"]]).mean()
    fluent = broken.reindex(effects.columns).fillna(1.0).to_numpy() < max_broken  # (cells,)
    if not fluent.any():
        fluent[:] = True
    values = np.array(effects.to_numpy(float), dtype=float)  # a writable copy
    values[np.ix_(split.select_units, ~fluent)] = np.nan  # only fluent cells can be chosen
    with warnings.catch_warnings():  # masked cells have no selection values: their mean is empty
        warnings.simplefilter("ignore", RuntimeWarning)
        choice = heldout_select(values, seed=seed, n_boot=n_boot)  # same seed and units: same split
    if not np.array_equal(choice.report_units, split.report_units):
        raise RuntimeError("heldout_select split the prompts differently for the same seed")
    layer, strength = effects.columns[choice.cell]
    return HeldOutCell(str(vector), int(layer), float(strength), against, choice.estimate, choice.p_value, choice.n,
                       choice.n_cells, int(fluent.sum()), tuple(int(p) for p in prompts[split.select_units]),
                       tuple(int(p) for p in prompts[split.report_units]))


@dataclass(frozen=True)
class SeedSpread:
    """The held-out effect over several seeds of the prompt split and random-vector halves."""

    seeds: tuple[int, ...]
    estimates: tuple[float, ...]
    cells: tuple[tuple[int, float], ...]
    k: int  # random vectors available
    subset: int  # random vectors each seed is judged against
    sd_share: float = SEED_SD_SHARE

    @property
    def mean(self) -> float:
        return float(np.mean(self.estimates)) if self.estimates else float("nan")

    @property
    def sd(self) -> float:
        return float(np.std(self.estimates, ddof=1)) if len(self.estimates) > 1 else float("nan")

    @property
    def passed(self) -> bool:
        e = np.asarray(self.estimates, dtype=float)
        if e.size < 2 or not np.all(np.isfinite(e)):
            return False
        same_sign = bool(np.all(e > 0) or np.all(e < 0))
        return same_sign and self.sd < self.sd_share * abs(self.mean)

    def note(self) -> str:
        top = max(set(self.cells), key=self.cells.count) if self.cells else None
        text = (f"held-out effect over {len(self.seeds)} seeds of the prompt split (seeds {list(self.seeds)}): "
                + ", ".join(f"{x:.3g}" for x in self.estimates) + f"; mean {self.mean:.3g}, sd {self.sd:.3g}; ")
        if self.k > 1:
            text += (f"each seed judged against a random {self.subset} of the {self.k} random vectors (re-drawing "
                     "random vectors would need new generations, so their spread is resampled halves); ")
        elif self.k == 1:
            text += "one random vector ran, so only the prompt split varies; "
        if top is not None:
            text += f"the same cell (layer {top[0]}, strength {top[1]:g}) was chosen in {self.cells.count(top)} of " \
                    f"{len(self.cells)}; "
        return text + f"passes with the same sign in every seed and sd < {self.sd_share:g} x |mean|"


def seed_spread(table: pd.DataFrame, vector: str, *, against: str | None, seed: int = 0,
                n_seeds: int = SPREAD_SEEDS, max_broken: float = MAX_BROKEN) -> SeedSpread:
    """Re-run :func:`select_cell` with prompt-split seeds ``seed .. seed + n_seeds - 1``, each
    against a seeded random half (``k // 2``, at least 1) of the k random vectors of kind
    ``against``: the seed spread of the held-out effect without new generations."""
    names = sorted(random_rows(table, against, vector)["vector"].unique()) if against else []
    k = len(names)
    m = max(1, k // 2) if k else 0
    seeds = tuple(int(seed) + j for j in range(int(n_seeds)))
    estimates, cells = [], []
    for s in seeds:
        subset = sorted(np.random.default_rng([s, 2]).choice(names, size=m, replace=False)) if k else None
        c = select_cell(table, vector, against=against, seed=s, random_names=subset, max_broken=max_broken,
                        n_boot=0)
        estimates.append(float(c.estimate.point))
        cells.append((c.layer, c.strength))
    return SeedSpread(seeds, tuple(estimates), tuple(cells), k, m)


def _cell_rows(table: pd.DataFrame, kind: str, name: str, layer: int, strength: float,
               prompts: Sequence[int]) -> pd.DataFrame:
    t = table[(table["kind"] == kind) & (table["layer"] == layer) & (table["strength"] == strength)
              & table["prompt_id"].isin(list(prompts))]
    return t[t["vector"] == name] if kind == "vector" else t


def _rank(table: pd.DataFrame, c: HeldOutCell, kind: str) -> tuple[int, int, float]:
    """(rank, k, rank_p) of the chosen cell's mean change (intended way) among the k random
    vectors' mean changes, on the report prompts."""
    sign = 1.0 if c.strength > 0 else -1.0
    mine = sign * float(_cell_rows(table, "vector", c.vector, c.layer, c.strength, c.report_prompts)
                        ["target_change"].mean())
    r = random_rows(table, kind, c.vector)
    r = r[(r["layer"] == c.layer) & (r["strength"] == c.strength) & r["prompt_id"].isin(list(c.report_prompts))]
    per = sign * r.groupby("vector")["target_change"].mean().to_numpy(float)  # (k,)
    return 1 + int(np.sum(per >= mine - 1e-12)), int(per.size), permutation_pvalue(mine, per, "greater")


def _other_kind(table: pd.DataFrame, c: HeldOutCell, kind: str, n_boot: int, seed: int,
                alpha: float) -> tuple[str, bool | None, float]:
    """The chosen cell on the same report prompts, judged against the other random kind:
    ``(note, passed, p)`` with the same rule as the main comparison."""
    e = prompt_effects(table, c.vector, kind)
    col = (c.layer, c.strength)
    if col not in e.columns:
        return "", None, float("nan")
    v = e.loc[e.index.isin(list(c.report_prompts)), col].to_numpy(float)
    est = bootstrap(v, n_boot=n_boot, seed=seed)
    p = paired_test(v, "greater")
    rank, k, rank_p = _rank(table, c, kind)
    passed = bool(np.isfinite(p) and p < alpha and np.isfinite(est.lo) and est.lo > 0)
    return (f"against {k} {kind}-matched random vectors on the same report prompts: effect {est.point:.3g} "
            f"[{est.lo:.3g}, {est.hi:.3g}], p={p:.2g}, rank {rank} of {k + 1} (rank p {rank_p:.2g})"), passed, p


def steering_findings(result: Any, *, alpha: float = 0.05, seed: int = 0, max_new_tokens: int | None = None,
                      massive_dims: Mapping[int, Sequence[int]] | None = None, n_seeds: int = SPREAD_SEEDS,
                      n_boot: int = 2000) -> tuple[list[Any], str]:
    """The ``steering`` findings of a finished sweep (a ``SteeringResult``, or anything with
    ``table``, ``success``, ``target`` and ``thresholds``) and a one-line summary.

    Per vector: the held-out finding (a claim when the held-out p < ``alpha`` and its interval
    is above 0) and an observation of the change at ``+|s|`` minus at ``-|s|`` in the chosen
    layer. ``massive_dims`` (``{layer: [dims]}``, e.g. ``measure_unit(model, layers,
    "token_norm_robust").massive_dims``) adds the caveat that no random kind is neutral there.
    """
    from emoscope.audit import Control, Finding, Observation

    t, s = result.table, result.success
    if not len(s):
        return [], "no steered cells"
    th = result.thresholds
    kind = judged_kind(t)
    others = [k for k in RANDOM_KINDS if k != kind and len(random_rows(t, k))] if kind else []
    findings: list[Any] = []
    summary = ""
    for name, g in s.groupby("vector", sort=False):
        name = str(name)
        n_prompts = int(t.loc[(t["kind"] == "vector") & (t["vector"] == name), "prompt_id"].nunique())
        if n_prompts < 2:
            findings += _unsplittable(result, name, g, n_prompts, Control, Finding, Observation)
            continue
        c = select_cell(t, name, against=kind, seed=seed, n_boot=n_boot)
        report = _cell_rows(t, "vector", name, c.layer, c.strength, c.report_prompts)
        ppl = float(np.nanmedian(report["ppl_ratio"])) if "ppl_ratio" in report and len(report) else float("nan")
        broken = float(report["regime"].isin(_BROKEN).mean()) if len(report) else float("nan")
        mean_tokens = float(report["n_tokens"].mean()) if len(report) else 0.0
        est, p = c.estimate, c.p_value
        significant = bool(kind is not None and np.isfinite(p) and p < alpha and np.isfinite(est.lo) and est.lo > 0)
        fluent = bool(np.isfinite(ppl) and ppl < th.max_ppl_ratio and broken < MAX_BROKEN)
        multi = bool((max_new_tokens is None or max_new_tokens > 1) and mean_tokens >= MIN_MEAN_TOKENS)
        n_sel, n_rep = len(c.select_prompts), len(c.report_prompts)
        if kind is None:
            random_ctl = Control(name="random_vectors", value=None, passed=None, threshold=alpha,
                                 note="no random vectors ran (n_random=0): the effect is the signed change from "
                                      "the unsteered output, not a change over random vectors")
        else:
            rank, k, rank_p = _rank(t, c, kind)
            note = (f"held out: per-prompt paired Wilcoxon of vector change minus mean random change (unit: prompt), "
                    f"one-sided, on the {n_rep} report prompts; passes when p < {alpha:g} and the interval is above "
                    f"0; no Bonferroni correction for the {c.n_cells} cells searched: the cell was chosen on the "
                    f"other {n_sel} prompts. Judged against {k} {kind} random vectors of the same norm; the vector "
                    f"ranks {rank} of {k + 1} among their mean changes (rank p {rank_p:.2g}; a rank among {k} random "
                    f"vectors cannot go below p = {min_pvalue(k):.2g})")
            worst_p = float(p)
            for other in others:  # a reviewer asks for both kinds: the claim must beat every kind that ran
                text, ok, p_other = _other_kind(t, c, other, n_boot, seed, alpha)
                note += "; " + text
                significant = significant and ok is True
                worst_p = max(worst_p, p_other) if np.isfinite(p_other) else worst_p
            dims = list((massive_dims or {}).get(c.layer, []))
            if dims:
                note += (f"; layer {c.layer} has massive dimensions {dims}: neither random kind is neutral there "
                         "(isotropic draws avoid those dimensions, covariance-matched ones land on them)")
            random_ctl = Control(name="random_vectors", value=worst_p, passed=significant, threshold=alpha,
                                 note=note + "; passes only when every kind of random vector that ran is beaten")
        spread = seed_spread(t, name, against=kind, seed=seed, n_seeds=n_seeds)
        controls = [
            random_ctl,
            Control(name="heldout_selection", value=float(est.point), passed=True,
                    note=f"cell chosen on {n_sel} prompts, reported on {n_rep} (among {c.n_candidates} of "
                         f"{c.n_cells} cells mostly fluent on the selection prompts)"),
            Control(name="multi_token_outputs", value=mean_tokens, threshold=f">= {MIN_MEAN_TOKENS:g} tokens",
                    passed=multi,
                    note="mean generated tokens in the chosen cell's outputs on the report prompts"
                         + (f" (up to {max_new_tokens})" if max_new_tokens else "")
                         + "; the effect must be seen in multi-token text, not one next-token step"),
            Control(name="fluency", value=ppl, passed=fluent, threshold=th.max_ppl_ratio,
                    note=f"median perplexity ratio to the unsteered output on the report prompts; {broken:.0%} "
                         "collapsed or explosive"),
            Control(name="seed_spread", value=spread.sd, passed=spread.passed,
                    threshold=f"same sign, sd < {SEED_SD_SHARE:g} x |mean|", note=spread.note()),
        ]
        direction = "raises" if c.strength > 0 else "lowers"
        claim = (f"steering with {name} at layer {c.layer}, strength {c.strength:g} {direction} {result.target} more "
                 f"than {kind} random vectors of the same norm, with fluent text (cell chosen on {n_sel} prompts, "
                 f"effect measured on {n_rep} others)") if significant else None
        over = f"over {kind} random" if kind else "from baseline (no random control)"
        findings.append(Finding(
            kind="steering", claim=claim, controls=controls,
            observation=Observation(
                metric=f"{result.target} change {over}, {name} at layer {c.layer}, strength {c.strength:g} "
                       f"(chosen on {n_sel} prompts among {c.n_cells} cells, reported on {n_rep} held-out prompts)",
                value=float(est.point), n=int(c.n), unit="prompts",
                interval=(float(est.lo), float(est.hi)) if np.isfinite([est.lo, est.hi]).all() else None,
                p_value=float(p), n_searched=int(c.n_cells)),
        ))
        findings += _gap(g, name, c.layer, abs(c.strength), result.target, Finding, Observation)
        summary = (f"{name}: layer {c.layer} strength {c.strength:g} chosen on {n_sel} prompts; held-out effect "
                   f"{est.point:.3g} [{est.lo:.3g}, {est.hi:.3g}] {over}, p={p:.2g}, n={c.n} prompts")
    return findings, summary


def _gap(g: pd.DataFrame, name: str, layer: int, strength: float, target: str, Finding: Any,  # noqa: N803
         Observation: Any) -> list[Any]:  # noqa: N803
    """v and -v at the same strength should move the target in opposite directions."""
    pos = g[(g["layer"] == layer) & (g["strength"] == strength)]
    neg = g[(g["layer"] == layer) & (g["strength"] == -strength)]
    if not (len(pos) and len(neg)):
        return []
    gap = float(pos["mean_change"].iloc[0] - neg["mean_change"].iloc[0])
    return [Finding(kind="steering", observation=Observation(
        metric=f"{target} change at +{strength:g} minus at -{strength:g}, {name} layer {layer} (all prompts)",
        value=gap, n=int(pos["n"].iloc[0]), unit="prompts"))]


def _unsplittable(result: Any, name: str, g: pd.DataFrame, n_prompts: int, Control: Any, Finding: Any,  # noqa: N803
                  Observation: Any) -> list[Any]:  # noqa: N803
    """One prompt: nothing to hold out, so the best cell is an observation that cannot ship."""
    best = g.sort_values("effect", ascending=False).iloc[0]
    return [Finding(kind="steering", controls=[
        Control(name="heldout_selection", value=None, passed=None,
                note=f"{n_prompts} prompt: nothing to hold out, the value is the best of {len(g)} cells searched")],
        observation=Observation(metric=f"{result.target} change over random, {name} at layer {int(best.layer)}, "
                                       f"strength {float(best.strength):g} (best of {len(g)} cells, not held out)",
                                value=float(best.effect), n=n_prompts, unit="prompts", n_searched=len(g)))]
