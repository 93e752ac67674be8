"""Statistics every analysis package uses: bootstrap intervals, permutation p-values, paired
and unpaired rank tests, and multiple-comparison corrections. One implementation of each.

Conventions
-----------
- Randomness comes from ``seed`` (an int, or a ``numpy.random.Generator`` to continue a stream).
- Intervals are :class:`Interval` ``(point, lo, hi)``: the point estimate on all data and a
  percentile bootstrap interval; ``nan`` bounds when the data cannot give one.
- Permutation p-values count the observed value as one of the permutations,
  ``(1 + #{null >= observed}) / (1 + n_null)``, so they are never 0 and the smallest one a
  design can reach is ``1 / (n_null + 1)`` (:func:`min_pvalue`).

>>> import numpy as np
>>> bootstrap(np.r_[np.ones(80), np.zeros(20)], seed=0).point
0.8
>>> permutation_pvalue(0.9, [0.1] * 99)
0.01
>>> holm([0.01, 0.04, 0.03]).round(3).tolist()
[0.03, 0.06, 0.06]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from emoscope.errors import InputError

__all__ = [
    "Interval",
    "bootstrap",
    "permutation_pvalue",
    "permutation_null",
    "min_pvalue",
    "paired_test",
    "unpaired_test",
    "holm",
    "bonferroni",
    "binomial_interval",
    "binomial_test",
    "rng_from",
    "HeldOutSelection",
    "heldout_select",
]

ALTERNATIVES = ("greater", "less", "two-sided")


class Interval(NamedTuple):
    """A point estimate with a ``level`` interval: ``point, lo, hi``."""

    point: float
    lo: float
    hi: float


def rng_from(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A generator from an int seed, or the generator itself (its stream continues)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def bootstrap(
    values: Any,
    groups: Any = None,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> Interval:
    """Mean of ``values`` with a percentile bootstrap interval.

    Non-finite values are dropped first (with their groups). With ``groups``, whole groups are
    resampled (a cluster bootstrap): rows that share a unit (a prompt, a source text, a
    concept) do not count as independent evidence, and the resampled statistic is the mean
    over the rows of the drawn groups. Fewer than 2 finite values (or 2 groups) give
    ``nan`` bounds; ``n_boot=0`` gives the point alone.

    >>> bootstrap([1.0, 1.0, 1.0]).lo
    1.0
    >>> bootstrap([1.0, float("nan")]).point
    1.0
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise InputError(f"bootstrap needs a 1-D array of values, got shape {v.shape}")
    g = None if groups is None else np.asarray(groups)
    if g is not None and g.shape != v.shape:
        raise InputError(f"bootstrap: {g.size} groups for {v.size} values")
    keep = np.isfinite(v)
    v = v[keep]
    g = None if g is None else g[keep]
    if v.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    point = float(v.mean())
    if not 0 < level < 1:
        raise InputError(f"bootstrap level must be in (0, 1), got {level}")
    if n_boot <= 0 or v.size < 2:
        return Interval(point, float("nan"), float("nan"))
    rng = rng_from(seed)
    if g is None:
        stats = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)  # (n_boot,)
    else:
        _, inv = np.unique(g, return_inverse=True)
        sums = np.bincount(inv, weights=v)  # (G,)
        if sums.size < 2:
            return Interval(point, float("nan"), float("nan"))
        counts = np.bincount(inv).astype(np.float64)
        pick = rng.integers(0, sums.size, size=(n_boot, sums.size))
        stats = sums[pick].sum(1) / counts[pick].sum(1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return Interval(point, float(lo), float(hi))


def permutation_pvalue(observed: float, null: Any, alternative: str = "greater") -> float:
    """p-value of ``observed`` against a permutation ``null``, never 0.

    ``greater``: ``(1 + #{null >= observed}) / (1 + n)``; ``less`` mirrors it; ``two-sided``
    compares absolute values (for nulls centred on 0).

    >>> permutation_pvalue(0.9, [0.5, 0.6, 0.95])
    0.5
    """
    if alternative not in ALTERNATIVES:
        raise InputError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    null = np.asarray(null, dtype=np.float64).ravel()
    null = null[np.isfinite(null)]
    if alternative == "less":
        hits = np.sum(null <= observed + 1e-12)
    elif alternative == "two-sided":
        hits = np.sum(np.abs(null) >= abs(observed) - 1e-12)
    else:
        hits = np.sum(null >= observed - 1e-12)
    return float((1 + hits) / (1 + null.size))


def min_pvalue(n_null: int) -> float:
    """The smallest p-value a permutation or rank-among-draws design with ``n_null`` draws
    can give: ``1 / (n_null + 1)``.

    >>> min_pvalue(19)
    0.05
    """
    return 1.0 / (int(n_null) + 1)


def permutation_null(
    statistic: Callable[[np.ndarray], float],
    labels: Sequence[Any],
    n_perm: int,
    *,
    seed: int | np.random.Generator | None = 0,
    groups: Any = None,
) -> np.ndarray:
    """``statistic(permuted labels)`` for ``n_perm`` label permutations: the null of the same
    estimator with the label–data link broken (class sizes kept). With ``groups``, labels are
    permuted within each group only.

    >>> y = np.array([0, 0, 1, 1])
    >>> permutation_null(lambda lab: float(lab[0]), y, 3, seed=0).shape
    (3,)
    """
    y = np.asarray(labels)
    rng = rng_from(seed)
    out = np.empty(int(n_perm), dtype=np.float64)
    blocks = None
    if groups is not None:
        g = np.asarray(groups)
        blocks = [np.flatnonzero(g == u) for u in np.unique(g)]
    for i in range(int(n_perm)):
        if blocks is None:
            perm = y[rng.permutation(y.size)]
        else:
            perm = y.copy()
            for b in blocks:
                perm[b] = y[b][rng.permutation(b.size)]
        out[i] = float(statistic(perm))
    return out


def paired_test(diff: Any, alternative: str = "greater") -> float:
    """Wilcoxon signed-rank p-value of paired differences (``diff = a - b`` per unit).

    Returns 1.0 when every difference is 0 (no evidence either way) and ``nan`` with no
    finite difference. The unit of the test is whatever a row of ``diff`` is (a prompt, a
    concept); say which in the finding.

    >>> paired_test([0.5, 0.7, 0.2, 0.9, 0.4, 0.6]) < 0.05
    True
    """
    from scipy.stats import wilcoxon

    if alternative not in ALTERNATIVES:
        raise InputError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    d = np.asarray(diff, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, alternative=alternative).pvalue)


