"""Debiased (unbiased-HSIC) linear CKA: identities, invariances, the independent-data null,
and agreement with a direct transcription of the estimator."""

from __future__ import annotations

import numpy as np
import pytest

from emoscope.errors import InputError
from emoscope.geometry.cka import cka_matrix, debiased_cka, unbiased_hsic
from emoscope.geometry.subspace import linear_cka


def _hsic_reference(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012), eq. 5, written out term by term with explicit loops over the ones vector."""
    n = K.shape[0]
    Kt = K - np.diag(np.diag(K))
    Lt = L - np.diag(np.diag(L))
    one = np.ones(n)
    a = np.trace(Kt @ Lt)
    b = (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
    c = 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
    return float((a + b - c) / (n * (n - 3)))


def test_matches_the_reference_estimator():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(30, 7)), rng.normal(size=(30, 5))
    K, L = X @ X.T, Y @ Y.T
    assert unbiased_hsic(K, L) == pytest.approx(_hsic_reference(K, L), rel=1e-10)
    want = _hsic_reference(K, L) / np.sqrt(_hsic_reference(K, K) * _hsic_reference(L, L))
    assert debiased_cka(X, Y) == pytest.approx(want, rel=1e-10)


def test_self_is_one_and_invariant_to_rotation_scale_and_shift():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 40))
    Q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    assert debiased_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert debiased_cka(X, X @ Q) == pytest.approx(1.0, abs=1e-10)
    assert debiased_cka(X, 7.5 * X) == pytest.approx(1.0, abs=1e-12)
    assert debiased_cka(X, X + 3.0) == pytest.approx(1.0, abs=1e-10)  # a shift of every feature
    Y = rng.normal(size=(80, 20))
    assert debiased_cka(X @ Q * 2.0, Y) == pytest.approx(debiased_cka(X, Y), abs=1e-10)


@pytest.mark.parametrize("n,d", [(100, 100), (200, 256), (375, 576)])
def test_independent_representations_score_near_zero_where_biased_cka_does_not(n, d):
    rng = np.random.default_rng(n)
    vals = [debiased_cka(rng.normal(size=(n, d)), rng.normal(size=(n, d))) for _ in range(3)]
    assert max(abs(v) for v in vals) < 0.05
    # the biased estimator is far from 0 at n ~ d: why the debiased one is used
    assert linear_cka(rng.normal(size=(n, d)), rng.normal(size=(n, d))) > 0.3


def test_shared_signal_is_detected():
    rng = np.random.default_rng(2)
    Z = rng.normal(size=(150, 5))
    X = Z @ rng.normal(size=(5, 60)) + 0.5 * rng.normal(size=(150, 60))
    Y = Z @ rng.normal(size=(5, 80)) + 0.5 * rng.normal(size=(150, 80))
    assert debiased_cka(X, Y) > 0.5


def test_cka_matrix_layer_by_layer_and_cross():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 10))
    reps = {0: X, 1: X @ np.linalg.qr(rng.normal(size=(10, 10)))[0], 2: rng.normal(size=(50, 10))}
    keys, _, M = cka_matrix(reps)
    assert keys == [0, 1, 2] and np.allclose(M, M.T) and np.allclose(np.diag(M), 1.0)
    assert M[0, 1] == pytest.approx(1.0, abs=1e-10) and abs(M[0, 2]) < 0.2
    ka, kb, C = cka_matrix(reps, {"b": 2 * X})
    assert C.shape == (3, 1) and C[0, 0] == pytest.approx(1.0, abs=1e-10) and kb == ["b"]


def test_bad_input_is_one_line():
    with pytest.raises(InputError, match="same rows"):
        debiased_cka(np.zeros((10, 3)) + np.arange(3), np.ones((9, 3)))
    with pytest.raises(InputError, match="constant"):
        debiased_cka(np.ones((10, 3)), np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(InputError, match="n >= 4"):
        debiased_cka(np.eye(3), np.eye(3))
