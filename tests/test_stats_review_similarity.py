"""Statistical review of the similarity test (issue 22): a shared absence is not a relation
unless a neutral class can say so, and the reliability ceiling is for the size the similarity
is computed on (Spearman-Brown). Each number is checked against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest

from emoscope.core.stats import spearman_brown
from emoscope.geometry.similarity import (
    centred_cosines,
    similarity_analysis,
    split_half_reliability,
)
from emoscope.geometry.stage import similarity_findings

MAGNITUDES = (1.0, 1.0, 5.0, 5.0)  # e0, e1 weak; e2, e3 strong; orthogonal directions


def _weak_and_strong(neutral: bool, seed: int = 0, n: int = 120, d: int = 128, scale: float = 2.0):
    """Class ``k`` = ``scale * MAGNITUDES[k]`` along its own axis ``e_k`` plus unit noise; neutral at 0.
    Every text also has a large common component (as real residual streams do), so all norms are
    alike and the length-normalised variants keep the magnitudes."""
    rng = np.random.default_rng(seed)
    names = [f"e{k}" for k in range(4)] + (["neutral"] if neutral else [])
    X = np.vstack([(scale * MAGNITUDES[k] * np.eye(d)[k] if k < 4 else np.zeros(d)) + rng.normal(size=(n, d))
                   for k in range(len(names))]) + 200.0 * np.eye(d)[d - 1]
    y = np.repeat(names, n)
    return {0: X}, y, rng.integers(5, 40, size=y.size).astype(float)


def test_two_weak_classes_among_strong_ones_look_related_after_centring():
    # the exact centred cosine of the noise-free means: (0.75, -.25, -1.25, -1.25).(-.25, .75, -1.25, -1.25) / 3.75
    m = np.diag(MAGNITUDES)
    c = m - m.mean(0)
    exact = float(c[0] @ c[1] / (np.linalg.norm(c[0]) * np.linalg.norm(c[1])))
    assert exact == pytest.approx(2.75 / 3.75) and round(exact, 2) == 0.73
    assert centred_cosines(np.vstack([m] * 2), np.tile(["a", "b", "c", "d"], 2))[1][0, 1] == pytest.approx(exact)

    # without neutral: the pair passes its permutation null, but the shared-presence control
    # cannot be judged, so the claim needs controls (never ships)
    layers, y, t = _weak_and_strong(neutral=False)
    res = similarity_analysis(layers, y, t, neutral=None, n_perm=400, n_boot=200, n_null=200, seed=0)
    i = res.pairs.index(("e0", "e1"))
    # noise attenuates the observed cosine by the reliability ceiling; corrected, it is the exact 0.73
    rel = dict(zip(res.classes, res.reliability, strict=True))
    assert 0.55 < res.null.observed[i] < exact
    assert res.null.observed[i] / np.sqrt(rel["e0"] * rel["e1"]) == pytest.approx(exact, abs=0.04)
    assert res.null.p_holm[i] < 0.05
    f = next(g for g in similarity_findings(res) if g.claim and "e0 and e1" in g.claim)
    sp = next(c for c in f.controls if c.name == "shared_presence")
    assert sp.passed is None and sp.value is None
    assert "no neutral class" in sp.note and "add a 'neutral' class" in sp.note
    others = [c for c in f.controls if c.name != "shared_presence"]
    assert all(c.passed is True for c in others), [(c.name, c.passed) for c in others]
    assert f.verdict == "needs controls"
    assert f.reasons == ["control without an outcome: shared direction carried by the pair ran but was not judged"]

    # with neutral the control runs as before: the pair carries 1/26 of its common direction
    # itself (projections from neutral on c0 + c1: 0.5 for e0, e1 and -12.5 for e2, e3)
    layers, y, t = _weak_and_strong(neutral=True)
    res = similarity_analysis(layers, y, t, neutral="neutral", n_perm=400, n_boot=200, n_null=200, seed=0)
    i = res.pairs.index(("e0", "e1"))
    assert res.own_share[i] == pytest.approx(0.5 / 13, abs=0.03)
    f = next(g for g in similarity_findings(res) if "e0 and e1" in g.observation.metric)
    sp = next(c for c in f.controls if c.name == "shared_presence")
    assert sp.passed is False and f.verdict == "fails"
    assert any("carries only" in r for r in f.reasons)


def _classes(rng: np.random.Generator, mu: np.ndarray, n: int, sigma: float) -> np.ndarray:
    return np.vstack([m + sigma * rng.normal(size=(n, mu.shape[1])) for m in mu])


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("kd,kd->k", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_split_half_reliability_is_the_reliability_of_the_full_size_vector():
    """Known reliability by brute force: the cosine between centred vectors fitted on two
    independent samples of ``n`` texts per class. The split-half value, stepped up, matches it;
    the half-size value (no step-up) matches the brute force at ``n / 2`` instead."""
    K, d, n, sigma = 4, 200, 20, 1.0
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(K, d)) * 0.25  # |centred mean|^2 ~ 9.4 against noise d sigma^2 / n = 10
    y = np.repeat([f"c{k}" for k in range(K)], n)

    def centred(X: np.ndarray, m: int) -> np.ndarray:
        means = X.reshape(K, m, d).mean(1)
        return means - means.mean(0)

    ref_full = np.mean([_cos_rows(centred(_classes(rng, mu, n, sigma), n), centred(_classes(rng, mu, n, sigma), n))
                        for _ in range(400)], axis=0)
    ref_half = np.mean([_cos_rows(centred(_classes(rng, mu, n // 2, sigma), n // 2),
                                  centred(_classes(rng, mu, n // 2, sigma), n // 2)) for _ in range(400)], axis=0)
    stepped, half = [], []
    for s in range(200):
        X = _classes(rng, mu, n, sigma)
        stepped.append(split_half_reliability(X, y, n_splits=5, seed=s))
        half.append(split_half_reliability(X, y, n_splits=5, seed=s, step_up=False))
    stepped, half = np.mean(stepped, axis=0), np.mean(half, axis=0)
    assert 0.3 < ref_full.mean() < 0.7 and ref_full.mean() - ref_half.mean() > 0.1  # a regime where it matters
    np.testing.assert_allclose(half, ref_half, atol=0.04)
    np.testing.assert_allclose(stepped, ref_full, atol=0.04)
    np.testing.assert_allclose(stepped, spearman_brown(half), atol=0.03)  # the step-up is what moved it


def test_spearman_brown_against_its_definition():
    # a measure of reliability r doubled: two parallel halves with unit true-score variance
    # and error variance e have r = 1 / (1 + e); their sum has reliability 4 / (4 + 2e)
    for e in (0.25, 1.0, 3.0):
        r = 1 / (1 + e)
        assert float(spearman_brown(r)) == pytest.approx(4 / (4 + 2 * e))
        assert float(spearman_brown(r, 3.0)) == pytest.approx(9 / (9 + 3 * e))
    assert float(spearman_brown(-1.0)) == -1.0 and float(spearman_brown(-0.2)) == pytest.approx(-0.5)
