"""Debiased linear CKA: representational similarity that stays honest when n is close to d.

Plain linear CKA (``emoscope.geometry.subspace.linear_cka``) uses the biased HSIC estimator; with
about as many inputs as features, two *independent* random representations already score far
above 0 (the centred Gram matrices share their diagonal). The unbiased HSIC estimator of Song
et al. (2012), used for CKA by Nguyen, Raghu and Kornblith (2021), removes that bias:

``HSIC_1(K, L) = [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))``

with ``K~``, ``L~`` the Gram matrices with their diagonals set to 0, and
``CKA = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L))``. It is 1 for a representation with
itself, invariant to orthogonal transforms and isotropic scaling, and close to 0 (it can be
slightly negative) for independent ones.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X, Y = rng.normal(size=(100, 100)), rng.normal(size=(100, 100))
>>> round(debiased_cka(X, X), 6), abs(debiased_cka(X, Y)) < 0.05
(1.0, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emoscope.core.arrays import as_matrix
from emoscope.errors import InputError

__all__ = ["debiased_cka", "gram", "unbiased_hsic", "cka_matrix"]


def gram(X: Any) -> np.ndarray:
    """Linear Gram matrix ``X X^T`` ``(n, n)`` of the rows of ``X (n, d)``, in float64.

    (Centring is not needed: the unbiased estimator is invariant to a shift of the features.)
    """
    X = as_matrix(X, "X").astype(np.float64)
    return X @ X.T


def unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC estimator (Song et al., 2012) of two ``(n, n)`` Gram matrices, ``n >= 4``."""
    n = K.shape[0]
    if n < 4 or K.shape != (n, n) or L.shape != (n, n):
        raise InputError(f"unbiased HSIC needs two square Gram matrices of the same n >= 4; got {K.shape}, {L.shape}")
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    k1, l1 = Kt.sum(0), Lt.sum(0)  # (n,)
    term = float(np.sum(Kt * Lt)) + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(k1 @ l1)
    return term / (n * (n - 3))


def _cka_from_grams(K: np.ndarray, L: np.ndarray, hk: float | None = None, hl: float | None = None) -> float:
    hk = unbiased_hsic(K, K) if hk is None else hk
    hl = unbiased_hsic(L, L) if hl is None else hl
    if hk <= 0 or hl <= 0:
        raise InputError("debiased CKA is undefined for a constant (or rank-deficient to zero) representation")
    return float(unbiased_hsic(K, L) / np.sqrt(hk * hl))


def debiased_cka(X: Any, Y: Any) -> float:
    """Debiased linear CKA of ``X (n, d1)`` and ``Y (n, d2)``, rows the same ``n >= 4`` inputs.

    >>> import numpy as np
    >>> X = np.random.default_rng(1).normal(size=(40, 8))
    >>> Q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(8, 8)))
    >>> round(debiased_cka(X, 3.0 * X @ Q), 6)
    1.0
    """
    X = as_matrix(X, "X")
    Y = as_matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise InputError(f"X and Y need the same rows (inputs); got {X.shape[0]} and {Y.shape[0]}")
    return _cka_from_grams(gram(X), gram(Y))


def cka_matrix(reps_a: Mapping[Any, Any] | Sequence[Any], reps_b: Mapping[Any, Any] | Sequence[Any] | None = None
               ) -> tuple[list[Any], list[Any], np.ndarray]:
    """Debiased CKA between every representation of ``reps_a`` and every one of ``reps_b``
    (default ``reps_a``: layer x layer within one model). Each is ``(n, d)`` over the same ``n``
    inputs; keys (e.g. layers) label the rows and columns. Gram matrices are computed once.

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(30, 5))
    >>> keys, _, M = cka_matrix({0: X, 1: 2 * X})
    >>> keys, M.round(6).tolist()
    ([0, 1], [[1.0, 1.0], [1.0, 1.0]])
    """
    def prep(reps: Mapping[Any, Any] | Sequence[Any]) -> tuple[list[Any], list[np.ndarray], list[float]]:
        items = list(reps.items()) if isinstance(reps, Mapping) else list(enumerate(reps))
        if not items:
            raise InputError("cka_matrix needs at least one representation")
        grams = [gram(v) for _, v in items]
        return [k for k, _ in items], grams, [unbiased_hsic(G, G) for G in grams]

    ka, ga, ha = prep(reps_a)
    kb, gb, hb = (ka, ga, ha) if reps_b is None else prep(reps_b)
    n = {G.shape[0] for G in ga + gb}
    if len(n) != 1:
        raise InputError(f"every representation needs the same inputs (rows); got {sorted(n)}")
    M = np.empty((len(ga), len(gb)))
    for i, (Ga, h_a) in enumerate(zip(ga, ha, strict=True)):
        for j, (Gb, h_b) in enumerate(zip(gb, hb, strict=True)):
            if reps_b is None and j < i:
                M[i, j] = M[j, i]
                continue
            M[i, j] = _cka_from_grams(Ga, Gb, h_a, h_b)
    return ka, kb, M
