"""Decoys cannot pass: for each finding kind, a candidate that is one more random draw, with the
draw-to-draw spread real models have, ships at most at the test's level through the real finding
code, its full search and the run's correction; a candidate planted at +4 draw sds ships; a run of
six null tests ships a false claim at most at the family's level.

The suite runs a reduced grid (the seeds cycle through tau in {0, 0.3, 1, 3} and normal / t3 draws);
``python -m tests.decoy_sims --seeds 200`` runs every configuration at 200 seeds (its numbers are
in the closing note of issue 22). Seeds are fixed, so the numbers below are reproducible.

What each control's design can reach: the interval test's smallest p is its table's resolution
(2e-5, ``core.draws``); a rank among k draws cannot go below 1 / (k + 1).
"""

from __future__ import annotations

import numpy as np
import pytest

from emoscope.core.claims import correct_run
from emoscope.core.stats import binomial_interval

from . import decoy_sims as ds

ALPHA = 0.05
CONFIGS = [(tau, dist) for tau in ds.TAUS for dist in ds.DISTS]


def _decoy_rate(kind: str, n: int, **kw) -> tuple[int, int]:
    ships = 0
    for s in range(n):
        tau, dist = CONFIGS[s % len(CONFIGS)]
        rng = np.random.default_rng([11, s, ds.KINDS.index(kind)])
        fs = correct_run(ds.RUNS[kind](rng, tau=tau, dist=dist, **kw)).findings
        ships += any(f.verdict == "ships" for f in fs)
    return ships, n


@pytest.mark.parametrize("kind,n", [("steering", 80), ("heads", 120), ("patching", 96), ("introspection", 120)])
def test_a_decoy_ships_at_most_at_the_level(kind, n):
    ships, n = _decoy_rate(kind, n)
    iv = binomial_interval(ships, n)
    print(f"\n{kind}: decoy ships {ships}/{n} = {iv.point:.3f} [{iv.lo:.3f}, {iv.hi:.3f}] over tau x draw shapes")
    assert iv.point <= ALPHA and iv.lo <= ALPHA


@pytest.mark.parametrize("kind", ds.KINDS)
def test_a_candidate_planted_at_four_draw_sds_ships(kind):
    plant = 4.0 * ds.draw_sd(kind, 1.0, "normal", n=8)
    n = 25
    ships = 0
    for s in range(n):
        rng = np.random.default_rng([12, s, ds.KINDS.index(kind)])
        fs = correct_run(ds.RUNS[kind](rng, tau=1.0, dist="normal", plant=plant)).findings
        ships += any(f.verdict == "ships" for f in fs)
    iv = binomial_interval(ships, n)
    print(f"\n{kind}: planted +4 draw sd ships {ships}/{n} = {iv.point:.2f} [{iv.lo:.2f}, {iv.hi:.2f}]")
    assert iv.point >= 0.8


def test_six_null_tests_in_one_run_ship_a_false_claim_at_most_at_the_family_level():
    """A heads run of 3 methods x 2 metrics, every set a draw with its own effects (tau 1): Holm
    over the six keeps the chance of any false claim at the level; judged one by one it would not."""
    n, family, alone = 100, 0, 0
    for s in range(n):
        rng = np.random.default_rng([13, s])
        fs = ds.heads_run(rng, tau=1.0, dist="normal", methods=("zero", "mean", "patch"))
        assert len(fs) == 6 and all(f.observation.p_value is not None for f in fs)
        family += any(f.verdict == "ships" for f in correct_run(fs).findings)
        alone += any(f.observation.p_value < ALPHA for f in fs)
    fam, one = binomial_interval(family, n), binomial_interval(alone, n)
    print(f"\n6 null tests: a false claim ships in {family}/{n} runs with Holm over the run "
          f"[{fam.lo:.3f}, {fam.hi:.3f}]; some test passes alone in {alone}/{n} [{one.lo:.3f}, {one.hi:.3f}]")
    assert fam.point <= ALPHA and one.point > 2 * ALPHA


def test_the_rank_test_needs_its_draws_and_says_how_many():
    """With 5 draws per kind the rank cannot reach 0.05: the finding needs controls and names the
    floor and the draws that would reach it, however strong the candidate."""
    rng = np.random.default_rng(3)
    plant = 10.0 * ds.draw_sd("steering", 1.0, "normal", n=4)
    (f, *_) = correct_run(ds.steering_run(rng, tau=1.0, dist="normal", plant=plant, k=5, test="rank")).findings
    rv = next(c for c in f.controls if c.name == "random_vectors")
    assert rv.passed is None and f.verdict == "needs controls"
    assert "cannot go below 0.167" in rv.note and "at least 20 draws are needed" in rv.note
    assert f.observation.p_floor == pytest.approx(1 / 6)


def test_steering_with_prompts_that_loop_unsteered_neither_lets_a_decoy_ship_nor_loses_power():
    """A quarter of the prompts loop with no steering and stay looped in every cell (gemma3-270m loops
    on 2 of 8): the search's fluency filter leaves them out of its broken count, the same for the
    candidate and every draw. A decoy ships at most at the level (200 seeds: 1/200, [0.0001, 0.028]);
    a candidate 4 draw sds above the draws still ships (50 seeds: 46/50)."""
    ships, n = _decoy_rate("steering", 80, looping_share=0.25)
    iv = binomial_interval(ships, n)
    print(f"\nsteering, 25% of prompts looping unsteered: decoy ships {ships}/{n} [{iv.lo:.3f}, {iv.hi:.3f}]")
    assert iv.point <= ALPHA and iv.lo <= ALPHA
    plant = 4.0 * ds.draw_sd("steering", 1.0, "normal", n=8)
    hits = sum(any(f.verdict == "ships" for f in correct_run(ds.steering_run(
        np.random.default_rng([22, s]), tau=1.0, dist="normal", plant=plant, looping_share=0.25)).findings)
        for s in range(25))
    assert hits / 25 >= 0.8, hits
