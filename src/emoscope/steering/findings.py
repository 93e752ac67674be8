"""The ``steering`` finding of a sweep: its best cell chosen on half the prompts, judged against
random vectors put through the same search.

A sweep searches many (layer, strength) cells, and the largest effect among them is the maximum of
what was searched. A direction's advantage in a cell belongs to the direction, so it comes back on
any other prompts: held-out prompts alone do not make the random vectors a fair comparison for the
cell that was chosen. So the unit of the random control is the draw (``emoscope.core.draws``):

1. Every entity — the vector and each random vector of each kind — has, per prompt (mean over
   seeds) and cell, its target change from the prompt's unsteered output in the intended direction
   (``sign(strength) * target_change``: raising the target at a positive strength, lowering it at a
   negative one).
2. The prompts are split at random (``seed``) into a selection half and a report half. Each entity
   chooses, on the selection half, its best cell among the cells whose *own* outputs there mostly
   stay fluent (collapsed plus explosive share below ``MAX_BROKEN``, counted on the prompts whose
   unsteered output is intact, ``regimes.intact_at_baseline``: a prompt the model loops on with no
   steering says nothing about whether steering broke it; every cell when none is fluent), and
   its value is its mean on the report half at that cell. The vector's value is the candidate;
   each random vector's value is one sample of the null.
3. ``random_vectors``: the candidate against the draws of each kind that ran
   (``core.draws.draw_test``: a prediction-interval test with its assumption stated, the rank
   beside it); it passes only when every kind is beaten. The recorded p is the worst over kinds.
   ``Observation.value`` is the candidate's excess over the draws' mean of the judged kind
   (isotropic when it ran) with the 95% prediction interval of one more draw around it.
4. ``heldout_selection``, ``multi_token_outputs`` and ``fluency`` (the candidate's outputs at its
   chosen cell on the report half) and ``seed_spread`` (the whole search, candidate and draws,
   re-run over ``SPREAD_SEEDS`` prompt splits: the excess keeps its sign and its sd stays below
   ``SEED_SD_SHARE`` × |mean|).

>>> findings, summary = steering_findings(result, alpha=0.05)   # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from emoscope.core.draws import (
    DEFAULT_DRAW_TEST,
    DrawTest,
    draw_test,
    draws_figure,
    heldout_search,
    split_units,
)
from emoscope.core.stats import Interval, bootstrap, paired_test
from emoscope.errors import InputError
from emoscope.steering.regimes import (
    BROKEN,
    MIN_MEAN_TOKENS,
    RANDOM_KINDS,
    intact_at_baseline,
    judged_kind,
    random_rows,
)

__all__ = ["EntityTable", "DrawSearch", "SeedSpread", "entity_table", "search_draws", "seed_spread",
           "steering_findings", "steering_draw_figures", "combine_passed", "output_checks", "random_control", "MAX_BROKEN",
           "SPREAD_SEEDS", "SEED_SD_SHARE"]

MAX_BROKEN = 0.5  # a candidate cell: below this share of collapsed or explosive outputs on the selection half
SPREAD_SEEDS = 5  # prompt splits the seed_spread control re-runs the whole search over
SEED_SD_SHARE = 0.5  # seed_spread passes when the sd of the excess over seeds is below this x |mean|


@dataclass(frozen=True)
class EntityTable:
    """The values one search runs on: ``values`` and ``broken``, ``(E, U, C)`` = entity (the
    vector first, then the draws) × prompt × cell; ``kinds[e]``: ``""`` for the vector, else the
    draw's random kind."""

    vector: str
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    prompts: np.ndarray  # (U,) prompt ids
    cells: tuple[tuple[Any, float], ...]  # (layer, strength) per cell
    values: np.ndarray  # (E, U, C) intended-direction change, mean over seeds
    broken: np.ndarray  # (E, U, C) share of collapsed or explosive outputs (NaN: the unsteered output is broken)

    def draws_of(self, kind: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.kinds) == kind)


