"""Cross-model alignment fitted on neutral text only, judged on emotion vectors, with controls.

The question: is model A's emotion geometry the same as model B's up to a change of
coordinates? :func:`fit_neutral_maps` fits linear maps A -> B on activations of the *same
neutral texts* in both models (no emotion text is used):

- ``ridge``: ridge least squares; with fewer texts than features the penalty matters, so it is
  chosen by k-fold cross-validation on the training rows, and R^2 is reported on held-out
  neutral texts (pooled over features: ``1 - SSE / SST``);
- ``procrustes``: both sides reduced by PCA to a common dimension ``k`` (at most the smaller
  width and the training rows minus one), then an orthogonal map between the two PCA
  coordinate systems (with one isotropic scale for the R^2);
- the same two fitted on **shuffled** pairings of the neutral rows (the shuffled-pairing
  control: a map that knows the two spaces' statistics but not which text is which).

:func:`compare_vectors` applies each map to A's emotion vectors and compares them with B's:
matched cos^2 (and the cos^2 of mismatched names, which shows how much all emotion vectors
share), the subspace overlap of the two sets (mean cos^2 of their principal angles; ``K/d``
for random subspaces), and the **identification test**: is A's mapped anger closer to B's anger
than to any other of B's emotions? Its p is exact over the assignments of counterparts
(:func:`identification_pvalue`: the hits are not independent, so not a binomial), also on
vectors centred on their mean over emotions. The shuffled-pairing test ranks the real ridge map
among maps refitted on random pairings of the neutral texts (``geometry.pairing``). "raw" compares the vectors
without a map, defined only when the widths match.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> R, _ = np.linalg.qr(rng.normal(size=(16, 16)))
>>> NA = rng.normal(size=(120, 16)); NB = NA @ R
>>> VA = {f"e{i}": rng.normal(size=16) for i in range(6)}
>>> VB = {k: v @ R for k, v in VA.items()}
>>> rows = compare_vectors(VA, VB, fit_neutral_maps(NA, NB).maps)
>>> [(r["map"], round(r["matched_cos2"], 3), r["id_acc"]) for r in rows][1:3]
[('ridge', 1.0, 1.0), ('procrustes', 1.0, 1.0)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emoscope.core.arrays import as_matrix
from emoscope.core.stats import permutation_pvalue, rng_from
from emoscope.errors import InputError
from emoscope.geometry.alignment import LinearMap
from emoscope.geometry.pairing import ShuffledRidge, cv_penalties, matched_cos_centred, pairing_test

__all__ = ["NeutralMaps", "fit_neutral_maps", "compare_vectors", "matched_names", "subspace_overlap",
           "identification_pvalue", "MAP_ORDER"]

MAP_ORDER = ("raw", "ridge", "procrustes", "ridge_shuffled", "procrustes_shuffled")


@dataclass
class NeutralMaps:
    """Maps fitted on neutral rows, with the ridge penalty chosen by CV and held-out R^2."""

    maps: dict[str, LinearMap | None]  # "raw" is None (identity, or undefined when widths differ)
    r2_heldout: dict[str, float]
    lam: float  # chosen ridge penalty (absolute)
    lam_rel: float  # the same, relative to the mean eigenvalue of the Gram matrix
    cv_r2: dict[float, float]  # relative penalty -> mean CV R^2
    k_common: int
    n_train: int
    n_test: int
    d_a: int
    d_b: int
    #: the ridge map refitted on ``n_pairings`` random pairings of the training rows, each with its
    #: own CV penalty (``geometry.pairing``): the shuffled-pairing null; None when ``n_pairings=0``
    pairings: ShuffledRidge | None = None
    notes: list[str] = field(default_factory=list)


def _r2(B: np.ndarray, pred: np.ndarray, mean_b: np.ndarray) -> float:
    sst = float(np.sum((B - mean_b) ** 2))
    return 1.0 - float(np.sum((B - pred) ** 2)) / sst if sst > 0 else float("nan")


def _ridge_dual(Ac: np.ndarray, Bc: np.ndarray, lam: float) -> np.ndarray:
    """``W (d_a, d_b) = Ac^T (Ac Ac^T + lam I)^-1 Bc`` (dual form: n x n, cheap when n < d)."""
    K = Ac @ Ac.T
    return Ac.T @ np.linalg.solve(K + lam * np.eye(K.shape[0]), Bc)


def _procrustes_common(Ac: np.ndarray, Bc: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """``W = P_A R P_B^T`` (orthogonal between k-dim PCA coordinates) and the isotropic scale."""
    _, _, va = np.linalg.svd(Ac, full_matrices=False)
    _, _, vb = np.linalg.svd(Bc, full_matrices=False)
    Pa, Pb = va[:k].T, vb[:k].T  # (d_a, k), (d_b, k)
    Za, Zb = Ac @ Pa, Bc @ Pb
    U, s, vt = np.linalg.svd(Za.T @ Zb)
    R = U @ vt  # (k, k)
    scale = float(s.sum() / max(float(np.sum(Za**2)), np.finfo(float).tiny))
    return Pa @ R @ Pb.T, scale


def fit_neutral_maps(NA: Any, NB: Any, *, test_share: float = 0.2, n_folds: int = 5, k_common: int | None = None,
                     n_pairings: int = 99, seed: int | np.random.Generator | None = 0) -> NeutralMaps:
    """Fit ridge and Procrustes maps from ``NA (n, d_a)`` to ``NB (n, d_b)`` (rows: the same
    neutral texts in both models), and their shuffled-pairing controls; R^2 on held-out rows.

    The ridge penalty is chosen by ``n_folds``-fold CV on the training rows. ``n_pairings``
    random pairings of the training rows go through the same CV and fit
    (``NeutralMaps.pairings``, the null of the shuffled-pairing test); the first of them also
    gives the ``ridge_shuffled`` and ``procrustes_shuffled`` maps of the table."""
    A = as_matrix(NA, "NA", min_rows=8).astype(np.float64)
    B = as_matrix(NB, "NB", min_rows=8).astype(np.float64)
    if A.shape[0] != B.shape[0]:
        raise InputError(f"the neutral activations of the two models must hold the same texts; got {A.shape[0]} "
                         f"and {B.shape[0]} rows")
    if not 0 < test_share < 0.5:
        raise InputError(f"test_share must be in (0, 0.5); got {test_share}")
    if int(n_pairings) < 1:
        raise InputError(f"n_pairings must be >= 1 (the shuffled-pairing control); got {n_pairings}")
    rng = rng_from(seed)
    n = A.shape[0]
    order = rng.permutation(n)
    n_test = max(2, int(round(test_share * n)))
    test, train = order[:n_test], order[n_test:]
    fold_rng = np.random.default_rng(rng.integers(2**63))  # the folds, whatever n_pairings is
    perms = np.stack([np.arange(len(train))] + [rng.permutation(len(train)) for _ in range(int(n_pairings))])
    lams, cv, scale = cv_penalties(A[train], B[train], perms, n_folds, fold_rng)
    lam = float(lams[0])
    ma, mb = A[train].mean(0), B[train].mean(0)
    Ac, Bc = A[train] - ma, B[train] - mb
    k = min(A.shape[1], B.shape[1], len(train) - 1) if k_common is None else int(k_common)
    if not 1 <= k <= min(A.shape[1], B.shape[1], len(train) - 1):
        raise InputError(f"k_common must be in [1, {min(A.shape[1], B.shape[1], len(train) - 1)}]; got {k_common}")
    maps: dict[str, LinearMap | None] = {"raw": None}
    r2: dict[str, float] = {}
    for suffix, Bt, lam_t in (("", Bc, lam), ("_shuffled", Bc[perms[1]], float(lams[1]))):
        W = _ridge_dual(Ac, Bt, lam_t)
        maps["ridge" + suffix] = LinearMap(W, ma, mb, "ridge" + suffix)
        r2["ridge" + suffix] = _r2(B[test], (A[test] - ma) @ W + mb, mb)
        Wp, s = _procrustes_common(Ac, Bt, k)
        maps["procrustes" + suffix] = LinearMap(Wp, ma, mb, "procrustes" + suffix)
        r2["procrustes" + suffix] = _r2(B[test], s * (A[test] - ma) @ Wp + mb, mb)
    if A.shape[1] == B.shape[1]:
        r2["raw"] = _r2(B[test], A[test] - ma + mb, mb)
    pairings = ShuffledRidge.fit(Ac, Bc, perms[1:], lams[1:])
    return NeutralMaps(maps=maps, r2_heldout=r2, lam=lam, lam_rel=lam / scale, cv_r2=cv, k_common=k,
                       n_train=len(train), n_test=n_test, d_a=A.shape[1], d_b=B.shape[1], pairings=pairings)


def matched_names(vectors_a: Mapping[str, Any], vectors_b: Mapping[str, Any], *, label_a: str = "model A",
                  label_b: str = "model B") -> list[str]:
    """The emotions both sets have, in A's order; one ``InputError`` naming any emotion that one
    side lacks (the comparison needs the same emotions on both sides)."""
    a, b = list(vectors_a), list(vectors_b)
    only_a, only_b = [e for e in a if e not in set(b)], [e for e in b if e not in set(a)]
    if only_a or only_b:
        parts = [f"{label_b} has no vector for {', '.join(only_a)}" if only_a else "",
                 f"{label_a} has no vector for {', '.join(only_b)}" if only_b else ""]
        raise InputError("emotions differ between the models: " + "; ".join(p for p in parts if p)
                         + " (fit both on the same dataset, or drop those emotions)")
    if len(a) < 3:
        raise InputError(f"cross-model comparison needs at least 3 emotions; got {len(a)}")
    return a


def _unit(M: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(M, axis=1, keepdims=True)
    return M / np.where(n > 0, n, 1.0)


def subspace_overlap(X: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cos^2 of the principal angles between the row spaces of ``X (k, d)`` and ``Y (k, d)``
    (1: the same subspace; ``k/d`` expected for random ones), and the angles in degrees."""
    Qx, _ = np.linalg.qr(X.T)
    Qy, _ = np.linalg.qr(Y.T)
    s = np.clip(np.linalg.svd(Qx.T @ Qy, compute_uv=False), 0.0, 1.0)
    return float(np.mean(s**2)), np.degrees(np.arccos(s))


