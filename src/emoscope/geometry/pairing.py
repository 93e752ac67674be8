"""The shuffled-pairing test of a neutral-fitted ridge map: the real pairing of the neutral texts
against many random pairings, each put through the same procedure.

A map fitted on shuffled pairs of neutral texts knows each model's statistics but not which
text is which. One such map at chance says little; the question is whether the **real** map
carries A's emotion vectors onto B's better than maps fitted on shuffled pairings do. So the
ridge map is refitted on ``n`` random pairings of the training rows (B's rows permuted), each
with its penalty re-chosen by the same cross-validation on the same folds
(:func:`cv_penalties`), and the statistic of the real map is ranked among theirs
(:func:`pairing_test`).

- Null: which neutral text of A goes with which of B does not matter to the mapped emotion
  vectors, i.e. the real pairing is exchangeable with a uniformly random one. Then the real
  map's statistic is one draw among the ``n + 1`` and the rank p
  ``(1 + #{shuffled >= real}) / (n + 1)`` is exact; its floor is ``1 / (n + 1)``.
- Statistic: the mean cosine between each mapped, centred emotion vector of A and its
  counterpart among B's centred vectors (:func:`matched_cos_centred`; centred on the mean over
  emotions, so what every emotion vector shares does not count).

>>> import numpy as np
>>> M = np.eye(3); round(matched_cos_centred(M, M), 12), round(matched_cos_centred(M, M[[1, 2, 0]]), 12)
(1.0, -0.5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emoscope.core.stats import min_pvalue, permutation_pvalue

__all__ = ["LAMBDAS", "cv_r2", "cv_penalties", "ShuffledRidge", "matched_cos_centred", "pairing_test"]

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # x mean eigenvalue of the training Gram matrix


def _thin_svd(Ac: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Ac = U diag(s) V^T`` with ``k = min(n, d)`` columns; ridge weights are then
    ``Ac^T (Ac Ac^T + lam I)^-1 = V diag(s / (s^2 + lam)) U^T``."""
    U, sv, vt = np.linalg.svd(Ac, full_matrices=False)
    return U, sv, vt.T


def cv_r2(A: np.ndarray, B: np.ndarray, perms: np.ndarray, folds: list[np.ndarray], lams: np.ndarray) -> np.ndarray:
    """Mean CV R^2 ``(P, L)`` of the ridge map ``A -> B[perms[p]]`` with penalty ``lams[l]``.

    Only inner products of B's rows enter R^2, so each pairing costs a gather of B's Gram matrix
    and a few dot products, not a refit: with ``P_l`` the test rows' prediction weights on the
    training rows (independent of B) and ``C`` the Gram matrix of B's rows centred on the
    training mean, ``SSE_l = tr(C_ff) - 2 <P_l, C_ft> + <P_l^T P_l, C_tt>``.
    """
    n = A.shape[0]
    Bc = B - B.mean(0)
    G = Bc @ Bc.T  # (n, n)
    L = lams.size
    scores = np.zeros((perms.shape[0], L))
    for f in folds:
        tr = np.setdiff1d(np.arange(n), f)
        ma = A[tr].mean(0)
        U, sv, V = _thin_svd(A[tr] - ma)
        Z = (A[f] - ma) @ V  # (n_f, k)
        P = np.stack([(Z * (sv / (sv**2 + lam))) @ U.T for lam in lams])  # (L, n_f, n_tr): prediction weights
        Q = np.einsum("lfi,lfj->lij", P, P)  # (L, n_tr, n_tr)
        P_flat, Q_flat = P.reshape(L, -1), Q.reshape(L, -1)
        P_row, P_col, P_tot = P.sum(2), P.sum(1), P.sum((1, 2))
        Q_row, Q_tot = Q.sum(2), Q.sum((1, 2))
        for p, perm in enumerate(perms):
            rt, rf = perm[tr], perm[f]
            Gtt, Gft = G[np.ix_(rt, rt)], G[np.ix_(rf, rt)]
            v, u = Gtt.mean(1), Gft.mean(1)
            c = float(v.mean())
            sst = float(np.sum(G[rf, rf] - 2 * u + c))
            cross = P_flat @ Gft.ravel() - P_row @ u - P_col @ v + c * P_tot
            quad = Q_flat @ Gtt.ravel() - 2 * Q_row @ v + c * Q_tot
            scores[p] += 1.0 - (sst - 2 * cross + quad) / sst if sst > 0 else np.nan
    return scores / len(folds)