def entity_table(table: pd.DataFrame, vector: str, kinds: Sequence[str] = RANDOM_KINDS,
                 value: str = "target_change") -> EntityTable:
    """The vector and its random draws of ``kinds`` from a sweep ``table`` (strength != 0), on
    the vector's prompts and cells."""
    vec = table[(table["kind"] == "vector") & (table["vector"] == vector) & (table["strength"] != 0)]
    if not len(vec):
        raise InputError(f"no steered rows of vector {vector!r} in the sweep table")
    parts, kind_of = [vec.assign(_kind="")], {vector: ""}
    for k in kinds:
        r = random_rows(table, k, vector)
        r = r[r["strength"] != 0]
        if len(r):
            parts.append(r.assign(_kind=k))
            kind_of.update(dict.fromkeys(r["vector"].astype(str).unique(), k))
    t = pd.concat(parts)
    names = tuple(dict.fromkeys([vector, *[n for n in kind_of if n != vector]]))
    prompts = np.sort(vec["prompt_id"].unique())
    cells = tuple(dict.fromkeys(zip(vec["layer"].tolist(), vec["strength"].astype(float).tolist(), strict=True)))
    e_idx = pd.Index(names).get_indexer(t["vector"].astype(str))
    u_idx = pd.Index(prompts).get_indexer(t["prompt_id"])
    c_idx = pd.MultiIndex.from_tuples(cells).get_indexer(
        pd.MultiIndex.from_arrays([t["layer"], t["strength"].astype(float)]))
    ok = (e_idx >= 0) & (u_idx >= 0) & (c_idx >= 0)
    shape = (len(names), len(prompts), len(cells))
    flat = np.ravel_multi_index((e_idx[ok], u_idx[ok], c_idx[ok]), shape)
    n = np.bincount(flat, minlength=int(np.prod(shape))).astype(float)
    signed = np.sign(t["strength"].to_numpy(float)) * t[value].to_numpy(float)
    fin = np.isfinite(signed[ok])
    s = np.bincount(flat[fin], weights=signed[ok][fin], minlength=n.size)
    nf = np.bincount(flat[fin], minlength=n.size).astype(float)
    brk = t["regime"].isin(BROKEN).to_numpy(float)[ok] if "regime" in t else np.zeros(int(ok.sum()))
    counted = intact_at_baseline(table, t).to_numpy(float)[ok]  # broken where steering broke it, not before
    b = np.bincount(flat, weights=brk * counted, minlength=n.size)
    nb = np.bincount(flat, weights=counted, minlength=n.size)
    with np.errstate(all="ignore"):
        values = np.where(nf > 0, s / np.maximum(nf, 1), np.nan).reshape(shape)
        broken = np.where(nb > 0, b / np.maximum(nb, 1), np.nan).reshape(shape)
    return EntityTable(vector, names, tuple(kind_of[nm] for nm in names), prompts, cells, values, broken)


@dataclass(frozen=True)
class DrawSearch:
    """The vector and every draw put through one search (see the module docstring)."""

    entities: EntityTable
    select: np.ndarray  # prompt indices (into entities.prompts) the cells were chosen on
    report: np.ndarray  # prompt indices the values are measured on
    cells: np.ndarray  # (E,) each entity's chosen cell
    held: np.ndarray  # (E,) each entity's report-half value at its chosen cell
    n_candidates: int  # cells fluent for the vector on the selection half
    tests: dict[str, DrawTest]  # per random kind that ran
    estimate: Interval  # the vector's own report-half change (bootstrap over prompts)
    p_change: float  # one-sided Wilcoxon of that change > 0 (the test when no random control ran)

    @property
    def vector(self) -> str:
        return self.entities.vector

    @property
    def layer(self) -> Any:
        return self.entities.cells[int(self.cells[0])][0]

    @property
    def strength(self) -> float:
        return float(self.entities.cells[int(self.cells[0])][1])

    @property
    def n_cells(self) -> int:
        return len(self.entities.cells)

    @property
    def select_prompts(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.entities.prompts[self.select])

    @property
    def report_prompts(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.entities.prompts[self.report])

    @property
    def judged(self) -> DrawTest | None:
        """The test the observation's value is reported against (isotropic when it ran)."""
        return next((self.tests[k] for k in RANDOM_KINDS if k in self.tests), None)

    @property
    def p(self) -> float:
        """The deciding p: the worst over the kinds that ran (the change test when none ran)."""
        ps = [t.p for t in self.tests.values()]
        return float(max(ps)) if ps else float(self.p_change)

    @property
    def floor(self) -> float | None:
        return float(max(t.floor for t in self.tests.values())) if self.tests else None

    @property
    def passed(self) -> bool | None:
        return combine_passed([t.passed for t in self.tests.values()]) if self.tests else None

    def draw_cells(self, kind: str) -> list[tuple[Any, float]]:
        return [self.entities.cells[int(c)] for c in self.cells[self.entities.draws_of(kind)] if c >= 0]


