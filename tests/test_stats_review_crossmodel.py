"""Statistical review of cross-model alignment (issue 22): the identification test's p is exact
over assignments of counterparts (hits are dependent, not binomial), and the shuffled-pairing
control ranks the real map among maps refitted on random pairings. Checked against brute-force
enumeration and simulation."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pytest

from emoscope.core.stats import binomial_test
from emoscope.geometry.crossmodel import compare_vectors, fit_neutral_maps, identification_pvalue
from emoscope.geometry.crossmodel_stage import alignment_finding
from emoscope.geometry.pairing import LAMBDAS, cv_r2


def _brute_force(nearest: np.ndarray) -> float:
    """P(#{i: s(i) = nearest[i]} >= observed hits) over every permutation s of the targets."""
    K = nearest.size
    hits = int(np.sum(nearest == np.arange(K)))
    perms = np.array(list(itertools.permutations(range(K))))  # (K!, K)
    return float(np.mean((perms == nearest[None, :]).sum(1) >= hits))


def test_identification_p_is_exact_for_dependent_hits():
    # K = 8, the match one-to-one with 4 fixed points: hits are the fixed points of a permutation
    nearest = np.array([0, 1, 2, 3, 5, 4, 7, 6])
    exact = _brute_force(nearest)
    assert exact == pytest.approx((630 + 112 + 28 + 0 + 1) / 40320)  # rencontres numbers, 0.0191
    assert identification_pvalue(nearest) == pytest.approx(exact, abs=1e-15)
    assert binomial_test(4, 8, 1 / 8) == pytest.approx(0.011, abs=5e-4)  # what the binomial said
    # arbitrary nearest maps (hubs, misses) against enumeration over all K! assignments
    rng = np.random.default_rng(0)
    for K in (3, 5, 7):
        for _ in range(12):
            a = rng.integers(0, K, size=K)  # hubs and misses
            keep = rng.random(K) < 0.5
            a[keep] = np.arange(K)[keep]  # and some hits
            assert identification_pvalue(a) == pytest.approx(_brute_force(a), abs=1e-12), a.tolist()
    # larger K: against a Monte Carlo over random assignments
    K = 12
    a = np.r_[np.arange(5), rng.integers(0, K, size=K - 5)]
    s = np.argsort(rng.random((200_000, K)), axis=1)
    mc = np.mean((s == a).sum(1) >= int(np.sum(a == np.arange(K))))
    assert identification_pvalue(a) == pytest.approx(mc, abs=4 * np.sqrt(mc * (1 - mc) / 200_000) + 1e-5)


def test_identification_p_holds_its_level_when_the_names_are_scrambled():
    """A map that carries A's geometry onto B's perfectly, but B's names are a random
    relabelling: the nearest map is a permutation and the hits its fixed points. The exact p
    rejects at most at its level; the binomial p is too small (4 of 8 hits: 0.011 claimed, 0.019 true)."""
    K = 8
    rng = np.random.default_rng(1)
    exact, binom = [], []
    for _ in range(8_000):
        nearest = rng.permutation(K)
        hits = int(np.sum(nearest == np.arange(K)))
        exact.append(identification_pvalue(nearest))
        binom.append(binomial_test(hits, K, 1 / K))
    exact, binom = np.array(exact), np.array(binom)
    sd = np.sqrt(0.02 * 0.98 / exact.size)
    for u in sorted(set(exact.round(12)))[:4]:  # the attainable levels below 0.1
        assert np.mean(exact <= u + 1e-12) <= u + 3 * sd
    cut = binomial_test(4, K, 1 / K)
    assert np.mean(binom <= cut + 1e-12) > cut + 3 * sd  # the binomial over-rejects at its own level


def _world(seed: int, n: int = 160, d: int = 12, K: int = 8, linked: bool = True, noise: float = 0.3):
    """B's neutral rows = A's through a planted map (``linked``) or independent of them; B's emotion
    vectors are A's through the same map either way."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(d, d)) / np.sqrt(d)
    NA = rng.normal(size=(n, d))
    NB = (NA if linked else rng.normal(size=(n, d))) @ M + noise * rng.normal(size=(n, d))
    VA = {f"e{i}": rng.normal(size=d) for i in range(K)}
    return NA, NB, VA, {k: v @ M for k, v in VA.items()}


def test_a_planted_perfect_map_reaches_both_floors():
    NA, NB, VA, VB = _world(0, noise=0.01)
    maps = fit_neutral_maps(NA, NB, n_pairings=49, seed=0)
    rows = {r["map"]: r for r in compare_vectors(VA, VB, maps.maps, pairings=maps.pairings)}
    r = rows["ridge"]
    assert r["id_acc_centred"] == 1.0 and r["id_p_centred"] == pytest.approx(1 / factorial(8)) == r["id_p_min"]
    assert r["p_pairing"] == pytest.approx(1 / 50) == r["pairing_min_p"] and r["n_pairings"] == 49
    assert r["matched_cos_centred"] > 0.99 > r["pairing_null_q95"]
    f = alignment_finding("A", "B", 1, 1, list(rows.values()), maps)
    ctl = {c.name: c for c in f.controls}
    assert ctl["identification"].passed and ctl["shuffled_pairing"].passed and f.claim
    assert f.observation.p_value == pytest.approx(max(1 / factorial(8), 1 / 50))  # intersection-union: the larger


def test_shuffled_pairing_test_holds_its_level_and_the_old_rule_did_not():
    """Null world: A's and B's neutral rows are unrelated, so which text goes with which does not
    matter. The rank p is uniform on {1/20, ..., 1}; it passes about 5% of the time. The old rule
    ("the shuffled map's own test is not significant and the real map identifies more") passed far
    more often."""
    p, old = [], []
    for s in range(80):
        NA, NB, VA, VB = _world(s, n=80, d=8, linked=False)
        maps = fit_neutral_maps(NA, NB, n_pairings=19, seed=s)
        rows = {r["map"]: r for r in compare_vectors(VA, VB, maps.maps, pairings=maps.pairings, n_perm=100)}
        r, sh = rows["ridge"], rows["ridge_shuffled"]
        p.append(r["p_pairing"])
        old.append(sh["id_p_centred"] >= 0.05 and r["id_acc_centred"] > sh["id_acc_centred"])
        f = alignment_finding("A", "B", 1, 1, list(rows.values()), maps)
        assert next(c for c in f.controls if c.name == "shuffled_pairing").passed is bool(r["p_pairing"] < 0.05)
    p = np.array(p)
    assert set(np.round(p * 20).astype(int)) <= set(range(1, 21))
    assert np.mean(p <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / p.size)
    assert 0.35 < p.mean() < 0.65  # uniform on {1/20, ..., 1} has mean 0.525
    assert np.mean(old) > 0.2  # the old control passed in the null world about a third of the time


def test_cv_r2_of_every_pairing_matches_a_direct_ridge_fit():
    rng = np.random.default_rng(3)
    n, d_a, d_b = 60, 7, 9
    A = rng.normal(size=(n, d_a))
    B = A @ rng.normal(size=(d_a, d_b)) + rng.normal(size=(n, d_b))
    perms = np.stack([np.arange(n), rng.permutation(n), rng.permutation(n)])
    folds = np.array_split(rng.permutation(n), 4)
    lams = np.array(LAMBDAS) * 30.0
    got = cv_r2(A, B, perms, folds, lams)
    for p, perm in enumerate(perms):
        Bp = B[perm]
        for li, lam in enumerate(lams):
            r2 = []
            for f in folds:
                tr = np.setdiff1d(np.arange(n), f)
                ma, mb = A[tr].mean(0), Bp[tr].mean(0)
                W = np.linalg.solve((A[tr] - ma).T @ (A[tr] - ma) + lam * np.eye(d_a), (A[tr] - ma).T @ (Bp[tr] - mb))
                pred = (A[f] - ma) @ W + mb
                r2.append(1 - np.sum((Bp[f] - pred) ** 2) / np.sum((Bp[f] - mb) ** 2))
            assert got[p, li] == pytest.approx(np.mean(r2), abs=1e-9)


def test_shuffled_maps_match_a_direct_refit():
    NA, NB, VA, _ = _world(4, n=60, d=6)
    maps = fit_neutral_maps(NA, NB, n_pairings=5, seed=0)
    pr = maps.pairings
    V = np.stack(list(VA.values()))
    Ac = pr.U * pr.sv @ pr.V.T
    for s in range(pr.n):
        Bt = pr.Bc[pr.perms[s]]
        W = np.linalg.solve(Ac.T @ Ac + pr.lams[s] * np.eye(Ac.shape[1]), Ac.T @ Bt)
        np.testing.assert_allclose(pr.map_vectors(V)[s], V @ W, atol=1e-9)
    # the first shuffled pairing is the table's ridge_shuffled map, with its own penalty
    np.testing.assert_allclose(maps.maps["ridge_shuffled"].map_vectors(V), pr.map_vectors(V)[0], atol=1e-9)