def cv_penalties(A: np.ndarray, B: np.ndarray, perms: np.ndarray, n_folds: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, dict[float, float], float]:
    """The ridge penalty chosen by k-fold CV R^2 (:func:`cv_r2`) for each pairing of the rows of
    ``A (n, d_a)`` with those of ``B (n, d_b)``: pairing ``p`` puts ``B[perms[p]]`` beside ``A``.
    The folds and the grid (``LAMBDAS`` x the mean eigenvalue ``scale``) are shared, so every
    pairing goes through one procedure. Returns ``(penalty per pairing (P,), {relative penalty:
    mean CV R^2} of pairing 0, scale)``."""
    n = A.shape[0]
    folds = np.array_split(rng.permutation(n), n_folds)
    scale = float(np.sum((A - A.mean(0)) ** 2)) / n
    lams = np.asarray(LAMBDAS) * scale
    scores = cv_r2(A, B, perms, folds, lams)
    best = np.argmax(np.where(np.isnan(scores), -np.inf, scores), axis=1)
    return lams[best], {lam: float(v) for lam, v in zip(LAMBDAS, scores[0], strict=True)}, scale


@dataclass
class ShuffledRidge:
    """The ridge map refitted on ``perms.shape[0]`` random pairings of the training rows, each
    with its own CV penalty: ``W_s = Ac^T (Ac Ac^T + lam_s I)^-1 Bc[perms[s]]``, with the centred
    training rows of A given by their thin SVD ``Ac = U diag(sv) V^T``."""

    U: np.ndarray  # (n_train, k)
    sv: np.ndarray  # (k,)
    V: np.ndarray  # (d_a, k)
    Bc: np.ndarray  # (n_train, d_b) centred training rows of B, in the real order
    perms: np.ndarray  # (n, n_train) the shuffled pairings
    lams: np.ndarray  # (n,) absolute penalty of each shuffled map

    @classmethod
    def fit(cls, Ac: np.ndarray, Bc: np.ndarray, perms: np.ndarray, lams: np.ndarray) -> ShuffledRidge:
        return cls(*_thin_svd(Ac), Bc=Bc, perms=perms, lams=lams)

    @property
    def n(self) -> int:
        return int(self.perms.shape[0])

    def map_vectors(self, V: np.ndarray) -> np.ndarray:
        """Directions ``V (K, d_a)`` through every shuffled map: ``(n, K, d_b)``."""
        G = np.asarray(V, dtype=np.float64) @ self.V  # (K, k)
        out = np.empty((self.n, G.shape[0], self.Bc.shape[1]))
        for lam in np.unique(self.lams):
            H = (G * (self.sv / (self.sv**2 + lam))) @ self.U.T  # (K, n_train)
            for s in np.flatnonzero(self.lams == lam):
                out[s] = H @ self.Bc[self.perms[s]]
        return out


def matched_cos_centred(M: np.ndarray, VB: np.ndarray) -> Any:
    """Mean over emotions of the cosine between mapped vector ``M[..., k, :]`` and ``VB[k]``, both
    centred on their mean over the emotions; ``M (..., K, d)`` gives ``(...)``."""
    Mc = M - M.mean(axis=-2, keepdims=True)
    Bc = VB - VB.mean(axis=0)
    den = np.linalg.norm(Mc, axis=-1) * np.linalg.norm(Bc, axis=-1)
    cos = np.sum(Mc * Bc, axis=-1) / np.where(den > 0, den, 1.0)
    out = cos.mean(axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def _hits_centred(M: np.ndarray, VB: np.ndarray) -> np.ndarray:
    """Centred identification hits of each map in ``M (n, K, d)``: ``(n,)``."""
    Mc = M - M.mean(axis=1, keepdims=True)
    Bc = VB - VB.mean(axis=0)
    Mc = Mc / np.maximum(np.linalg.norm(Mc, axis=-1, keepdims=True), 1e-300)
    Bc = Bc / np.maximum(np.linalg.norm(Bc, axis=-1, keepdims=True), 1e-300)
    S = np.einsum("nkd,jd->nkj", Mc, Bc)
    return np.sum(S.argmax(-1) == np.arange(S.shape[1]), axis=-1)


def pairing_test(VA: np.ndarray, VB: np.ndarray, M: np.ndarray, pairings: ShuffledRidge) -> dict[str, Any]:
    """The real ridge map's ``M = VA @ W (K, d_b)`` against the maps of ``pairings``: rank p of
    :func:`matched_cos_centred` (one-sided, greater), the null's mean and 95% point, its floor, and
    the shuffled maps' centred identification accuracy (mean), for the note."""
    observed = matched_cos_centred(M, VB)
    Ms = pairings.map_vectors(VA)  # (n, K, d_b)
    null = matched_cos_centred(Ms, VB)
    return {"matched_cos_centred": observed, "p_pairing": permutation_pvalue(observed, null),
            "pairing_null_mean": float(null.mean()), "pairing_null_q95": float(np.quantile(null, 0.95)),
            "n_pairings": pairings.n, "pairing_min_p": min_pvalue(pairings.n),
            "pairing_id_acc_centred_mean": float(_hits_centred(Ms, VB).mean() / VB.shape[0])}