def combine_passed(outcomes: Sequence[bool | None]) -> bool | None:
    """All must pass: any ``False`` fails, else any ``None`` leaves it unjudged.

    >>> combine_passed([True, None]), combine_passed([True, False, None]), combine_passed([True])
    (None, False, True)
    """
    if any(o is False for o in outcomes):
        return False
    if any(o is None for o in outcomes):
        return None
    return True


def search_draws(ent: EntityTable, *, seed: int = 0, max_broken: float = MAX_BROKEN, test: str = DEFAULT_DRAW_TEST,
                 alpha: float = 0.05, n_boot: int = 2000) -> DrawSearch:
    """Split the prompts (``seed``), choose every entity's cell on the selection half among its
    own fluent cells, and judge the vector's report-half value against each kind's draws."""
    if len(ent.prompts) < 2:
        raise InputError(f"a held-out choice of {ent.vector}'s cell needs at least 2 prompts, got {len(ent.prompts)}")
    select, report = split_units(len(ent.prompts), seed)
    with warnings.catch_warnings():  # a cell with no selection output has an empty mean
        warnings.simplefilter("ignore", RuntimeWarning)
        broken = np.nanmean(ent.broken[:, select, :], axis=1)  # (E, C)
    allowed = np.where(np.isfinite(broken), broken, 1.0) < max_broken
    s = heldout_search(ent.values, select, report, allowed)
    tests = {}
    for k in RANDOM_KINDS:
        idx = ent.draws_of(k)
        if idx.size:
            tests[k] = draw_test(s.values[0], s.values[idx], alternative="greater", test=test, alpha=alpha,
                                 cells=len(ent.cells))
    mine = ent.values[0, report, s.cells[0]] if s.cells[0] >= 0 else np.zeros(0)
    mine = mine[np.isfinite(mine)]
    est = bootstrap(mine, n_boot=n_boot, seed=seed) if mine.size else Interval(np.nan, np.nan, np.nan)
    p_change = paired_test(mine, "greater") if mine.size else float("nan")
    return DrawSearch(ent, select, report, s.cells, s.values, int(allowed[0].sum()) if allowed[0].any()
                      else len(ent.cells), tests, est, float(p_change))


@dataclass(frozen=True)
class SeedSpread:
    """The excess over the judged kind's draws over several seeds of the prompt split."""

    seeds: tuple[int, ...]
    estimates: tuple[float, ...]
    cells: tuple[tuple[Any, float], ...]
    k: int  # draws the excess is taken over
    sd_share: float = SEED_SD_SHARE
    what: str = "random vectors"

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

    def note(self, cell_text: Any = None) -> str:
        top = max(set(self.cells), key=self.cells.count) if self.cells else None
        text = (f"excess over the draws' mean over {len(self.seeds)} seeds of the prompt split (seeds "
                f"{list(self.seeds)}), the whole search re-run each time for the candidate and the {self.k} "
                f"{self.what}: " + ", ".join(f"{x:.3g}" for x in self.estimates)
                + f"; mean {self.mean:.3g}, sd {self.sd:.3g}; ")
        if top is not None:
            where = cell_text(top) if cell_text else f"layer {top[0]}, strength {top[1]:g}"
            text += f"the same cell ({where}) was chosen in {self.cells.count(top)} of {len(self.cells)}; "
        return text + f"passes with the same sign in every seed and sd < {self.sd_share:g} x |mean|"


def seed_spread(ent: EntityTable, *, seed: int = 0, n_seeds: int = SPREAD_SEEDS, max_broken: float = MAX_BROKEN,
                what: str = "random vectors") -> SeedSpread:
    """Re-run :func:`search_draws` with prompt-split seeds ``seed .. seed + n_seeds - 1``; the
    excess is over the judged kind's draws (the signed change itself when no draws ran)."""
    seeds = tuple(int(seed) + j for j in range(int(n_seeds)))
    est, cells, k = [], [], 0
    for s in seeds:
        d = search_draws(ent, seed=s, max_broken=max_broken, n_boot=0)
        t = d.judged
        est.append(float(t.excess.point) if t is not None else float(d.estimate.point))
        k = t.k if t is not None else 0
        cells.append((d.layer, d.strength))
    return SeedSpread(seeds, tuple(est), tuple(cells), k, what=what)


def _outputs(table: pd.DataFrame, d: DrawSearch) -> pd.DataFrame:
    t = table[(table["kind"] == "vector") & (table["vector"] == d.vector) & (table["layer"] == d.layer)
              & (table["strength"] == d.strength) & table["prompt_id"].isin(list(d.report_prompts))]
    return t


