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
than to any other of B's emotions? Its accuracy is tested against chance ``1/K`` (exact
binomial), also on vectors centred on their mean over emotions. "raw" compares the vectors
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

from emoscope.core.stats import binomial_test, permutation_pvalue, rng_from
from emoscope.errors import InputError
from emoscope.geometry.alignment import LinearMap
from emoscope.vectors._data import as_matrix

__all__ = ["NeutralMaps", "fit_neutral_maps", "compare_vectors", "matched_names", "subspace_overlap",
           "MAP_ORDER"]

MAP_ORDER = ("raw", "ridge", "procrustes", "ridge_shuffled", "procrustes_shuffled")
_LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # x mean eigenvalue of the training Gram matrix


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
    notes: list[str] = field(default_factory=list)


def _r2(B: np.ndarray, pred: np.ndarray, mean_b: np.ndarray) -> float:
    sst = float(np.sum((B - mean_b) ** 2))
    return 1.0 - float(np.sum((B - pred) ** 2)) / sst if sst > 0 else float("nan")


def _ridge_dual(Ac: np.ndarray, Bc: np.ndarray, lam: float) -> np.ndarray:
    """``W (d_a, d_b) = Ac^T (Ac Ac^T + lam I)^-1 Bc`` (dual form: n x n, cheap when n < d)."""
    K = Ac @ Ac.T
    return Ac.T @ np.linalg.solve(K + lam * np.eye(K.shape[0]), Bc)


def _cv_ridge(A: np.ndarray, B: np.ndarray, n_folds: int, rng: np.random.Generator) -> tuple[float, dict[float, float]]:
    n = A.shape[0]
    folds = np.array_split(rng.permutation(n), n_folds)
    scale = float(np.trace((A - A.mean(0)) @ (A - A.mean(0)).T)) / n
    scores: dict[float, list[float]] = {lam: [] for lam in _LAMBDAS}
    for f in folds:
        tr = np.setdiff1d(np.arange(n), f)
        ma, mb = A[tr].mean(0), B[tr].mean(0)
        Ac, Bc = A[tr] - ma, B[tr] - mb
        K = Ac @ Ac.T
        w, U = np.linalg.eigh(K)
        UtB = U.T @ Bc  # (n_tr, d_b)
        Kv = (A[f] - ma) @ Ac.T  # (n_f, n_tr)
        for lam in _LAMBDAS:
            pred = Kv @ (U @ (UtB / (w + lam * scale)[:, None])) + mb
            scores[lam].append(_r2(B[f], pred, mb))
    cv = {lam: float(np.mean(v)) for lam, v in scores.items()}
    best = max(cv, key=lambda k: cv[k])
    return best * scale, cv


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
                     seed: int | np.random.Generator | None = 0) -> NeutralMaps:
    """Fit ridge and Procrustes maps from ``NA (n, d_a)`` to ``NB (n, d_b)`` (rows: the same
    neutral texts in both models), and their shuffled-pairing controls; R^2 on held-out rows."""
    A = as_matrix(NA, "NA", min_rows=8).astype(np.float64)
    B = as_matrix(NB, "NB", min_rows=8).astype(np.float64)
    if A.shape[0] != B.shape[0]:
        raise InputError(f"the neutral activations of the two models must hold the same texts; got {A.shape[0]} "
                         f"and {B.shape[0]} rows")
    if not 0 < test_share < 0.5:
        raise InputError(f"test_share must be in (0, 0.5); got {test_share}")
    rng = rng_from(seed)
    n = A.shape[0]
    order = rng.permutation(n)
    n_test = max(2, int(round(test_share * n)))
    test, train = order[:n_test], order[n_test:]
    lam, cv = _cv_ridge(A[train], B[train], n_folds, rng)
    ma, mb = A[train].mean(0), B[train].mean(0)
    Ac, Bc = A[train] - ma, B[train] - mb
    k = min(A.shape[1], B.shape[1], len(train) - 1) if k_common is None else int(k_common)
    if not 1 <= k <= min(A.shape[1], B.shape[1], len(train) - 1):
        raise InputError(f"k_common must be in [1, {min(A.shape[1], B.shape[1], len(train) - 1)}]; got {k_common}")
    perm = rng.permutation(len(train))
    maps: dict[str, LinearMap | None] = {"raw": None}
    r2: dict[str, float] = {}
    for suffix, Bt in (("", Bc), ("_shuffled", Bc[perm])):
        W = _ridge_dual(Ac, Bt, lam)
        maps["ridge" + suffix] = LinearMap(W, ma, mb, "ridge" + suffix)
        r2["ridge" + suffix] = _r2(B[test], (A[test] - ma) @ W + mb, mb)
        Wp, s = _procrustes_common(Ac, Bt, k)
        maps["procrustes" + suffix] = LinearMap(Wp, ma, mb, "procrustes" + suffix)
        r2["procrustes" + suffix] = _r2(B[test], s * (A[test] - ma) @ Wp + mb, mb)
    if A.shape[1] == B.shape[1]:
        r2["raw"] = _r2(B[test], A[test] - ma + mb, mb)
    rel = lam / (float(np.sum(Ac**2)) / len(train))
    return NeutralMaps(maps=maps, r2_heldout=r2, lam=lam, lam_rel=rel, cv_r2=cv, k_common=k,
                       n_train=len(train), n_test=n_test, d_a=A.shape[1], d_b=B.shape[1])


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


def _identification(M: np.ndarray, B: np.ndarray) -> int:
    S = _unit(M) @ _unit(B).T  # (K, K)
    return int(np.sum(S.argmax(1) == np.arange(S.shape[0])))


def compare_vectors(vectors_a: Mapping[str, Any], vectors_b: Mapping[str, Any],
                    maps: Mapping[str, LinearMap | None], *, n_perm: int = 2000,
                    seed: int | np.random.Generator | None = 0, labels: Sequence[str] = ("model A", "model B")
                    ) -> list[dict[str, Any]]:
    """One row per map (``MAP_ORDER``): matched and mismatched cos^2, the name-permutation p of
    the matched cos^2, subspace overlap and its chance level, identification accuracy (raw and
    centred) with binomial p against ``1/K``. ``raw`` (no map) is undefined when widths differ."""
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
        hit, hit_c = _identification(M, VB), _identification(M - M.mean(0), VB - VB.mean(0))
        row.update(defined=True, note="", matched_cos2=matched,
                   mismatched_cos2=float((C.sum() - np.trace(C)) / (K * (K - 1))),
                   p_matched=permutation_pvalue(matched, null), subspace_overlap=ov, subspace_overlap_centred=ovc,
                   chance_overlap_centred=(K - 1) / d_b, median_angle_deg=float(np.median(angles)),
                   id_acc=hit / K, id_p=binomial_test(hit, K, 1.0 / K),
                   id_acc_centred=hit_c / K, id_p_centred=binomial_test(hit_c, K, 1.0 / K))
        rows.append(row)
    return rows
