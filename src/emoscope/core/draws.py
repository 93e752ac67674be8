"""Random controls whose unit is the draw.

A random control (a random direction, a random head set, a random patch) answers one question:
*would a random draw, treated exactly the same way as the candidate, look this good?* So:

1. every draw goes through the candidate's own search (:func:`heldout_search`): the same
   candidate cells, the same filter (e.g. "mostly fluent"), chosen on the same selection units;
2. its value on the report units, at *its own* chosen cell, is one sample of the null;
3. the candidate's held-out value is judged by where it falls among those samples
   (:func:`draw_test`), never by a per-unit test against the draws' mean. (Each draw has an
   effect of its own, so with many units any single direction differs from the average
   direction; a per-prompt test answers a question nobody asked.)

Two tests, each exact under its stated assumption; the rank is reported in either case.

- ``rank``: ``p = (1 + #{draws at least as good}) / (k + 1)``. Distribution-free: it needs only
  that, under the null, the candidate is exchangeable with the draws (one more draw). Its floor is
  ``1 / (k + 1)``: with ``k`` draws no p-value is smaller, however strong the effect, so reaching
  ``alpha`` needs ``k >= floor(1 / alpha)`` draws (:func:`draws_needed`).
- ``interval`` (the default): a prediction-interval test from the draws' mean and sd,
  ``T = (x - mean) / (sd * sqrt(1 + 1/k))``. When the draws' held-out values are normal, ``T``
  follows Student's t with ``k - 1`` degrees of freedom. They need not be: a draw's held-out value
  is its effect at the cell *it chose* among ``C`` cells, so when draws differ in what they do
  (heavy-tailed effects per cell) that value is a maximum, skewed to the right, and a normal
  reference lets a decoy pass more often than ``alpha`` (measured: 6-7% at the 5% level with
  t3 effects over 12 cells). So the p-value is the larger of two upper tails: normal draws (exact)
  and draws whose held-out value is the maximum over ``C`` cells of Student-t effects with 3
  degrees of freedom (the search's own skew at its heaviest: a draw that picks its best cell
  without error). The second comes from a seeded Monte Carlo of ``T`` (200,000 samples per
  (k, C), shipped as a table, :func:`build_heavy_table`); an untabulated k uses the largest
  tabulated k below it and an untabulated C the smallest tabulated C above it (both
  conservative). The design's stated assumption: the draws' effects have tails no heavier than t
  with 3 df; the rank is reported beside the p, and ``emoscope placebo`` measures the ship rate on
  a model's own draws. Its floor is the table's smallest tail probability, ``2e-5``; it needs at
  least ``MIN_INTERVAL_DRAWS`` draws. The price of robustness: at k = 10 draws and 12 cells the
  candidate must lie about 2.9 draw sds above the draws' mean for p < 0.05 (1.9 if the draws were
  known to be normal).

When the draws do not vary at all (sd 0) no spread exists to judge by, and the rank decides.

>>> t = draw_test(3.0, [0.1, -0.4, 0.3, 0.0, -0.2, 0.5, -0.1, 0.2])
>>> t.rank, round(t.p_rank, 3), t.p < 0.01, t.passed
(1, 0.111, True, True)
>>> draw_test(3.0, [0.1, -0.4, 0.3, 0.0, -0.2, 0.5, -0.1, 0.2], cells=12).p > t.p   # the search skews the null
True
>>> draw_test(3.0, [0.1, -0.4, 0.3, 0.0, -0.2], test="rank").passed is None   # floor 1/6 > 0.05
True
>>> draws_needed("rank", 0.05)
20
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emoscope.core.stats import ALTERNATIVES, Interval
from emoscope.errors import InputError

__all__ = ["DRAW_TESTS", "DEFAULT_DRAW_TEST", "MIN_INTERVAL_DRAWS", "HEAVY_TAIL_DF", "DrawTest", "draw_test",
           "draws_needed", "HeldOutSearch", "heldout_search", "split_units", "draws_figure"]

DRAW_TESTS = ("interval", "rank")
DEFAULT_DRAW_TEST = "interval"
#: the fewest draws the interval test judges with (an sd from fewer says too little)
MIN_INTERVAL_DRAWS = 3
#: degrees of freedom of the heavy-tailed reference the interval test is calibrated against
HEAVY_TAIL_DF = 3


def _rank_p(x: float, draws: np.ndarray, alternative: str) -> tuple[int, float]:
    """(rank, p): rank 1 = better than every draw; ties count against the candidate."""
    k = draws.size
    ge = int(np.sum(draws >= x - 1e-12))
    le = int(np.sum(draws <= x + 1e-12))
    if alternative == "greater":
        return 1 + ge, (1 + ge) / (k + 1)
    if alternative == "less":
        return 1 + le, (1 + le) / (k + 1)
    pg, pl = (1 + ge) / (k + 1), (1 + le) / (k + 1)
    return (1 + ge if pg <= pl else 1 + le), min(1.0, 2 * min(pg, pl))


#: numbers of draws the heavy-tailed reference is tabulated for (any other k uses the largest
#: tabulated k below it: T's tails shrink as k grows, so that is conservative)
TABLE_KS = (*range(3, 21), 22, 25, 30, 35, 40, 50, 60, 80, 100, 150, 200)
#: numbers of cells searched the reference is tabulated for (any other C uses the smallest
#: tabulated C above it: the maximum over more cells is more skewed, so that is conservative)
TABLE_CS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
#: upper-tail probabilities the table gives T's quantiles at
TABLE_PS = tuple(float(p) for p in np.geomspace(0.5, 2e-5, 80))
_TABLE = "heavy_tail_t3.json"


def _t3_quantile_function() -> Any:
    """A fast inverse CDF of Student t with ``HEAVY_TAIL_DF`` df: exact values on a fine grid in
    log-odds, interpolated (the Monte Carlo needs hundreds of millions of draws)."""
    from scipy.special import stdtrit

    z = np.linspace(-40.0, 40.0, 40001)
    u = 1.0 / (1.0 + np.exp(-z))
    q = stdtrit(HEAVY_TAIL_DF, np.clip(u, 1e-300, 1 - 1e-16))

    def ppf(v: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            lz = np.log(v) - np.log1p(-v)
        return np.interp(lz, z, q)

    return ppf


def build_heavy_table(n_samples: int = 200_000, ks: Sequence[int] = TABLE_KS, cs: Sequence[int] = TABLE_CS,
                      seed: int = 20261207) -> dict:
    """Monte Carlo upper quantiles of ``T = (x - mean) / (sd sqrt(1 + 1/k))`` when the candidate
    and the ``k`` draws are i.i.d., each the maximum over ``C`` cells of Student-t effects with
    ``HEAVY_TAIL_DF`` df (``C = 1``: plain t3): ``{"k": [...], "c": [...], "p": [...], "q":
    [[[...]]]}`` with ``q[i][j][m]`` the value T exceeds with probability ``p[m]`` at ``k[i]``
    draws and ``c[j]`` cells. The maximum of C draws with CDF F has CDF F^C, so it is drawn as
    ``F^-1(U^(1/C))``. The shipped table was built with the defaults: ``python -m emoscope.core.draws``."""
    rng = np.random.default_rng(seed)
    ppf = _t3_quantile_function()
    probs = np.asarray(TABLE_PS)
    out = []
    for k in ks:
        u = rng.random((n_samples, k + 1))
        rows = []
        for c in cs:
            x = ppf(u ** (1.0 / c))
            d = x[:, 1:]
            t = (x[:, 0] - d.mean(1)) / (d.std(1, ddof=1) * math.sqrt(1 + 1 / k))
            if c == 1:  # symmetric: both tails estimate the upper one
                t = np.concatenate([t, -t])
            rows.append([float(f"{v:.5g}") for v in np.quantile(t, 1 - probs)])
        out.append(rows)
    return {"df": HEAVY_TAIL_DF, "n_samples": int(n_samples), "seed": int(seed), "k": [int(k) for k in ks],
            "c": [int(c) for c in cs], "p": [float(p) for p in probs], "q": out}


@functools.lru_cache(maxsize=1)
def _table() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import json
    from importlib import resources

    raw = json.loads(resources.files("emoscope.core").joinpath(_TABLE).read_text("utf-8"))
    return (np.asarray(raw["k"]), np.asarray(raw["c"]), np.log(np.asarray(raw["p"])),
            np.asarray(raw["q"], dtype=np.float64))


def _row(k: int, c: int) -> np.ndarray:
    ks, cs, _, q = _table()
    i = max(0, int(np.searchsorted(ks, k, side="right")) - 1)
    j = min(len(cs) - 1, int(np.searchsorted(cs, max(int(c), 1), side="left")))
    return q[i, j]


def _heavy_sf(t: float, k: int, c: int = 1) -> float:
    """P(T >= t) under the heavy reference (interpolated in log p; beyond the table's smallest
    probability that probability is returned, which is conservative; below its median, 1/2 or
    more: the lower half is taken from the symmetric C = 1 table, whose lower tail is heavier)."""
    logp = _table()[2]
    row = _row(k, c)  # quantiles fall as p falls
    if t <= row[0]:
        if c > 1:
            return max(0.5, _heavy_sf(t, k, 1))
        if t < 0:
            return 1.0 - _heavy_sf(-t, k, 1)
        return 0.5
    if t >= row[-1]:
        return float(np.exp(logp[-1]))
    return float(np.exp(np.interp(t, row, logp)))


def _heavy_quantile(upper_p: float, k: int, c: int = 1) -> float:
    return float(np.interp(math.log(upper_p), _table()[2][::-1], _row(k, c)[::-1]))


def _tail(t: float, k: int, c: int, alternative: str) -> tuple[float, float]:
    """(normal, heavy) p-values of T = ``t`` for ``alternative``: the upper tail for ``greater``
    (heavy reference: the maximum over ``c`` cells), the lower for ``less`` (the symmetric t3),
    twice the smaller for ``two-sided``."""
    from scipy.stats import t as student

    up = (float(student.sf(t, k - 1)), _heavy_sf(t, k, c))
    lo = (float(student.cdf(t, k - 1)), _heavy_sf(-t, k, 1))
    if alternative == "greater":
        return up
    if alternative == "less":
        return lo
    return min(1.0, 2 * min(up[0], lo[0])), min(1.0, 2 * min(up[1], lo[1]))


def _bounds(level: float, k: int, c: int) -> tuple[float, float]:
    """(upper, lower) ``level`` quantiles of T under the larger reference on each side."""
    from scipy.stats import t as student

    a = (1 - level) / 2
    q_norm = float(student.ppf(1 - a, k - 1))
    return max(q_norm, _heavy_quantile(a, k, c)), -max(q_norm, _heavy_quantile(a, k, 1))


def draws_needed(test: str, level: float) -> int:
    """The fewest draws with which ``test`` can give a p-value below ``level``.

    >>> draws_needed("rank", 0.05), draws_needed("rank", 0.05 / 6), draws_needed("interval", 0.001)
    (20, 120, 3)
    """
    if test not in DRAW_TESTS:
        raise InputError(f"unknown draw test {test!r}; use one of {', '.join(DRAW_TESTS)}")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    if test == "interval":
        return MIN_INTERVAL_DRAWS
    return int(math.floor(1.0 / level + 1e-9))


@dataclass(frozen=True)
class DrawTest:
    """The candidate's held-out value ``candidate`` among the draws' held-out values ``draws``.

    ``excess`` is the candidate minus the draws' mean with the 95% prediction half-width of one
    more draw around it (``lo > 0``: the candidate lies above where 97.5% of draws would), ``z``
    the excess in draw sds, ``p_interval`` the prediction-interval p (see the module doc),
    ``rank``/``p_rank`` its rank among the draws, ``floor`` the smallest p the deciding test can
    give, ``p`` the deciding p (``test``), ``passed``: ``p < alpha``, or ``None`` when the design
    cannot reach ``alpha`` at all (then :attr:`needed` says how many draws would)."""

    candidate: float
    draws: tuple[float, ...]
    alternative: str
    test: str
    alpha: float
    excess: Interval
    z: float
    p_interval: float
    p_interval_normal: float
    rank: int
    p_rank: float
    p: float
    floor: float
    spread: bool  # False when every draw has the same value
    cells: int = 1  # cells each draw's search chose among (the skew the heavy reference allows for)

    @property
    def k(self) -> int:
        return len(self.draws)

    @property
    def decided_by(self) -> str:
        """``interval`` or ``rank``: the test whose p decides (the rank when the draws do not vary)."""
        return "interval" if self.test == "interval" and self.spread else "rank"

    @property
    def reachable(self) -> bool:
        return bool(self.k >= 1 and self.floor < self.alpha)

    @property
    def passed(self) -> bool | None:
        if not self.reachable or not np.isfinite(self.p):
            return None
        return bool(self.p < self.alpha)

    @property
    def needed(self) -> int:
        """Draws the deciding test needs to reach ``alpha``."""
        return draws_needed("rank" if (self.test == "rank" or not self.spread) else "interval", self.alpha)

    @property
    def mean(self) -> float:
        return float(np.mean(self.draws)) if self.draws else float("nan")

    @property
    def sd(self) -> float:
        return float(np.std(self.draws, ddof=1)) if len(self.draws) > 1 else float("nan")

    def describe(self, draws: str = "random draws", searched: bool = True) -> str:
        """One paragraph for a control's note: the test, its assumption, the rank and its floor."""
        how = ("each put through the candidate's search (same cells, same filter, chosen on the selection units) "
               if searched else "each measured on the same units ")
        side = {"greater": "one-sided, above", "less": "one-sided, below", "two-sided": "two-sided"}[self.alternative]
        text = (f"unit: the draw. {self.k} {draws}, {how}give the null; held-out value {self.candidate:.3g} vs draws "
                f"mean {self.mean:.3g}, sd {self.sd:.3g} (range [{min(self.draws, default=float('nan')):.3g}, "
                f"{max(self.draws, default=float('nan')):.3g}]): excess {self.excess.point:.3g} "
                f"[{self.excess.lo:.3g}, {self.excess.hi:.3g}] (95% prediction half-width of one more draw), "
                f"z {self.z:.3g}. ")
        rank_floor = 1.0 / (self.k + 1) if self.k else float("nan")
        rank_text = (f"rank {self.rank} of {self.k + 1} (rank p {self.p_rank:.3g}; a rank among {self.k} draws cannot "
                     f"go below {rank_floor:.3g}, {draws_needed('rank', self.alpha)} draws reach p < {self.alpha:g} "
                     "without assumptions)")
        if self.test == "interval" and self.spread:
            heavy = (f"for draws whose value is the best of {self.cells} cells of Student-t ({HEAVY_TAIL_DF} df) "
                     "effects" if self.cells > 1 else f"for draws as heavy-tailed as Student t with {HEAVY_TAIL_DF} df")
            text += (f"Decided by the prediction-interval test ({side}): p {self.p:.3g}, the larger of its value for "
                     f"normal draws ({self.p_interval_normal:.3g}) and {heavy}; assumes the draws' effects have tails "
                     f"no heavier than t with {HEAVY_TAIL_DF} df; " + rank_text)
        else:
            why = "" if self.test == "rank" else "the draws do not vary, so no spread can judge: "
            text += f"Decided by the rank ({side}, distribution-free; {why}" + rank_text + ")"
        if self.passed is None:
            text += (f". With {self.k} draws the design cannot reach p < {self.alpha:g} (floor {self.floor:.3g}): "
                     f"at least {self.needed} draws are needed")
        return text