def output_checks(report: pd.DataFrame, thresholds: Any, max_new_tokens: int | None, *,
                  what: str = "the chosen cell's outputs", baseline: str = "unsteered") -> list[Any]:
    """The ``multi_token_outputs`` and ``fluency`` controls of a chosen cell's report outputs."""
    from emoscope.audit import Control

    ppl = (float(np.nanmedian(report["ppl_ratio"])) if "ppl_ratio" in report and len(report)
           and np.isfinite(report["ppl_ratio"].to_numpy(float)).any() else float("nan"))
    broken = float(report["regime"].isin(BROKEN).mean()) if len(report) else float("nan")
    mean_tokens = float(report["n_tokens"].mean()) if len(report) else 0.0
    fluent = bool(np.isfinite(ppl) and ppl < thresholds.max_ppl_ratio and broken < MAX_BROKEN)
    multi = bool((max_new_tokens is None or max_new_tokens > 1) and mean_tokens >= MIN_MEAN_TOKENS)
    return [
        Control(name="multi_token_outputs", value=mean_tokens, threshold=f">= {MIN_MEAN_TOKENS:g} tokens",
                passed=multi, note=f"mean generated tokens of {what} on the report prompts"
                + (f" (up to {max_new_tokens})" if max_new_tokens else "")
                + "; the effect must be seen in multi-token text, not one next-token step"),
        Control(name="fluency", value=ppl, passed=fluent, threshold=thresholds.max_ppl_ratio,
                note=f"median perplexity ratio to the {baseline} output on the report prompts; {broken:.0%} "
                     "collapsed or explosive"),
    ]


def random_control(d: DrawSearch, *, name: str, draws: str, massive_note: str = "") -> Any:
    """The random-draw control of a search: worst p over kinds, passes when every kind is beaten."""
    from emoscope.audit import Control

    if not d.tests:
        return Control(name=name, value=None, passed=None,
                       note=f"no {draws} ran (n_random=0): the effect is the signed change from the unsteered "
                            f"output, not a change over {draws}")
    parts = [f"{kind}: " + t.describe(f"{kind} {draws}") for kind, t in d.tests.items()]
    cells = {k: d.draw_cells(k) for k in d.tests}
    moved = [f"the {k} draws chose {len(set(c))} distinct cell{'s' * (len(set(c)) != 1)}"
             for k, c in cells.items() if c]
    note = ("; ".join(parts) + ("; " + ", ".join(moved) if moved else "")
            + f"; passes only when every kind that ran is beaten (recorded p: the worst, {d.p:.3g})" + massive_note)
    return Control(name=name, value=float(d.p), passed=d.passed, threshold=d.judged.alpha, note=note)


