"""``core.draws``: the random-draw tests hold their level where their assumption holds (and say
why they need it), the shipped reference table is what its builder computes, and the per-entity
search equals a loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emoscope.core.draws import (
    TABLE_PS,
    build_heavy_table,
    draw_test,
    draws_needed,
    heldout_search,
    split_units,
)
from emoscope.core.stats import binomial_interval

ALPHA = 0.05


def _t3(rng, size):
    return rng.standard_t(3, size)


def _rate(gen, k: int, cells: int, n: int = 3000, seed: int = 0, test: str = "interval") -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n):
        x = gen(rng, k + 1)
        hits += draw_test(x[0], x[1:], cells=cells, test=test).p < ALPHA
    return hits / n


@pytest.mark.parametrize("k", [5, 10, 20])
def test_a_decoy_passes_at_most_at_the_level_for_normal_and_heavy_draws(k):
    normal = _rate(lambda r, n: r.standard_normal(n), k, 1)
    heavy = _rate(_t3, k, 1, seed=1)
    # exact under one reference, conservative under the other (3000 sims: MC sd ~0.004)
    assert normal <= ALPHA + 0.01 and heavy <= ALPHA + 0.01
    assert normal > 0.02  # not a test that can never pass


def test_a_searched_null_is_skewed_and_the_search_aware_reference_holds_it():
    """A draw's held-out value is its best of C cells: with heavy-tailed effects that maximum is
    skewed right, and a reference that ignores the search lets decoys through."""
    def best_of_12(rng, n):
        return _t3(rng, (n, 12)).max(axis=1)

    ignoring = _rate(best_of_12, 10, cells=1, seed=2)
    aware = _rate(best_of_12, 10, cells=12, seed=2)
    print(f"\nbest of 12 t3 cells, k=10: decoy passes {ignoring:.3f} ignoring the search, {aware:.3f} with it")
    assert ignoring > 0.06 and aware <= ALPHA + 0.01


def test_the_rank_test_is_exact_and_its_floor_is_one_over_k_plus_one():
    rng = np.random.default_rng(3)
    ps = [draw_test(x[0], x[1:], test="rank").p for x in rng.lognormal(size=(4000, 21))]  # 20 draws
    assert np.mean(np.asarray(ps) < ALPHA) == pytest.approx(1 / 21, abs=0.01)  # P(rank 1) whatever the shape
    t = draw_test(100.0, rng.normal(size=9), test="rank")
    assert t.p == t.floor == pytest.approx(0.1) and t.passed is None and t.needed == draws_needed("rank", ALPHA) == 20
    assert draw_test(100.0, rng.normal(size=20), test="rank").passed is True


def test_draws_that_do_not_vary_leave_the_rank_to_decide():
    t = draw_test(0.1, [0.0] * 10)
    assert not t.spread and t.decided_by == "rank" and t.p == pytest.approx(1 / 11)
    assert "the draws do not vary" in t.describe()


def test_the_shipped_table_is_what_its_builder_computes():
    fresh = build_heavy_table(n_samples=40_000, ks=(10,), cs=(1, 12), seed=5)
    from emoscope.core.draws import _row

    for j, c in enumerate((1, 12)):
        mine = np.asarray(fresh["q"][0][j])
        shipped = _row(10, c)
        for p in (0.05, 0.01):
            m = int(np.argmin(np.abs(np.asarray(TABLE_PS) - p)))
            assert shipped[m] == pytest.approx(mine[m], rel=0.12), (c, p)
    # the search-aware reference lies above the plain one, more so the more cells
    assert _row(10, 12)[40] > _row(10, 4)[40] > _row(10, 1)[40]


def test_the_prediction_interval_matches_the_p_value():
    rng = np.random.default_rng(4)
    for _ in range(50):
        x = rng.normal(size=11)
        x[0] += rng.uniform(0, 5)
        t = draw_test(x[0], x[1:], cells=6, alternative="greater")
        # the lower bound is above 0 exactly when the one-sided p is below 2.5%
        if abs(t.p - 0.025) > 1e-3:
            assert (t.excess.lo > 0) == (t.p < 0.025)


def test_heldout_search_equals_a_loop_over_entities():
    rng = np.random.default_rng(6)
    v = rng.normal(size=(7, 12, 5))
    v[rng.random(v.shape) < 0.1] = np.nan
    allowed = rng.random((7, 5)) < 0.7
    allowed[3] = False  # nothing allowed: anything may be chosen
    sel, rep = split_units(12, seed=2)
    s = heldout_search(v, sel, rep, allowed)
    for e in range(7):
        ok = allowed[e] if allowed[e].any() else np.ones(5, bool)
        means = np.array([np.nanmean(v[e, sel, c]) if ok[c] else -math.inf for c in range(5)])
        c = int(np.argmax(means))
        assert s.cells[e] == c and s.values[e] == pytest.approx(np.nanmean(v[e, rep, c]))


def test_power_of_the_interval_test_at_four_draw_sds():
    """A candidate 4 draw sds above normal draws, k = 10, one cell: p < 0.05 in most draws."""
    rng = np.random.default_rng(8)
    hits = 0
    for _ in range(1000):
        x = rng.normal(size=11)
        hits += draw_test(x[0] + 4.0, x[1:]).p < ALPHA
    iv = binomial_interval(hits, 1000)
    assert iv.lo > 0.85