def draw_test(candidate: float, draws: Any, *, alternative: str = "greater", test: str = DEFAULT_DRAW_TEST,
              alpha: float = 0.05, level: float = 0.95, cells: int = 1) -> DrawTest:
    """Judge ``candidate`` (a held-out value) against ``draws`` (the same value for each random
    draw put through the same search over ``cells`` cells; 1 when nothing was searched).
    ``alternative``: the candidate is larger (``greater``), smaller (``less``) or either
    (``two-sided``). Non-finite draws are dropped.

    >>> t = draw_test(0.3, [0.1, 0.2, 0.25, 0.15, 0.3, 0.22])
    >>> t.rank, t.passed
    (2, False)
    """
    if alternative not in ALTERNATIVES:
        raise InputError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if test not in DRAW_TESTS:
        raise InputError(f"unknown draw test {test!r}; use one of {', '.join(DRAW_TESTS)}")
    d = np.asarray(draws, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    x = float(candidate)
    k = int(d.size)
    nan = float("nan")
    cells = max(1, int(cells))
    if k == 0 or not np.isfinite(x):
        return DrawTest(x, tuple(float(v) for v in d), alternative, test, alpha, Interval(nan, nan, nan), nan, nan,
                        nan, 0, nan, nan, 1.0, bool(k > 1 and np.ptp(d) > 0), cells)
    rank, p_rank = _rank_p(x, d, alternative)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if k > 1 else nan
    spread = bool(k > 1 and sd > 0)
    excess = x - mean
    if spread and k >= MIN_INTERVAL_DRAWS:
        scale = sd * math.sqrt(1 + 1 / k)
        t = excess / scale
        p_norm, p_heavy = _tail(t, k, cells, alternative)
        p_int = max(p_norm, p_heavy)
        q_up, q_lo = _bounds(level, k, cells)
        iv = Interval(excess, excess - q_up * scale, excess - q_lo * scale)
        z = excess / sd
    else:
        p_norm = p_int = nan
        iv = Interval(excess, nan, nan)
        z = nan
    if test == "interval" and spread:
        p = p_int
        floor = float(np.exp(_table()[2][-1])) if k >= MIN_INTERVAL_DRAWS else 1.0
    else:
        p = p_rank
        floor = 1.0 / (k + 1) * (2 if alternative == "two-sided" else 1)
    return DrawTest(x, tuple(float(v) for v in d), alternative, test, float(alpha), iv, float(z), float(p_int),
                    float(p_norm), int(rank), float(p_rank), float(p), float(min(floor, 1.0)), spread, cells)


def split_units(n_units: int, seed: Any = 0, select_share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The seeded split of ``n_units`` into (selection, report) index arrays, sorted; the same
    split ``core.stats.heldout_select`` makes for the same seed.

    >>> split_units(4, seed=0)[0].size
    2
    """
    from emoscope.core.stats import rng_from

    if n_units < 2:
        raise InputError(f"a held-out split needs at least 2 units, got {n_units}")
    rng = rng_from(seed)
    order = rng.permutation(n_units)
    k = min(max(1, int(round(select_share * n_units))), n_units - 1)
    return np.sort(order[:k]), np.sort(order[k:])


@dataclass(frozen=True)
class HeldOutSearch:
    """Per entity (the candidate and each draw): the cell chosen on the selection units
    (``-1``: no cell had a value) and the mean over the report units at that cell."""

    cells: np.ndarray  # (E,) int
    values: np.ndarray  # (E,) float
    n_report: np.ndarray  # (E,) report units with a value at the chosen cell


def heldout_search(values: Any, select: Sequence[int], report: Sequence[int], allowed: Any = None,
                   alternative: str = "greater") -> HeldOutSearch:
    """Run one search for every entity at once.

    ``values``: ``(E, U, C)``, entity × unit × cell (NaN where missing); ``allowed``: ``(E, C)``
    booleans, the cells each entity may choose (its own filter, computed on the selection units;
    an entity with no allowed cell may choose any). The chosen cell has the largest mean over the
    ``select`` units (smallest for ``alternative="less"``); its value is the mean over ``report``.

    >>> v = np.zeros((2, 4, 3)); v[0, :, 2] = 1.0; v[1, :2, 1] = 1.0   # entity 1 only looks good on units 0, 1
    >>> s = heldout_search(v, [0, 1], [2, 3])
    >>> s.cells.tolist(), s.values.tolist()
    ([2, 1], [1.0, 0.0])
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 3:
        raise InputError(f"heldout_search needs (entities, units, cells) values, got shape {v.shape}")
    if alternative not in ("greater", "less"):
        raise InputError(f"heldout_search alternative must be 'greater' or 'less', got {alternative!r}")
    sel, rep = np.asarray(select, dtype=int), np.asarray(report, dtype=int)
    with warnings.catch_warnings():  # a cell with no selection value has an empty mean: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(v[:, sel, :], axis=1)  # (E, C)
    if allowed is not None:
        ok = np.asarray(allowed, dtype=bool)
        if ok.shape != means.shape:
            raise InputError(f"allowed must be (entities, cells) = {means.shape}, got {ok.shape}")
        ok = np.where(ok.any(axis=1, keepdims=True), ok, True)  # nothing allowed: anything may be chosen
        means = np.where(ok, means, np.nan)
    fill = -np.inf if alternative == "greater" else np.inf
    m = np.where(np.isfinite(means), means, fill)
    cells = np.argmax(m, axis=1) if alternative == "greater" else np.argmin(m, axis=1)
    has = np.isfinite(means).any(axis=1)
    e = np.arange(v.shape[0])
    at = v[e[:, None], rep[None, :], cells[:, None]]  # (E, R)
    n_rep = np.isfinite(at).sum(axis=1)
    with np.errstate(all="ignore"):
        held = np.where(n_rep > 0, np.nansum(np.where(np.isfinite(at), at, 0.0), axis=1) / np.maximum(n_rep, 1),
                        np.nan)
    return HeldOutSearch(np.where(has, cells, -1), np.where(has, held, np.nan), np.where(has, n_rep, 0))


def draws_figure(tests: dict[str, DrawTest], *, title: str, xlabel: str) -> Any:
    """Each draw's held-out value as a dot (one row per random kind), the candidate as a line."""
    from emoscope.core.figures import new_figure

    fig = new_figure(6.4, 0.9 + 0.55 * max(1, len(tests)), layout="constrained")
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for i, t in enumerate(tests.values()):
        d = np.asarray(t.draws)
        ax.scatter(d, i + rng.uniform(-0.12, 0.12, d.size), s=18, color="0.45", alpha=0.8, zorder=2,
                   label="random draws" if i == 0 else None)
        mark = {True: "passes", False: "does not pass", None: "not judged"}[t.passed]
        ax.text(1.0, i, f"  p {t.p:.2g}, rank {t.rank}/{t.k + 1} ({mark})", transform=ax.get_yaxis_transform(),
                va="center", fontsize=8)
    cands = {round(t.candidate, 12) for t in tests.values()}
    for c in cands:
        ax.axvline(c, color="#c0392b", lw=2, zorder=3, label="candidate" if c == min(cands) else None)
    ax.set_yticks(range(len(tests)), list(tests))
    ax.set_ylim(-0.6, len(tests) - 0.4)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower left", fontsize=7, frameon=False)
    return fig


if __name__ == "__main__":  # rebuild the shipped table: python -m emoscope.core.draws
    import json
    import pathlib

    from emoscope._io import atomic_write_text

    dest = pathlib.Path(__file__).with_name(_TABLE)
    atomic_write_text(dest, json.dumps(build_heavy_table(), separators=(",", ":")))
    print(f"wrote {dest}")
