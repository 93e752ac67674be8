"""The ``patching`` finding of a sweep: its (layer, positions) cell chosen on half the target
prompts, reported on the other half.

A sweep searches several cells; the best of them is the maximum of what was searched, so a
finding never reports the cell on the prompts it was chosen with. The choice is the steering
sweep's own (``emoscope.steering.findings.select_cell`` on ``effects.steering_view``):

1. The paired effect per target prompt and cell: the patch's target change minus the mean change
   of the random patches of the same norm on the same prompt (unit: the prompt).
2. The prompts are split at random (``seed``) into a selection half and a report half
   (``core.stats.heldout_select``); candidate cells are those whose patched outputs on the
   selection half mostly stay fluent. The chosen cell's effect, bootstrap interval and one-sided
   Wilcoxon p come from the report half only (no Bonferroni correction for the search needed).
3. Controls, all on the report half of the chosen cell:

   - ``random_patch``: passes when that p < ``alpha`` and the interval is above 0; the note
     gives the patch's rank among the k random draws' mean changes;
   - ``neutral_source``: per prompt, the patch's target change minus the neutral-source patch's
     (the neutral class mean, or a neutral dataset, written at the same layer and positions);
     passes when its one-sided Wilcoxon p < ``alpha`` and its interval is above 0. ``value`` is the
     neutral patch's own change over the random patches, comparable with the observation;
   - ``multi_token_outputs`` and ``fluency``: as for steering (mean generated tokens; median
     perplexity ratio and the share of collapsed or explosive outputs);
   - ``seed_spread``: ``steering.findings.seed_spread``: the whole selection re-run over
     ``SPREAD_SEEDS`` prompt splits, each against a random half of the k random patches;
   - ``heldout_selection``: which prompts chose and which reported.

4. A second finding, an observation only: the step-1 view (``step1_change``, the log-odds of
   target tokens at the first generated token) of the same cell on the same report prompts, so the
   ledger shows where the next-token view and the multi-token effect disagree.

>>> findings, summary = patching_findings(result, alpha=0.05)    # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from emoscope.core.stats import bootstrap, min_pvalue, paired_test
from emoscope.patching.effects import cells_of, report_effects, steering_view
from emoscope.steering.findings import (
    MAX_BROKEN,
    SEED_SD_SHARE,
    SPREAD_SEEDS,
    seed_spread,
    select_cell,
)
from emoscope.steering.regimes import prompt_effects, success_table
from emoscope.steering.stage import MIN_MEAN_TOKENS

__all__ = ["patching_findings"]

_BROKEN = ("repetitive collapse", "explosive")


def _cell_name(cells: Any, idx: int) -> tuple[int, str]:
    row = cells.iloc[int(idx)]
    return int(row["layer"]), str(row["positions"])


def _rank(view: Any, name: str, cell: int, prompts: tuple[int, ...]) -> tuple[int, int, float]:
    """(rank, k, rank_p) of the patch's mean change among the k random patches' mean changes,
    on ``prompts`` (the steering success table's rank, on those prompts only)."""
    v = view[view["prompt_id"].isin(list(prompts))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = success_table(v, "target_score", n_boot=0)
    s = s[(s["vector"] == name) & (s["layer"] == cell)]
    if not len(s):
        return 0, 0, float("nan")
    r = s.iloc[0]
    return int(r["rank"]), int(r["n_random"]), float(r["rank_p"])


def patching_findings(result: Any, *, alpha: float = 0.05, seed: int = 0, max_new_tokens: int | None = None,
                      n_seeds: int = SPREAD_SEEDS, n_boot: int = 2000) -> tuple[list[Any], str]:
    """The ``patching`` findings of a finished sweep (a ``PatchResult``, or anything with
    ``table``, ``target``, ``thresholds`` and ``meta``) and a one-line summary."""
    from emoscope.audit import Control, Finding, Observation

    t, th = result.table, result.thresholds
    pat = t[t["kind"] == "patch"]
    if not len(pat):
        return [], "no patched rows"
    name = str(pat["source"].iloc[0])
    cells = cells_of(t)
    view = steering_view(t)
    kind = "isotropic" if (t["kind"] == "random").any() else None
    n_prompts = int(pat["prompt_id"].nunique())
    if n_prompts < 2:
        return _unsplittable(result, name, view, cells, kind, Control, Finding, Observation), "one target prompt"
    c = select_cell(view, name, against=kind, seed=seed, n_boot=n_boot)
    layer, pos = _cell_name(cells, c.layer)
    report = pat[(pat["layer"] == layer) & (pat["positions"] == pos) & pat["prompt_id"].isin(list(c.report_prompts))]
    ppl = float(np.nanmedian(report["ppl_ratio"])) if "ppl_ratio" in report and len(report) \
        and np.isfinite(report["ppl_ratio"].to_numpy(float)).any() else float("nan")
    broken = float(report["regime"].isin(_BROKEN).mean()) if len(report) else float("nan")
    mean_tokens = float(report["n_tokens"].mean()) if len(report) else 0.0
    est, p = c.estimate, c.p_value
    n_sel, n_rep = len(c.select_prompts), len(c.report_prompts)
    where = f"layer {layer}, positions {pos}"

    if kind is None:
        significant = False
        random_ctl = Control(name="random_patch", value=None, passed=None, threshold=alpha,
                             note="no random patches ran (n_random=0): the effect is the change from the unpatched "
                                  "output, not a change over random patches of the same norm")
    else:
        significant = bool(np.isfinite(p) and p < alpha and np.isfinite(est.lo) and est.lo > 0)
        rank, k, rank_p = _rank(view, name, c.layer, c.report_prompts)
        random_ctl = Control(
            name="random_patch", value=float(p), passed=significant, threshold=alpha,
            note=f"held out: per-prompt paired Wilcoxon of the patch's target change minus the mean change of {k} "
                 f"random patches (unit: prompt), one-sided, on the {n_rep} report prompts; each random patch adds to "
                 "the target's clean state a seeded isotropic direction scaled, column by column, to the norm of the "
                 "(source - clean target) delta it replaces; passes when p < "
                 f"{alpha:g} and the interval is above 0; no Bonferroni correction for the {c.n_cells} cells "
                 f"searched: the cell was chosen on the other {n_sel} prompts. The patch ranks {rank} of {k + 1} "
                 f"among the random patches' mean changes (rank p {rank_p:.2g}; a rank among {k} draws cannot go "
                 f"below p = {min_pvalue(k):.2g})")

    d, nest = report_effects(t, c.layer, list(c.report_prompts), n_boot=n_boot, seed=seed)
    if len(d) and np.isfinite(d).any():
        p_neu = paired_test(d, "greater")
        neutral_value = float(est.point - np.nanmean(d))  # the neutral patch's own change over random
        neutral_ok = bool(np.isfinite(p_neu) and p_neu < alpha and np.isfinite(nest.lo) and nest.lo > 0)
        neutral_ctl = Control(
            name="neutral_source", value=neutral_value, passed=neutral_ok, threshold=alpha,
            note=f"patching the neutral source ({result.meta.get('neutral') or 'neutral'}) at the same layer and "
                 f"positions changes {result.target} by {neutral_value:.3g} "
                 + ("over the random patches" if kind else "from the unpatched output")
                 + f"; the source patch minus the neutral patch per report prompt: {nest.point:.3g} "
                   f"[{nest.lo:.3g}, {nest.hi:.3g}], one-sided Wilcoxon p={p_neu:.2g} (n={int(np.isfinite(d).sum())}); "
                   f"passes when p < {alpha:g} and the interval is above 0")
    else:
        neutral_ctl = Control(name="neutral_source", value=None, passed=None,
                              note="no neutral-source patch ran: what the source says is not separated from "
                                   "patching in any other text")
    fluent = bool(np.isfinite(ppl) and ppl < th.max_ppl_ratio and broken < MAX_BROKEN)
    multi = bool((max_new_tokens is None or max_new_tokens > 1) and mean_tokens >= MIN_MEAN_TOKENS)
    spread = seed_spread(view, name, against=kind, seed=seed, n_seeds=n_seeds)
    chosen = [_cell_name(cells, cell) for cell, _ in spread.cells]
    top = max(set(chosen), key=chosen.count) if chosen else None
    spread_note = (f"held-out effect over {len(spread.seeds)} seeds of the prompt split (seeds {list(spread.seeds)}): "
                   + ", ".join(f"{x:.3g}" for x in spread.estimates) + f"; mean {spread.mean:.3g}, sd {spread.sd:.3g}; ")
    if spread.k > 1:
        spread_note += (f"each seed judged against a random {spread.subset} of the {spread.k} random patches "
                        "(re-drawing them would need new generations); ")
    if top is not None:
        spread_note += f"the same cell (layer {top[0]}, positions {top[1]}) was chosen in {chosen.count(top)} of " \
                       f"{len(chosen)}; "
    spread_note += f"passes with the same sign in every seed and sd < {SEED_SD_SHARE:g} x |mean|"
    controls = [
        random_ctl,
        neutral_ctl,
        Control(name="multi_token_outputs", value=mean_tokens, threshold=f">= {MIN_MEAN_TOKENS:g} tokens",
                passed=multi,
                note="mean generated tokens of the chosen cell's patched outputs on the report prompts"
                     + (f" (up to {max_new_tokens})" if max_new_tokens else "")
                     + "; the effect is measured on multi-token text; the step-1 view is a separate observation"),
        Control(name="fluency", value=ppl, passed=fluent, threshold=th.max_ppl_ratio,
                note=f"median perplexity ratio to the unpatched output on the report prompts; {broken:.0%} collapsed "
                     "or explosive"),
        Control(name="seed_spread", value=spread.sd, passed=spread.passed,
                threshold=f"same sign, sd < {SEED_SD_SHARE:g} x |mean|", note=spread_note),
        Control(name="heldout_selection", value=float(est.point), passed=True,
                note=f"cell chosen on {n_sel} prompts, reported on {n_rep} (among {c.n_candidates} of {c.n_cells} "
                     "cells mostly fluent on the selection prompts)"),
    ]
    gen = " and every generated position" if result.meta.get("generated") else ""
    how = "the class mean" if result.meta.get("pairing", "class_mean") == "class_mean" else "paired source prompts"
    claim = (f"patching {name} states ({how}) into the target prompts at {where}{gen} raises {result.target} in the "
             f"generated text more than random patches of the same norm (cell chosen on {n_sel} prompts, effect "
             f"measured on {n_rep} others)") if significant else None
    over = "over random patches" if kind else "from the unpatched output (no random control)"
    findings = [Finding(
        kind="patching", claim=claim, controls=controls,
        observation=Observation(
            metric=f"{result.target} change {over}, {name} patched at {where}{gen} (chosen on {n_sel} prompts among "
                   f"{c.n_cells} cells, reported on {n_rep} held-out prompts)",
            value=float(est.point), n=int(c.n), unit="prompts",
            interval=(float(est.lo), float(est.hi)) if np.isfinite([est.lo, est.hi]).all() else None,
            p_value=float(p) if np.isfinite(p) else None, n_searched=int(c.n_cells)),
    )]
    findings += _step1(t, name, kind, c, where, gen, result.target, n_boot, seed, Finding, Observation)
    summary = (f"{name}: {where} chosen on {n_sel} prompts; held-out effect {est.point:.3g} [{est.lo:.3g}, "
               f"{est.hi:.3g}] {over}, p={p:.2g}, n={c.n} prompts")
    return findings, summary


def _step1(t: Any, name: str, kind: str | None, c: Any, where: str, gen: str, target: str, n_boot: int, seed: int,
           Finding: Any, Observation: Any) -> list[Any]:  # noqa: N803
    """The next-token view of the chosen cell on the same report prompts: an observation."""
    if not np.isfinite(t["step1_change"].to_numpy(float)).any():
        return []
    e = prompt_effects(steering_view(t, "step1_change"), name, kind)
    col = (c.layer, 1.0)
    if col not in e.columns:
        return []
    v = e.loc[e.index.isin(list(c.report_prompts)), col].to_numpy(float)
    v = v[np.isfinite(v)]
    if not v.size:
        return []
    est = bootstrap(v, n_boot=n_boot, seed=seed)
    p = paired_test(v, "greater")
    over = "over random patches" if kind else "from the unpatched forward"
    return [Finding(kind="patching", observation=Observation(
        metric=f"step-1 view: log-odds of {target} tokens at the first generated token, change {over}, {name} "
               f"patched at {where}{gen} (the cell chosen above, same {v.size} report prompts)",
        value=float(est.point), n=int(v.size), unit="prompts",
        interval=(float(est.lo), float(est.hi)) if np.isfinite([est.lo, est.hi]).all() else None,
        p_value=float(p) if np.isfinite(p) else None, n_searched=1))]


def _unsplittable(result: Any, name: str, view: Any, cells: Any, kind: str | None, Control: Any, Finding: Any,  # noqa: N803
                  Observation: Any) -> list[Any]:  # noqa: N803
    """One target prompt: nothing to hold out, so the best cell is an observation that cannot ship."""
    e = prompt_effects(view, name, kind)
    means = e.mean(axis=0)
    best = means.idxmax()
    layer, pos = _cell_name(cells, best[0])
    return [Finding(kind="patching", controls=[
        Control(name="heldout_selection", value=None, passed=None,
                note=f"1 target prompt: nothing to hold out, the value is the best of {len(means)} cells searched")],
        observation=Observation(metric=f"{result.target} change, {name} patched at layer {layer}, positions {pos} "
                                       f"(best of {len(means)} cells, not held out)",
                                value=float(means[best]), n=1, unit="prompts", n_searched=int(len(means))))]
