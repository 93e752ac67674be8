"""The ``patching`` finding of a sweep: its (layer, positions) cell chosen on half the target
prompts, judged against random patches put through the same search.

A sweep searches several cells; the best of them is the maximum of what was searched. A patch
read as a steering sweep (``effects.steering_view``) goes through the steering sweep's own search
(``emoscope.steering.findings``): the unit of the random control is the draw.

1. Every entity — the source patch and each random patch of each kind (isotropic, covariance-
   matched) — has per target prompt and cell its target change from the unpatched output.
2. The prompts are split at random (``seed``); each entity chooses its best cell on the selection
   half among its own mostly fluent cells, and its value is its report-half mean there. The source
   patch's value is the candidate; each random patch's is one draw of the null.
3. Controls, on the report half of the chosen cell:

   - ``random_patch``: the candidate against the draws of every kind that ran
     (``core.draws.draw_test``); passes when every kind is beaten; the p recorded is the worst;
   - ``neutral_source``: per prompt, the patch's target change minus the neutral-source patch's
     (the neutral class mean, or a neutral dataset, written at the same layer and positions); a
     specific alternative source, not a random draw, so a paired test over prompts answers it:
     passes when its one-sided Wilcoxon p < ``alpha`` and its interval is above 0;
   - ``multi_token_outputs`` and ``fluency``: as for steering;
   - ``seed_spread``: the whole search re-run over ``SPREAD_SEEDS`` prompt splits;
   - ``heldout_selection``: which prompts chose and which reported.

4. A second finding: the step-1 view (``step1_change``, the log-odds of target tokens at the first
   generated token) of every entity at its chosen cell on the same report prompts, judged against
   the draws the same way (excess with its prediction interval, rank among the draws), so the
   ledger shows where the next-token view and the multi-token effect disagree. It is a
   description, not a hypothesis: it can make no claim, so it records no p and does not enter the
   run's correction (counted there, it halved the power of the claim it sits beside: a patch
   planted at +4 draw sd shipped in 52% of simulated runs instead of the 80% the design needs).

>>> findings, summary = patching_findings(result, alpha=0.05)    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emoscope.core.draws import DEFAULT_DRAW_TEST, draw_test
from emoscope.core.stats import bootstrap, paired_test
from emoscope.patching.effects import cells_of, report_effects, steering_view
from emoscope.steering.findings import (
    SEED_SD_SHARE,
    SPREAD_SEEDS,
    DrawSearch,
    entity_table,
    output_checks,
    random_control,
    search_draws,
    seed_spread,
)
from emoscope.steering.regimes import RANDOM_KINDS, random_rows

__all__ = ["patching_findings", "patch_draw_figures"]


def _cell_name(cells: Any, idx: int) -> tuple[int, str]:
    row = cells.iloc[int(idx)]
    return int(row["layer"]), str(row["positions"])


def _search(t: Any, name: str, *, seed: int, test: str, alpha: float, n_boot: int) -> tuple[Any, list[str], DrawSearch]:
    view = steering_view(t)
    kinds = [k for k in RANDOM_KINDS if len(random_rows(view, k))]
    ent = entity_table(view, name, kinds)
    return view, kinds, search_draws(ent, seed=seed, test=test, alpha=alpha, n_boot=n_boot)


def patching_findings(result: Any, *, alpha: float = 0.05, seed: int = 0, max_new_tokens: int | None = None,
                      n_seeds: int = SPREAD_SEEDS, n_boot: int = 2000,
                      test: str = DEFAULT_DRAW_TEST) -> tuple[list[Any], str]:
    """The ``patching`` findings of a finished sweep (a ``PatchResult``, or anything with
    ``table``, ``target``, ``thresholds`` and ``meta``) and a one-line summary."""
    from emoscope.audit import Control, Finding, Observation

    t, th = result.table, result.thresholds
    pat = t[t["kind"] == "patch"]
    if not len(pat):
        return [], "no patched rows"
    name = str(pat["source"].iloc[0])
    cells = cells_of(t)
    n_prompts = int(pat["prompt_id"].nunique())
    if n_prompts < 2:
        return _unsplittable(result, name, cells, Control, Finding, Observation), "one target prompt"
    view, kinds, d = _search(t, name, seed=seed, test=test, alpha=alpha, n_boot=n_boot)
    layer, pos = _cell_name(cells, d.layer)
    report = pat[(pat["layer"] == layer) & (pat["positions"] == pos) & pat["prompt_id"].isin(list(d.report_prompts))]
    n_sel, n_rep = len(d.select), len(d.report)
    where = f"layer {layer}, positions {pos}"
    random_ctl = random_control(d, name="random_patch", draws="random patches (a seeded direction scaled, column "
                                "by column, to the norm of the (source - clean target) delta it replaces)")

    dn, nest = report_effects(t, d.layer, list(d.report_prompts), n_boot=n_boot, seed=seed)
    if len(dn) and np.isfinite(dn).any():
        p_neu = paired_test(dn, "greater")
        neutral_value = float(d.estimate.point - np.nanmean(dn))  # the neutral patch's own change
        neutral_ok = bool(np.isfinite(p_neu) and p_neu < alpha and np.isfinite(nest.lo) and nest.lo > 0)
        neutral_ctl = Control(
            name="neutral_source", value=neutral_value, passed=neutral_ok, threshold=alpha,
            note=f"patching the neutral source ({result.meta.get('neutral') or 'neutral'}) at the same layer and "
                 f"positions changes {result.target} by {neutral_value:.3g} from the unpatched output; the source "
                 f"patch minus the neutral patch per report prompt: {nest.point:.3g} [{nest.lo:.3g}, {nest.hi:.3g}], "
                 f"one-sided Wilcoxon p={p_neu:.2g} (n={int(np.isfinite(dn).sum())}; one specific alternative "
                 f"source, so the prompt is the unit); passes when p < {alpha:g} and the interval is above 0")
    else:
        neutral_ctl = Control(name="neutral_source", value=None, passed=None,
                              note="no neutral-source patch ran: what the source says is not separated from "
                                   "patching in any other text")
    spread = seed_spread(d.entities, seed=seed, n_seeds=n_seeds, what="random patches")
    controls = [
        random_ctl,
        neutral_ctl,
        *output_checks(report, th, max_new_tokens, what="the chosen cell's patched outputs", baseline="unpatched"),
        Control(name="seed_spread", value=spread.sd, passed=spread.passed,
                threshold=f"same sign, sd < {SEED_SD_SHARE:g} x |mean|",
                note=spread.note(lambda c: "layer {}, positions {}".format(*_cell_name(cells, c[0])))),
        Control(name="heldout_selection", value=float(d.held[0]), passed=True,
                note=f"cell chosen on {n_sel} prompts, reported on {n_rep} (among {d.n_candidates} of {d.n_cells} "
                     "cells mostly fluent on the selection prompts); every random patch made the same choice among "
                     "its own fluent cells"),
    ]
    gen = " and every generated position" if result.meta.get("generated") else ""
    how = "the class mean" if result.meta.get("pairing", "class_mean") == "class_mean" else "paired source prompts"
    claim = (f"patching {name} states ({how}) into the target prompts at {where}{gen} raises {result.target} in the "
             f"generated text more than random patches of the same norm put through the same search (cell chosen on "
             f"{n_sel} prompts, effect measured on {n_rep} others)") if d.passed else None
    j, est = d.judged, d.estimate
    if j is not None:
        value, iv = j.excess.point, (j.excess.lo, j.excess.hi)
        metric = (f"{result.target} change, {name} patched at {where}{gen}, minus the mean of {j.k} {kinds[0]} random "
                  f"patches each at its own chosen cell (chosen on {n_sel} prompts among {d.n_cells} cells, reported "
                  f"on {n_rep} held-out prompts; interval: 95% prediction range of one more draw)")
    else:
        value, iv = est.point, (est.lo, est.hi)
        metric = (f"{result.target} change from the unpatched output (no random control), {name} patched at "
                  f"{where}{gen} (chosen on {n_sel} prompts among {d.n_cells} cells, reported on {n_rep} held-out "
                  "prompts)")
    findings = [Finding(
        kind="patching", claim=claim, controls=controls,
        observation=Observation(
            metric=metric, value=float(value), n=int(n_rep), unit="prompts",
            interval=(float(iv[0]), float(iv[1])) if np.isfinite(iv).all() else None,
            p_value=float(d.p) if np.isfinite(d.p) else None, p_floor=d.floor, n_searched=int(d.n_cells)),
    )]
    findings += _step1(t, name, kinds, d, where, gen, result.target, n_boot, seed, test, alpha, Finding, Observation)
    summary = (f"{name}: {where} chosen on {n_sel} prompts; held-out change {est.point:.3g} [{est.lo:.3g}, "
               f"{est.hi:.3g}]" + (f", excess over {j.k} draws {j.excess.point:.3g}, p={d.p:.2g}, rank {j.rank}/"
                                    f"{j.k + 1}" if j is not None else " (no random control)")
               + f", n={n_rep} prompts")
    return findings, summary


def patch_draw_figures(result: Any, *, seed: int = 0, test: str = DEFAULT_DRAW_TEST, alpha: float = 0.05) -> dict:
    """Each random patch's held-out value as a dot, the source patch as a line."""
    from emoscope.core.draws import draws_figure

    t = result.table
    pat = t[t["kind"] == "patch"]
    if not len(pat) or pat["prompt_id"].nunique() < 2:
        return {}
    name = str(pat["source"].iloc[0])
    _, _, d = _search(t, name, seed=seed, test=test, alpha=alpha, n_boot=0)
    if not d.tests:
        return {}
    return {"patch": draws_figure(d.tests, title=f"{name} patch: held-out {result.target} change at each "
                                                       f"entity's own chosen cell ({len(d.report)} report prompts)",
                                        xlabel=f"{result.target} change")}