def unpaired_test(a: Any, b: Any, alternative: str = "greater") -> float:
    """Mann-Whitney U p-value that ``a`` tends to exceed ``b`` (per ``alternative``); 1.0 when
    all values are equal, ``nan`` when either side is empty.

    >>> unpaired_test([5, 6, 7, 8, 9], [0, 1, 2, 3, 4]) < 0.01
    True
    """
    from scipy.stats import mannwhitneyu

    if alternative not in ALTERNATIVES:
        raise InputError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size == 0 or y.size == 0:
        return float("nan")
    if np.ptp(np.r_[x, y]) == 0:
        return 1.0
    return float(mannwhitneyu(x, y, alternative=alternative).pvalue)


def holm(pvalues: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1; NaN kept and not
    counted).

    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def bonferroni(pvalues: Any) -> np.ndarray:
    """Bonferroni adjusted p-values: ``min(1, m p)`` with ``m`` the number of non-NaN p-values.

    >>> bonferroni([0.01, float("nan"), 0.3]).tolist()[::2]
    [0.02, 0.6]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    m = int(np.sum(~np.isnan(p)))
    return np.minimum(1.0, p * m)


def binomial_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """Share ``successes / n`` with its exact (Clopper-Pearson) interval.

    >>> binomial_interval(0, 200).hi < 0.02
    True
    """
    from scipy.stats import binomtest

    if n <= 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="exact")
    return Interval(successes / n, float(ci.low), float(ci.high))


def binomial_test(successes: int, n: int, p0: float, alternative: str = "greater") -> float:
    """Exact binomial p-value of ``successes`` out of ``n`` against rate ``p0`` (e.g. held-out
    accuracy against the majority-class rate); ``nan`` for ``n = 0``.

    >>> binomial_test(18, 20, 0.5) < 0.001
    True
    """
    from scipy.stats import binomtest

    if n <= 0:
        return float("nan")
    return float(binomtest(int(successes), int(n), float(p0), alternative=alternative).pvalue)


@dataclass(frozen=True)
class HeldOutSelection:
    """A "best of" choice made on one half of the units and reported on the other.

    ``cell``: index of the chosen cell (best on ``select_units``); ``n_cells``: how many cells
    were searched; ``estimate``: mean of the chosen cell over ``report_units`` with a bootstrap
    interval; ``p_value``: one-sided Wilcoxon signed-rank test of the chosen cell's values on the
    report units (uncorrected: the choice used none of them); ``n``: report units with a value.
    """

    cell: int
    n_cells: int
    select_units: np.ndarray
    report_units: np.ndarray
    estimate: Interval
    p_value: float
    n: int


def heldout_select(values: Any, *, seed: int | np.random.Generator | None = 0, n_boot: int = 2000,
                   alternative: str = "greater", select_share: float = 0.5) -> HeldOutSelection:
    """Choose the best of several cells on half the units, report it on the other half.

    ``values``: ``(n_units, n_cells)``, one effect per unit (a prompt, a concept, a text) and
    cell (a layer x strength combination, say), NaN where a unit has no value. Units are split
    at random (seeded) into a selection part (``select_share``) and a report part; the cell
    with the largest mean on the selection part (smallest for ``alternative="less"``) is
    chosen, and its value, interval and p-value come from the report part only. So the reported
    number is not the maximum of what was searched, and its p-value needs no correction for the
    search (a pure-noise sweep ships at the test's level, not more often).

    >>> rng = np.random.default_rng(0)
    >>> sel = heldout_select(rng.normal(size=(40, 12)), seed=0)
    >>> sel.n_cells, sel.n, sel.p_value > 0.05
    (12, 20, True)
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] < 1:
        raise InputError(f"heldout_select needs (n_units >= 2, n_cells >= 1) values, got shape {v.shape}")
    if alternative not in ("greater", "less"):
        raise InputError(f"heldout_select alternative must be 'greater' or 'less', got {alternative!r}")
    rng = rng_from(seed)
    order = rng.permutation(v.shape[0])
    k = min(max(1, int(round(select_share * v.shape[0]))), v.shape[0] - 1)
    sel, rep = np.sort(order[:k]), np.sort(order[k:])
    with np.errstate(all="ignore"):
        means = np.nanmean(v[sel], axis=0)  # (n_cells,)
    means = np.where(np.isfinite(means), means, -np.inf if alternative == "greater" else np.inf)
    cell = int(np.argmax(means) if alternative == "greater" else np.argmin(means))
    out = v[rep, cell]
    out = out[np.isfinite(out)]
    est = bootstrap(out, n_boot=n_boot, seed=rng)
    p = paired_test(out, alternative) if out.size else float("nan")
    return HeldOutSelection(cell, int(v.shape[1]), sel, rep, est, p, int(out.size))