def _nearest(M: np.ndarray, B: np.ndarray) -> np.ndarray:
    """For each row of ``M``, the index of the row of ``B`` with the largest cosine: ``(K,)``."""
    return (_unit(M) @ _unit(B).T).argmax(1)


def identification_pvalue(nearest: Any) -> float:
    """Exact p of the identification test: ``P(#{i : s(i) = nearest[i]} >= hits)`` for a uniformly
    random assignment ``s`` of counterparts (a permutation of the ``K`` targets), where ``hits`` is
    the observed count ``#{i : nearest[i] = i}``.

    The null permutes which target is "the counterpart" (the columns of the similarity matrix); the
    hits are not independent (under a one-to-one match they are the fixed points of a
    permutation), so a binomial count against ``1/K`` is too small. The count is exact for any
    ``K``: with ``c_v`` rows nearest to target ``v``, the assignments that agree with ``nearest`` on a
    set of ``t`` rows number ``e_t(c) (K - t)!`` (``e_t``: elementary symmetric polynomial), and
    inclusion-exclusion turns those into the distribution of the number of agreements. The
    smallest p is ``1/K!`` (a perfect match).

    >>> round(identification_pvalue([0, 1, 2, 3, 5, 4, 7, 6]), 4)  # 4 of 8: binomial would say 0.011
    0.0191
    >>> identification_pvalue([0, 1, 2]) == 1 / 6, identification_pvalue([0, 0, 0])  # a hub is no evidence
    (True, 1.0)
    """
    from math import comb, factorial

    a = np.asarray(nearest, dtype=np.int64).ravel()
    K = a.size
    if K == 0 or a.min() < 0 or a.max() >= K:
        raise InputError(f"nearest must hold indices in [0, {K}); got {a.tolist()}")
    hits = int(np.sum(a == np.arange(K)))
    e = [1]  # elementary symmetric polynomials of the multiplicities, by degree
    for c in np.bincount(a, minlength=K)[np.bincount(a, minlength=K) > 0].tolist():
        e = [(e[t] if t < len(e) else 0) + (c * e[t - 1] if t >= 1 else 0) for t in range(len(e) + 1)]
    N = [e[t] * factorial(K - t) for t in range(len(e))]  # (set of t agreements, assignment) pairs
    exactly = [sum((-1) ** (t - h) * comb(t, h) * N[t] for t in range(h, len(N))) for h in range(len(N))]
    return float(sum(exactly[hits:]) / factorial(K))