def _step1(t: Any, name: str, kinds: list[str], d: DrawSearch, where: str, gen: str, target: str, n_boot: int,
           seed: int, test: str, alpha: float, Finding: Any, Observation: Any) -> list[Any]:  # noqa: N803
    """The next-token view of every entity at its own chosen cell on the same report prompts."""
    if not np.isfinite(t["step1_change"].to_numpy(float)).any():
        return []
    ent = entity_table(steering_view(t, "step1_change"), name, kinds)
    if ent.names != d.entities.names or ent.values.shape != d.entities.values.shape:
        return []
    e = np.arange(len(ent.names))
    at = ent.values[e[:, None], d.report[None, :], np.maximum(d.cells, 0)[:, None]]  # (E, R)
    with np.errstate(all="ignore"):
        held = np.where(np.isfinite(at).any(1), np.nanmean(np.where(np.isfinite(at), at, np.nan), axis=1), np.nan)
    mine = at[0][np.isfinite(at[0])]
    if not mine.size:
        return []
    est = bootstrap(mine, n_boot=n_boot, seed=seed)
    tests = {k: draw_test(held[0], held[ent.draws_of(k)], test=test, alpha=alpha, cells=d.n_cells) for k in kinds}
    if tests:
        j = tests[kinds[0]]
        value, iv = j.excess.point, (j.excess.lo, j.excess.hi)
        ranks = ", ".join(f"rank {x.rank} of {len(x.draws) + 1} among {k} draws" for k, x in tests.items())
        over = (f"minus the mean of {j.k} {kinds[0]} random patches, each at its own chosen cell; {ranks}; "
                "a description beside the claim, not a test")
    else:
        value, iv = est.point, (est.lo, est.hi)
        over = "change from the unpatched forward; a description, not a test"
    return [Finding(kind="patching", observation=Observation(
        metric=f"step-1 view: log-odds of {target} tokens at the first generated token, {name} patched at "
               f"{where}{gen}, {over} (the cells chosen above, same {mine.size} report prompts)",
        value=float(value), n=int(mine.size), unit="prompts",
        interval=(float(iv[0]), float(iv[1])) if np.isfinite(iv).all() else None, n_searched=1))]


def _unsplittable(result: Any, name: str, cells: Any, Control: Any, Finding: Any,  # noqa: N803
                  Observation: Any) -> list[Any]:  # noqa: N803
    """One target prompt: nothing to hold out, so the best cell is an observation that cannot ship."""
    ent = entity_table(steering_view(result.table), name, [])
    means = ent.values[0].mean(axis=0)  # (cells,)
    best = int(np.nanargmax(means))
    layer, pos = _cell_name(cells, ent.cells[best][0])
    return [Finding(kind="patching", controls=[
        Control(name="heldout_selection", value=None, passed=None,
                note=f"1 target prompt: nothing to hold out, the value is the best of {len(means)} cells searched")],
        observation=Observation(metric=f"{result.target} change, {name} patched at layer {layer}, positions {pos} "
                                       f"(best of {len(means)} cells, not held out)",
                                value=float(means[best]), n=1, unit="prompts", n_searched=int(len(means))))]