# -- grouped label permutations and the Spearman-Brown step-up (appended by the stats review) --


def group_permutations(labels: Any, n_perm: int, *, groups: Any = None,
                       seed: int | np.random.Generator | None = 0) -> np.ndarray:
    """``(n_perm, n)`` permuted copies of ``labels`` that keep the rows of a group together.

    Rows that share a group (paraphrases of one prompt, texts of one scenario) are not
    independent, so a label permutation must move them as a unit:

    - no ``groups``: every row is its own unit, a uniform permutation of the rows;
    - every group has one label: the groups' labels are permuted among the groups (null: which
      group carries which label is exchangeable);
    - otherwise labels are permuted within each group (null: inside a group, which row carries
      which label is exchangeable; each group keeps its label counts, and what a group shares
      is never counted as evidence).

    >>> y = np.array(["a", "a", "b", "b"]); g = np.array([0, 0, 1, 1])
    >>> sorted({"".join(p) for p in group_permutations(y, 30, groups=g, seed=0)})
    ['aabb', 'bbaa']
    >>> sorted({"".join(p) for p in group_permutations(np.array(list("abab")), 30, groups=g, seed=0)})
    ['abab', 'abba', 'baab', 'baba']
    """
    y = np.asarray(labels)
    rng = rng_from(seed)
    n_perm = int(n_perm)
    if groups is None or n_perm == 0:
        return np.stack([y[rng.permutation(y.size)] for _ in range(n_perm)]) if n_perm else y[None, :][:0]
    g = np.asarray(groups)
    if g.shape != y.shape:
        raise InputError(f"group_permutations: {g.size} groups for {y.size} labels")
    _, first, inv = np.unique(g, return_index=True, return_inverse=True)  # first: a row of each group
    G = first.size
    if np.all(y == y[first][inv]):  # one label per group: the groups' labels move
        return y[first][np.argsort(rng.random((n_perm, G)), axis=1)][:, inv]
    order = np.argsort(inv, kind="stable")  # rows grouped, (n,)
    keys = inv[order][None, :] + rng.random((n_perm, y.size))  # shuffle inside each group only
    out = np.empty((n_perm, y.size), dtype=y.dtype)
    out[:, order] = y[order][np.argsort(keys, axis=1)]
    return out


def spearman_brown(r: Any, k: float = 2.0) -> np.ndarray:
    """The reliability of a measure ``k`` times as long as one whose reliability is ``r``:
    ``k r / (1 + (k - 1) r)``. A split-half correlation steps up to the whole with ``k = 2``.
    Values of ``r`` at or below -1 stay at -1 (no reliability to step up).

    >>> spearman_brown(0.5).round(4).item(), spearman_brown(0.0).item(), spearman_brown(1.0).item()
    (0.6667, 0.0, 1.0)
    """
    r = np.clip(np.asarray(r, dtype=np.float64), -1.0, 1.0)
    den = 1.0 + (float(k) - 1.0) * r
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, float(k) * r / np.where(den > 0, den, 1.0), -1.0)
    return np.clip(out, -1.0, 1.0)


__all__ += ["group_permutations", "spearman_brown"]
