"""Geometry: cosines with a null and a length control, CKA, angles, PCA, alignment."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from emoscope.errors import InputError
from emoscope.geometry import (
    anisotropy,
    cosine_matrix,
    cosine_null,
    emotion_pca,
    evaluate_alignment,
    length_controlled_cosines,
    lstsq_align,
    principal_angles,
    procrustes_align,
)
from emoscope.geometry.subspace import linear_cka
from emoscope.vectors import ConceptVector


def _rot(rng: np.random.Generator, d: int) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return Q


def test_cosine_matrix_matches_numpy():
    rng = np.random.default_rng(0)
    vecs = {name: rng.normal(size=32) for name in ["joy", "fear", "anger", "sadness"]}
    names, M = cosine_matrix(vecs)
    assert names == list(vecs)
    A = np.stack(list(vecs.values()))
    expected = (A @ A.T) / np.outer(np.linalg.norm(A, axis=1), np.linalg.norm(A, axis=1))
    np.testing.assert_allclose(M, expected, atol=1e-12)
    np.testing.assert_allclose(np.diag(M), 1.0)


def test_cosine_matrix_concept_vectors_and_errors():
    rng = np.random.default_rng(1)
    cv = {n: ConceptVector(n, {4: rng.normal(size=8), 9: rng.normal(size=8)}) for n in ["a", "b"]}
    names, M = cosine_matrix(cv, layer=9)
    assert M[0, 1] == pytest.approx(cv["a"].cosine(cv["b"])[9])
    with pytest.raises(InputError, match="layer="):
        cosine_matrix(cv)
    with pytest.raises(InputError, match="widths"):
        cosine_matrix({"a": np.ones(3), "b": np.ones(4)})


def test_cosine_null_is_anisotropy_aware():
    rng = np.random.default_rng(2)
    d = 64
    Q = _rot(rng, d)
    # Neutral activations with most variance in 4 directions.
    N = rng.normal(size=(500, d)) * 0.2 + rng.normal(size=(500, 4)) * 3.0 @ Q[:, :4].T
    res = cosine_null(
        {"a": Q[:, 0] + 0.05 * Q[:, 1], "b": Q[:, 0], "c": Q[:, 10], "d": Q[:, 11]}, N, n=2000, seed=0
    )
    # Random neutral differences live in 4 dims, so their cosines spread far wider than
    # isotropic ones in 64 dims (sd ~ 1/sqrt(64) = 0.125).
    assert res.null.std() > 0.3
    assert abs(res.null.mean()) < 0.05
    assert res.p[0, 1] < 0.05  # a ~ b: cosine ~1, beyond the null
    assert res.p[2, 3] > 0.5  # c, d orthogonal: cosine 0, typical of the null
    assert np.isnan(np.diag(res.p)).all()
    np.testing.assert_allclose(res.p, res.p.T, equal_nan=True)
    d_ = res.to_dict()
    assert d_["n_null"] == 2000 and d_["p"][0][0] is None


def test_length_controlled_cosines_removes_length_driven_similarity():
    rng = np.random.default_rng(3)
    n, d = 900, 32
    y = np.array(["neutral", "joy", "fear"])[np.arange(n) % 3]
    # Emotion prompts are longer than neutral ones, and length moves the activations
    # along one direction; the emotions themselves use orthogonal directions.
    t = np.where(y == "neutral", rng.integers(5, 30, size=n), rng.integers(15, 40, size=n)).astype(float)
    Q = _rot(rng, d)
    X = rng.normal(size=(n, d)) * 0.5 + 0.3 * t[:, None] * Q[:, 0]
    X[y == "joy"] += 1.0 * Q[:, 1]
    X[y == "fear"] += 1.0 * Q[:, 2]
    res = length_controlled_cosines(X, y, t)
    assert res.names == ["fear", "joy"]
    assert res.raw[0, 1] > 0.8  # looks like one emotion ...
    assert abs(res.controlled[0, 1]) < 0.3  # ... until length is regressed out
    assert res.max_abs_change > 0.5


def test_anisotropy():
    rng = np.random.default_rng(4)
    assert abs(anisotropy(rng.normal(size=(500, 64)))) < 0.05
    assert anisotropy(rng.normal(size=(500, 64)) + 3.0) > 0.8


def test_principal_angles_match_scipy():
    rng = np.random.default_rng(5)
    A, B = rng.normal(size=(20, 3)), rng.normal(size=(20, 4))
    np.testing.assert_allclose(principal_angles(A, B), np.sort(subspace_angles(A, B)), atol=1e-10)
    # A subspace compared with a rotated copy of itself inside it: all angles zero.
    np.testing.assert_allclose(principal_angles(A, A @ _rot(rng, 3)), 0.0, atol=1e-6)
    with pytest.raises(InputError, match="same number of rows"):
        principal_angles(A, B[:10])


def test_linear_cka_identities():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(100, 20))
    assert linear_cka(X, X) == pytest.approx(1.0)
    assert linear_cka(X, X @ _rot(rng, 20)) == pytest.approx(1.0)
    assert linear_cka(X, 5.0 * X + 2.0) == pytest.approx(1.0)
    assert linear_cka(X, rng.normal(size=(100, 20))) < 0.4
    wide = rng.normal(size=(30, 200))  # Gram form branch
    assert linear_cka(wide, wide @ _rot(rng, 200)) == pytest.approx(1.0)
    # Against a direct HSIC computation.
    Y = X @ rng.normal(size=(20, 5)) + rng.normal(size=(100, 5))
    H = np.eye(100) - 1 / 100
    Kx, Ky = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    direct = np.trace(Kx @ Ky) / np.sqrt(np.trace(Kx @ Kx) * np.trace(Ky @ Ky))
    assert linear_cka(X, Y) == pytest.approx(direct)
    with pytest.raises(InputError, match="same rows"):
        linear_cka(X, X[:50])


def test_emotion_pca_finds_planted_axis():
    rng = np.random.default_rng(7)
    axis = rng.normal(size=16)
    vals = {"joy": 1.0, "calm": 0.6, "sadness": -0.8, "fear": -1.0, "anger": -0.5}
    vecs = {k: v * axis + 0.05 * rng.normal(size=16) for k, v in vals.items()}
    res = emotion_pca(vecs, normalize=False)
    assert res.explained_variance_ratio[0] > 0.9
    assert res.explained_variance_ratio.sum() == pytest.approx(1.0)
    cos = abs(res.components[0] @ axis) / np.linalg.norm(axis)
    assert cos > 0.99
    order = np.argsort(res.scores[:, 0] * np.sign(res.components[0] @ axis))
    assert [res.names[i] for i in order][:2] == ["fear", "sadness"]


def test_procrustes_recovers_planted_rotation():
    rng = np.random.default_rng(8)
    d = 24
    R = _rot(rng, d)
    XA = rng.normal(size=(300, d)) * rng.uniform(0.5, 3, size=d)
    XB = XA @ R + 1.5 + 0.01 * rng.normal(size=(300, d))
    m = procrustes_align(XA, XB)
    np.testing.assert_allclose(m.W, R, atol=0.01)
    np.testing.assert_allclose(m.W @ m.W.T, np.eye(d), atol=1e-10)
    np.testing.assert_allclose(m.apply(XA), XB, atol=0.1)


def test_lstsq_and_alignment_evaluation_with_controls():
    rng = np.random.default_rng(9)
    dA, dB = 20, 30
    M = rng.normal(size=(dA, dB))
    XA = rng.normal(size=(400, dA))
    XB = XA @ M + 0.05 * rng.normal(size=(400, dB))
    lin = lstsq_align(XA, XB)
    np.testing.assert_allclose(lin.W, M, atol=0.02)
    emotions = {f"e{i}": rng.normal(size=dA) for i in range(8)}
    vB = {k: v @ M for k, v in emotions.items()}
    control = lstsq_align(XA, XB, shuffle_pairs=True, seed=0)
    res = evaluate_alignment(lin, emotions, vB, control_map=control, n_shuffles=500)
    assert res.mean_cosine > 0.99 and res.retrieval_acc == 1.0
    assert res.shuffled_mean < 0.5 and res.p_value < 0.01
    assert res.control_map_mean_cosine < 0.5
    assert set(res.to_dict()["cosines"]) == set(emotions)
    # A map that ignores the pairing does no better than the shuffled control.
    bad = evaluate_alignment(control, emotions, vB, n_shuffles=500)
    assert bad.p_value > 0.01
    ridge = lstsq_align(XA, XB, alpha=1.0)
    np.testing.assert_allclose(ridge.W, M, atol=0.05)
    with pytest.raises(InputError, match="same texts"):
        lstsq_align(XA, XB[:-1])
    with pytest.raises(InputError, match="at least two names"):
        evaluate_alignment(lin, {"x": np.ones(dA)}, {"y": np.ones(dB)})