def steering_findings(result: Any, *, alpha: float = 0.05, seed: int = 0, max_new_tokens: int | None = None,
                      massive_dims: Mapping[int, Sequence[int]] | None = None, n_seeds: int = SPREAD_SEEDS,
                      n_boot: int = 2000, test: str = DEFAULT_DRAW_TEST,
                      vectors: Sequence[str] | None = None) -> tuple[list[Any], str]:
    """The ``steering`` findings of a finished sweep (a ``SteeringResult``, or anything with
    ``table``, ``success``, ``target`` and ``thresholds``) and a one-line summary.

    Per vector (all of them, or ``vectors``): the held-out finding (a claim when every random kind
    that ran is beaten; the deciding p is recorded either way) and an observation of the change at
    ``+|s|`` minus at ``-|s|`` in the chosen layer. ``massive_dims`` (``{layer: [dims]}``) adds the
    caveat that no random kind is neutral there.
    """
    from emoscope.audit import Control, Finding, Observation

    t, s = result.table, result.success
    if vectors is None and not len(s):
        return [], "no steered cells"
    names = [str(n) for n in s["vector"].unique()] if vectors is None else list(vectors)
    kinds = [k for k in RANDOM_KINDS if len(random_rows(t, k))]
    main = judged_kind(t)
    findings: list[Any] = []
    summary = ""
    for name in names:
        g = s[s["vector"] == name] if len(s) else s
        ent = entity_table(t, name, kinds)
        if len(ent.prompts) < 2:
            findings += _unsplittable(result, name, g, len(ent.prompts), Control, Finding, Observation)
            continue
        d = search_draws(ent, seed=seed, test=test, alpha=alpha, n_boot=n_boot)
        n_sel, n_rep = len(d.select), len(d.report)
        dims = list((massive_dims or {}).get(d.layer, []))
        massive = (f"; layer {d.layer} has massive dimensions {dims}: neither random kind is neutral there "
                   "(isotropic draws avoid those dimensions, covariance-matched ones land on them)") if dims else ""
        spread = seed_spread(ent, seed=seed, n_seeds=n_seeds)
        controls = [
            random_control(d, name="random_vectors", draws="random vectors of the same norm", massive_note=massive),
            Control(name="heldout_selection", value=float(d.held[0]), passed=True,
                    note=f"cell chosen on {n_sel} prompts, reported on {n_rep} (among {d.n_candidates} of "
                         f"{d.n_cells} cells mostly fluent on the selection prompts); every random draw made the "
                         "same choice among its own fluent cells"),
            *output_checks(_outputs(t, d), result.thresholds, max_new_tokens),
            Control(name="seed_spread", value=spread.sd, passed=spread.passed,
                    threshold=f"same sign, sd < {SEED_SD_SHARE:g} x |mean|", note=spread.note()),
        ]
        j = d.judged
        direction = "raises" if d.strength > 0 else "lowers"
        claim = (f"steering with {name} at layer {d.layer}, strength {d.strength:g} {direction} {result.target} more "
                 f"than random vectors of the same norm put through the same search, with fluent text (cell chosen on "
                 f"{n_sel} prompts, effect measured on {n_rep} others)") if d.passed else None
        est = d.estimate
        if j is not None:
            value, iv = j.excess.point, (j.excess.lo, j.excess.hi)
            metric = (f"{result.target} change in the intended direction, {name} at layer {d.layer}, strength "
                      f"{d.strength:g}, minus the mean of {j.k} {main} random vectors each at its own chosen cell "
                      f"(cells chosen on {n_sel} prompts among {d.n_cells}, reported on {n_rep} held-out prompts; "
                      f"interval: 95% prediction range of one more draw)")
        else:
            value, iv = est.point, (est.lo, est.hi)
            metric = (f"{result.target} change from baseline (no random control), {name} at layer {d.layer}, "
                      f"strength {d.strength:g} (chosen on {n_sel} prompts among {d.n_cells} cells, reported on "
                      f"{n_rep} held-out prompts)")
        findings.append(Finding(
            kind="steering", claim=claim, controls=controls,
            observation=Observation(
                metric=metric, value=float(value), n=int(n_rep), unit="prompts",
                interval=(float(iv[0]), float(iv[1])) if np.isfinite(iv).all() else None,
                p_value=float(d.p) if np.isfinite(d.p) else None, p_floor=d.floor, n_searched=int(d.n_cells)),
        ))
        findings += _gap(g, name, d.layer, abs(d.strength), result.target, Finding, Observation)
        summary = (f"{name}: layer {d.layer} strength {d.strength:g} chosen on {n_sel} prompts; held-out change "
                   f"{est.point:.3g} [{est.lo:.3g}, {est.hi:.3g}]"
                   + (f", excess over {j.k} {main} draws {j.excess.point:.3g} (z {j.z:.2g}), p={d.p:.2g}, rank "
                      f"{j.rank}/{j.k + 1}" if j is not None else " (no random control)") + f", n={n_rep} prompts")
    return findings, summary


def steering_draw_figures(result: Any, *, seed: int = 0, test: str = DEFAULT_DRAW_TEST,
                          alpha: float = 0.05) -> dict[str, Any]:
    """Per vector with random draws (keyed by its name): each draw's held-out value as a dot, the
    vector as a line."""
    t, s = result.table, result.success
    kinds = [k for k in RANDOM_KINDS if len(random_rows(t, k))]
    out = {}
    if not len(s) or not kinds:
        return out
    for name in s["vector"].unique():
        ent = entity_table(t, str(name), kinds)
        if len(ent.prompts) < 2:
            continue
        d = search_draws(ent, seed=seed, test=test, alpha=alpha, n_boot=0)
        out[str(name)] = draws_figure(
            d.tests, title=f"{name}: held-out {result.target} change at each entity's own chosen cell "
                           f"({len(d.report)} report prompts)", xlabel=f"{result.target} change, intended direction")
    return out


def _gap(g: pd.DataFrame, name: str, layer: int, strength: float, target: str, Finding: Any,  # noqa: N803
         Observation: Any) -> list[Any]:  # noqa: N803
    """v and -v at the same strength should move the target in opposite directions."""
    if not len(g):
        return []
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