def compare_vectors(vectors_a: Mapping[str, Any], vectors_b: Mapping[str, Any],
                    maps: Mapping[str, LinearMap | None], *, n_perm: int = 2000,
                    seed: int | np.random.Generator | None = 0, labels: Sequence[str] = ("model A", "model B"),
                    pairings: ShuffledRidge | None = None) -> list[dict[str, Any]]:
    """One row per map (``MAP_ORDER``): matched and mismatched cos^2, the name-permutation p of
    the matched cos^2, subspace overlap and its chance level, identification accuracy (raw and
    centred) with its exact permutation p (:func:`identification_pvalue`; floor ``id_p_min =
    1/K!``), and the mean matched cosine of centred vectors. ``raw`` (no map) is undefined when
    widths differ. With ``pairings`` (``NeutralMaps.pairings``) the ``ridge`` row also gets the
    shuffled-pairing test (``geometry.pairing.pairing_test``: ``p_pairing`` and its null)."""
    from math import factorial

    names = matched_names(vectors_a, vectors_b, label_a=labels[0], label_b=labels[1])
    VA = np.stack([np.asarray(vectors_a[e], dtype=np.float64).ravel() for e in names])  # (K, d_a)
    VB = np.stack([np.asarray(vectors_b[e], dtype=np.float64).ravel() for e in names])  # (K, d_b)
    K, d_b = VB.shape
    rng = rng_from(seed)
    rows = []
    for name in [m for m in MAP_ORDER if m in maps] + [m for m in maps if m not in MAP_ORDER]:
        lm = maps[name]
        row: dict[str, Any] = {"map": name, "n_emotions": K, "chance_id": 1.0 / K,
                               "chance_overlap": K / d_b, "chance_cos2": 1.0 / d_b}
        if lm is None and VA.shape[1] != VB.shape[1]:
            row["defined"] = False
            row["note"] = f"undefined: widths differ ({VA.shape[1]} vs {VB.shape[1]})"
            rows.append(row)
            continue
        M = VA if lm is None else lm.map_vectors(VA)  # (K, d_b)
        C = (_unit(M) @ _unit(VB).T) ** 2  # (K, K) cos^2
        matched = float(np.mean(np.diag(C)))
        null = np.array([np.mean(C[np.arange(K), rng.permutation(K)]) for _ in range(n_perm)])
        ov, angles = subspace_overlap(M, VB)
        ovc, _ = subspace_overlap(M - M.mean(0), VB - VB.mean(0))
        near, near_c = _nearest(M, VB), _nearest(M - M.mean(0), VB - VB.mean(0))
        row.update(defined=True, note="", matched_cos2=matched,
                   mismatched_cos2=float((C.sum() - np.trace(C)) / (K * (K - 1))),
                   p_matched=permutation_pvalue(matched, null), subspace_overlap=ov, subspace_overlap_centred=ovc,
                   chance_overlap_centred=(K - 1) / d_b, median_angle_deg=float(np.median(angles)),
                   id_acc=float(np.mean(near == np.arange(K))), id_p=identification_pvalue(near),
                   id_acc_centred=float(np.mean(near_c == np.arange(K))), id_p_centred=identification_pvalue(near_c),
                   id_p_min=1.0 / factorial(K), matched_cos_centred=matched_cos_centred(M, VB))
        if name == "ridge" and pairings is not None:
            row.update(pairing_test(VA, VB, M, pairings))
        rows.append(row)
    return rows
