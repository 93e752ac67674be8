"""The numbers behind an introspection finding: one (layer, strength) cell, chosen on half the
concepts and reported on the other half, compared with random vectors as distributions, with its
spread over concept splits and random-vector subsets.

What the cell is chosen on, and why: the per-concept introspection score (detection shift −
control shift) at each cell. The random vectors play no part in the choice, so the Mann-Whitney
test of the report concepts against the random vectors at the chosen cell is not biased by the
search. (Choosing on "score minus the cell's mean random score" would look at the random vectors
while choosing and then test against the same random vectors.)

- value, interval, p: ``core.stats.heldout_select`` on the ``(n_concepts, n_cells)`` score matrix:
  the best cell on the selection half; its mean, bootstrap interval and one-sided Wilcoxon
  signed-rank p (score > 0) on the report half. When the cell is fixed (the user gave the focus
  layer and strength, or only one cell was swept) nothing is searched (``n_searched = 1``) and
  every concept is reported.
- random vectors: Mann-Whitney U (``core.stats.unpaired_test``, one-sided, concepts > random);
  unit: one vector's introspection score at the chosen cell; the report concepts against the
  isotropic random vectors (this judges the finding) and against the covariance-matched ones
  (reported beside it). A rank test has a floor: with ``n1`` concepts and ``n2`` random vectors
  and no ties, no p-value is below ``1 / C(n1 + n2, n1)``; when that floor is not below
  ``alpha`` the control cannot pass and is left unjudged.
- seed spread: the held-out score over ``n_splits`` seeds of the concept split, and the concept
  mean minus the random mean over ``n_splits`` subsets of half the isotropic random vectors (the
  random-seed spread, from the vectors already run: no new draws). It passes when every sign
  agrees with the reported one and the sd over splits is below ``SPREAD_SHARE`` × |score|.

>>> rng = np.random.default_rng(0)
>>> rows = [{"condition": c, "vector": f"{c}{i}", "layer": 1, "relative_depth": 0.5, "strength": s,
...          "detection_shift": x, "control_shift": 0.0, "score": x}
...         for c, n, mu in (("concept", 24, 1.0), ("random", 10, 0.0)) for i in range(n)
...         for s in (2.0, 4.0) for x in [rng.normal(mu, 0.5)]]
>>> h = heldout_finding(pd.DataFrame(rows), seed=0)
>>> h.n_searched, len(h.select), h.n, h.random.passed
(2, 12, 12, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from emoscope.core.stats import (
    Interval,
    bootstrap,
    heldout_select,
    min_pvalue,
    paired_test,
    unpaired_test,
)
from emoscope.errors import InputError
from emoscope.introspection.tables import RANDOM_CONDITIONS, score_matrix

__all__ = ["ALPHA", "SPREAD_SHARE", "N_SPLITS", "RandomComparison", "HeldOutFinding", "compare_random",
           "heldout_finding"]

#: level of the random-vector test
ALPHA = 0.05
#: seed spread passes when the sd of the held-out score over concept splits is below this share of |score|
SPREAD_SHARE = 0.5
#: seeds of the concept split (and random-vector subsets) behind the seed spread
N_SPLITS = 5


def _rank_floor(n1: int, n2: int) -> float:
    """The smallest one-sided Mann-Whitney p-value ``n1`` against ``n2`` values can give (exact, no
    ties): one arrangement among ``C(n1 + n2, n1)``."""
    if n1 < 1 or n2 < 1:
        return float("nan")
    return min_pvalue(min(math.comb(n1 + n2, n1) - 1, 10**300))


@dataclass(frozen=True)
class RandomComparison:
    """Concept scores against random-vector scores at one cell (one vector = one unit)."""

    condition: str
    p_value: float
    floor: float
    n_concepts: int
    n_random: int
    concept_mean: float
    random_mean: float
    random_min: float
    random_max: float
    alpha: float = ALPHA

    @property
    def kind(self) -> str:
        return RANDOM_CONDITIONS.get(self.condition, self.condition)

    @property
    def passed(self) -> bool | None:
        """``p < alpha``; ``None`` when the test cannot decide (no p, or a floor at or above alpha)."""
        if not np.isfinite(self.p_value) or not self.floor < self.alpha:
            return None
        return bool(self.p_value < self.alpha)

    def describe(self) -> str:
        text = (f"Mann-Whitney U, one-sided (concepts > random), unit = one vector's introspection score: "
                f"{self.n_concepts} concept{'s' * (self.n_concepts != 1)} (mean {self.concept_mean:+.3g}) vs "
                f"{self.n_random} {self.kind} "
                f"random vectors (mean {self.random_mean:+.3g}, range [{self.random_min:+.3g}, "
                f"{self.random_max:+.3g}]), p = {self.p_value:.3g}; rank design: no p below "
                f"1/C({self.n_concepts + self.n_random},{self.n_concepts}) = {self.floor:.3g}")
        if not self.floor < self.alpha:
            text += f", so p < {self.alpha:g} is out of reach with these counts (not judged)"
        return text


def compare_random(concept_scores: Any, random_scores: Any, *, condition: str = "random",
                   alpha: float = ALPHA) -> RandomComparison:
    """The random-vector control at one cell: ``unpaired_test(concept, random, "greater")``.

    >>> compare_random([3, 4, 5, 6, 7], [0, 1, 2, 0.5, 1.5, 2.5]).passed
    True
    >>> compare_random([3.0], [0.0, 1.0, 2.0]).passed is None   # floor 1/4: cannot pass
    True
    """
    c = np.asarray(concept_scores, dtype=np.float64)
    r = np.asarray(random_scores, dtype=np.float64)
    c, r = c[np.isfinite(c)], r[np.isfinite(r)]
    nan = float("nan")
    return RandomComparison(
        condition=condition, p_value=unpaired_test(c, r, "greater"), floor=_rank_floor(c.size, r.size),
        n_concepts=int(c.size), n_random=int(r.size), concept_mean=float(c.mean()) if c.size else nan,
        random_mean=float(r.mean()) if r.size else nan, random_min=float(r.min()) if r.size else nan,
        random_max=float(r.max()) if r.size else nan, alpha=alpha)


@dataclass(frozen=True)
class HeldOutFinding:
    """The reported cell and everything its controls are judged on (see the module doc)."""

    layer: int
    relative_depth: float
    strength: float
    n_searched: int
    search: str
    select: tuple[str, ...]
    report: tuple[str, ...]
    score: Interval
    p_value: float
    detection_shift: Interval
    control_shift: Interval
    random: RandomComparison | None
    random_cov: RandomComparison | None
    splits: pd.DataFrame = field(repr=False)
    spread_sd: float
    spread_threshold: float
    spread_passed: bool | None
    spread_note: str

    @property
    def n(self) -> int:
        """Report concepts (the units the value is computed on)."""
        return len(self.report)

    @property
    def judged_against(self) -> RandomComparison | None:
        """The comparison that judges the finding: isotropic random vectors when they ran."""
        return self.random if self.random is not None else self.random_cov

    @property
    def selection_note(self) -> str:
        if self.select:
            return (f"chosen on {len(self.select)} concepts, reported on {self.n}: the best of {self.n_searched} "
                    f"cells ({self.search}) by mean score on a seeded half of the concepts; value, interval and "
                    "p from the other half only")
        return f"nothing searched ({self.search}); reported on all {self.n} concepts"

    def table(self) -> pd.DataFrame:
        """``introspect_heldout``: the reported row, the random comparisons, the concept splits
        and the random-vector subsets behind the seed spread."""
        rows = [{"kind": "reported", "seed": None, "layer": self.layer, "strength": self.strength,
                 "value": self.score.point, "lo": self.score.lo, "hi": self.score.hi, "p_value": self.p_value,
                 "n": self.n, "n_searched": self.n_searched}]
        for cmp in (self.random, self.random_cov):
            if cmp is not None:
                rows.append({"kind": f"vs_{cmp.condition}", "seed": None, "layer": self.layer,
                             "strength": self.strength, "value": cmp.concept_mean - cmp.random_mean,
                             "lo": cmp.random_min, "hi": cmp.random_max, "p_value": cmp.p_value,
                             "n": cmp.n_random, "n_searched": self.n_searched})
        out = pd.concat([pd.DataFrame(rows), self.splits], ignore_index=True) if len(self.splits) else pd.DataFrame(rows)
        return out.astype({"seed": "Int64", "layer": "Int64", "n": "Int64", "n_searched": "Int64"})

    def to_meta(self) -> dict[str, Any]:
        def cmp(c: RandomComparison | None) -> dict[str, Any] | None:
            return None if c is None else {"p_value": c.p_value, "floor": c.floor, "n_concepts": c.n_concepts,
                                           "n_random": c.n_random, "concept_mean": c.concept_mean,
                                           "random_mean": c.random_mean, "passed": c.passed}

        return {"layer": self.layer, "strength": self.strength, "n_searched": self.n_searched,
                "search": self.search, "select": list(self.select), "report": list(self.report),
                "score": list(self.score), "p_value": self.p_value, "random": cmp(self.random),
                "random_cov": cmp(self.random_cov), "spread_sd": self.spread_sd,
                "spread_threshold": self.spread_threshold, "spread_passed": self.spread_passed}


def _search_space(cells: list[tuple[int, float]], layer: int | None, strength: float | None) -> tuple[list[int], str]:
    idx = [i for i, (lay, s) in enumerate(cells)
           if (layer is None or lay == int(layer)) and (strength is None or s == float(strength))]
    if not idx:
        raise InputError(f"no swept cell at layer {layer}, strength {strength}")
    n_l, n_s = len({cells[i][0] for i in idx}), len({cells[i][1] for i in idx})
    if len(idx) == 1:
        given = layer is not None and strength is not None
        return idx, "the cell was fixed by the focus layer and strength" if given else "only one cell was swept"
    what = f"{n_l} layers × {n_s} strengths"
    if layer is not None:
        what += f" at the fixed layer {int(layer)}"
    if strength is not None:
        what += f" at the fixed strength {float(strength):g}"
    return idx, what


def heldout_finding(per_vector: pd.DataFrame, *, focus_layer: int | None = None, focus_strength: float | None = None,
                    fallback: tuple[int, float] | None = None, seed: int = 0, n_boot: int = 2000,
                    n_splits: int = N_SPLITS, alpha: float = ALPHA) -> HeldOutFinding:
    """The reported cell of a sweep's ``per_vector`` table (see the module doc).

    ``focus_layer`` / ``focus_strength``: what the user fixed (``None``: searched over).
    ``fallback``: the cell fixed before the data were seen, reported when the concepts cannot be
    split (fewer than 2).
    """
    if n_splits < 3:
        raise InputError(f"the seed spread needs at least 3 splits, got {n_splits}")
    scores, names, cells = score_matrix(per_vector, "concept")
    if not names:
        raise InputError("no concept rows to report")
    idx, search = _search_space(cells, focus_layer, focus_strength)
    n = len(names)
    if len(idx) > 1 and n < 2:
        pick = cells.index(fallback) if fallback in cells else idx[0]
        idx, search = [pick], "one concept cannot be split: the focus cell fixed before the data"
    if len(idx) == 1:
        cell = idx[0]
        sel, rep = np.array([], dtype=int), np.arange(n)
        est = bootstrap(scores[:, cell], n_boot=n_boot, seed=seed)
        p = paired_test(scores[:, cell], "greater")
    else:
        h = heldout_select(scores[:, idx], seed=seed, n_boot=n_boot)
        cell, sel, rep, est, p = idx[h.cell], h.select_units, h.report_units, h.estimate, h.p_value
    layer, strength = cells[cell]
    det = score_matrix(per_vector, "concept", "detection_shift")[0][rep, cell]
    ctl = score_matrix(per_vector, "concept", "control_shift")[0][rep, cell]
    at = per_vector[(per_vector.layer == layer) & (per_vector.strength == strength)]
    depth = float(at.relative_depth.iloc[0])
    reported = scores[rep, cell]
    comparisons = {cond: compare_random(reported, at[at.condition == cond].score, condition=cond, alpha=alpha)
                   if (at.condition == cond).any() else None for cond in RANDOM_CONDITIONS}

    # seed spread: held-out score over concept-split seeds; concept minus random mean over random subsets
    rows = []
    if n >= 2:
        for k in range(n_splits):
            h = heldout_select(scores[:, idx], seed=seed + k, n_boot=0)
            rows.append({"kind": "concept_split", "seed": seed + k, "layer": cells[idx[h.cell]][0],
                         "strength": cells[idx[h.cell]][1], "value": h.estimate.point, "p_value": h.p_value,
                         "n": h.n, "n_searched": len(idx)})
    rand = at[at.condition == "random"].score.to_numpy(float)
    if rand.size >= 3 and reported.size:
        rng = np.random.default_rng((seed, 2))
        m = max(2, rand.size // 2)
        for k in range(n_splits):
            sub = rand[rng.choice(rand.size, m, replace=False)]
            rows.append({"kind": "random_subset", "seed": k, "layer": layer, "strength": strength,
                         "value": float(reported.mean() - sub.mean()), "p_value": unpaired_test(reported, sub, "greater"),
                         "n": m, "n_searched": len(idx)})
    splits = pd.DataFrame(rows)
    sd, thr, passed, note = _spread(splits, est.point, reported, rand, searched=len(idx) > 1)
    return HeldOutFinding(
        layer=int(layer), relative_depth=depth, strength=float(strength), n_searched=len(idx), search=search,
        select=tuple(names[i] for i in sel), report=tuple(names[i] for i in rep), score=est, p_value=float(p),
        detection_shift=bootstrap(det, n_boot=n_boot, seed=seed), control_shift=bootstrap(ctl, n_boot=n_boot, seed=seed),
        random=comparisons["random"], random_cov=comparisons["random_cov"], splits=splits,
        spread_sd=sd, spread_threshold=thr, spread_passed=passed, spread_note=note)


def _signs(x: np.ndarray) -> str:
    return "".join("+" if v > 0 else "-" if v < 0 else "0" for v in x)


def _spread(splits: pd.DataFrame, score: float, reported: np.ndarray, rand: np.ndarray, *,
            searched: bool) -> tuple[float, float, bool | None, str]:
    thr = SPREAD_SHARE * abs(score) if np.isfinite(score) else float("nan")
    cs = splits[splits.kind == "concept_split"].value.to_numpy(float) if len(splits) else np.array([])
    cs = cs[np.isfinite(cs)]
    if cs.size < 3:
        return (float("nan"), thr, None,
                f"fewer than 3 concept splits with a value ({cs.size}): the spread needs at least 2 concepts")
    sd = float(cs.std(ddof=1))
    sign = np.sign(score)
    stable = bool(sign != 0 and np.all(np.sign(cs) == sign))
    what = ("held-out score over {} seeds of the concept split" if searched else
            "score on a seeded half of the concepts (the cell was fixed), over {} seeds").format(cs.size)
    note = (f"{what}: mean {cs.mean():+.3g}, sd {sd:.3g} "
            f"(threshold {SPREAD_SHARE:g} × |score| = {thr:.3g}), signs {_signs(cs)}")
    rs = splits[splits.kind == "random_subset"].value.to_numpy(float)
    if rs.size:
        full = float(reported.mean() - rand.mean())
        r_stable = bool(np.sign(full) != 0 and np.all(np.sign(rs) == np.sign(full)))
        stable = stable and r_stable
        m = int(splits[splits.kind == "random_subset"].n.iloc[0])
        note += (f"; random-seed spread, from the vectors already run (no new draws): concept mean − random mean "
                 f"over {rs.size} subsets of {m} of the {rand.size} isotropic random vectors in "
                 f"[{rs.min():+.3g}, {rs.max():+.3g}] (all {rand.size}: {full:+.3g}), signs {_signs(rs)}")
    else:
        note += f"; no random-seed spread (fewer than 3 isotropic random vectors, {rand.size})"
    passed = bool(stable and sd < thr)
    if not stable:
        note += "; a sign flips"
    return sd, thr, passed, note
