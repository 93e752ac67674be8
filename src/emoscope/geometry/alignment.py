"""Cross-model alignment: a linear map from model A's activation space to model B's.

Fit the map on activations of the *same texts* (usually neutral ones) in both models,
then ask whether it carries A's emotion vectors onto B's. The shuffled-pairing control
asks the same of mismatched pairs, so "the map aligns joy with joy" is compared with
"the map aligns joy with an arbitrary other emotion".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from emoscope.core.arrays import as_matrix
from emoscope.errors import InputError
from emoscope.geometry.cosine import stack_vectors

__all__ = ["LinearMap", "procrustes_align", "lstsq_align", "evaluate_alignment", "AlignmentResult"]


@dataclass(frozen=True)
class LinearMap:
    """``x_B ~ (x_A - mean_a) @ W + mean_b``; directions map as ``v @ W``."""

    W: np.ndarray  # (d_a, d_b)
    mean_a: np.ndarray  # (d_a,)
    mean_b: np.ndarray  # (d_b,)
    kind: str

    def apply(self, X: Any) -> np.ndarray:
        """Map activations (rows of ``X (n, d_a)``) into B's space."""
        X = as_matrix(X)
        self._check(X.shape[1])
        return (X - self.mean_a) @ self.W + self.mean_b

    def map_vectors(self, V: Any) -> np.ndarray:
        """Map directions (no translation): ``(k, d_a)`` or ``(d_a,)`` -> ``(k, d_b)`` / ``(d_b,)``."""
        V = np.asarray(V, dtype=np.float64)
        self._check(V.shape[-1])
        return V @ self.W

    def _check(self, d: int) -> None:
        if d != self.W.shape[0]:
            raise InputError(f"input has {d} features but the map expects {self.W.shape[0]}")


def _pair(XA: Any, XB: Any, shuffle_pairs: bool, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    A = as_matrix(XA, "XA", min_rows=2).astype(np.float64)
    B = as_matrix(XB, "XB", min_rows=2).astype(np.float64)
    if A.shape[0] != B.shape[0]:
        raise InputError(f"XA and XB must hold the same texts (rows); got {A.shape[0]} and {B.shape[0]}")
    if shuffle_pairs:
        B = B[np.random.default_rng(seed).permutation(B.shape[0])]
    return A, B


def procrustes_align(
    XA: Any, XB: Any, *, shuffle_pairs: bool = False, seed: int | None = 0
) -> LinearMap:
    """Orthogonal map ``W`` (``W W^T = I`` when ``d_a <= d_b``) minimising
    ``||(XA - mean) W - (XB - mean)||_F``.

    ``shuffle_pairs=True`` fits the control map on rows paired at random.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> XA = rng.normal(size=(100, 4)); R, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    >>> np.allclose(procrustes_align(XA, XA @ R).W, R)
    True
    """
    A, B = _pair(XA, XB, shuffle_pairs, seed)
    ma, mb = A.mean(0), B.mean(0)
    U, _, vt = np.linalg.svd((A - ma).T @ (B - mb), full_matrices=False)
    return LinearMap(U @ vt, ma, mb, "procrustes" + ("_shuffled" if shuffle_pairs else ""))


def lstsq_align(
    XA: Any,
    XB: Any,
    *,
    alpha: float = 0.0,
    shuffle_pairs: bool = False,
    seed: int | None = 0,
) -> LinearMap:
    """Least-squares (ridge when ``alpha > 0``) map from centred ``XA`` to centred ``XB``.

    With more features than rows and ``alpha=0`` the minimum-norm solution is used.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> XA = rng.normal(size=(100, 4)); M = rng.normal(size=(4, 3))
    >>> np.allclose(lstsq_align(XA, XA @ M).W, M)
    True
    """
    A, B = _pair(XA, XB, shuffle_pairs, seed)
    if alpha < 0:
        raise InputError(f"alpha must be >= 0; got {alpha}")
    ma, mb = A.mean(0), B.mean(0)
    Ac, Bc = A - ma, B - mb
    if alpha > 0:
        W = np.linalg.solve(Ac.T @ Ac + alpha * np.eye(Ac.shape[1]), Ac.T @ Bc)
    else:
        W, *_ = np.linalg.lstsq(Ac, Bc, rcond=None)
    return LinearMap(W, ma, mb, "lstsq" + ("_shuffled" if shuffle_pairs else ""))


@dataclass
class AlignmentResult:
    """How well a map carries A's vectors onto B's, against a shuffled-pairing control."""

    names: list[str]
    cosines: np.ndarray  # (k,) cos(map(v_A[i]), v_B[i])
    mean_cosine: float
    retrieval_acc: float  # share of i whose nearest v_B (by cosine) is v_B[i]
    shuffled_mean: float | None = None  # mean cosine with mismatched names
    shuffled_q975: float | None = None
    p_value: float | None = None  # P(shuffled mean >= observed mean)
    control_map_mean_cosine: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "cosines": dict(zip(self.names, map(float, self.cosines), strict=True)),
            "mean_cosine": self.mean_cosine,
            "retrieval_acc": self.retrieval_acc,
            "shuffled_mean": self.shuffled_mean,
            "shuffled_q975": self.shuffled_q975,
            "p_value": self.p_value,
            "control_map_mean_cosine": self.control_map_mean_cosine,
        }


def _unit_rows(M: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(M, axis=1, keepdims=True)
    return M / np.where(n > 0, n, 1.0)


def evaluate_alignment(
    map: LinearMap,
    vectors_A: Mapping[str, Any],
    vectors_B: Mapping[str, Any],
    shuffled_control: bool = True,
    *,
    n_shuffles: int = 1000,
    control_map: LinearMap | None = None,
    layer_a: int | None = None,
    layer_b: int | None = None,
    seed: int | None = 0,
) -> AlignmentResult:
    """Cosine between mapped A-vectors and their B counterparts (matched by name).

    With ``shuffled_control``, names are re-paired at random ``n_shuffles`` times (each a
    derangement-free random permutation) to give a null for the mean cosine and a
    p-value. ``control_map`` (e.g. ``procrustes_align(XA, XB, shuffle_pairs=True)``) is
    evaluated on the true pairs as a second control.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> XA = rng.normal(size=(200, 6)); R, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    >>> vA = {f"e{i}": rng.normal(size=6) for i in range(5)}
    >>> vB = {k: v @ R for k, v in vA.items()}
    >>> res = evaluate_alignment(procrustes_align(XA, XA @ R), vA, vB)
    >>> round(res.mean_cosine, 6), res.retrieval_acc
    (1.0, 1.0)
    """
    names_a, A = stack_vectors(vectors_A, layer_a)
    names_b, B = stack_vectors(vectors_B, layer_b)
    common = [n for n in names_a if n in set(names_b)]
    if len(common) < 2:
        raise InputError("evaluate_alignment needs at least two names shared by vectors_A and vectors_B")
    A = A[[names_a.index(n) for n in common]]
    B = B[[names_b.index(n) for n in common]]
    mapped = _unit_rows(map.map_vectors(A))  # (k, d_b)
    Bu = _unit_rows(B)
    if mapped.shape[1] != Bu.shape[1]:
        raise InputError(f"mapped vectors have {mapped.shape[1]} features but vectors_B have {Bu.shape[1]}")
    S = mapped @ Bu.T  # (k, k) cos(map(a_i), b_j)
    cos = np.diag(S).copy()
    res = AlignmentResult(
        names=common,
        cosines=cos,
        mean_cosine=float(cos.mean()),
        retrieval_acc=float(np.mean(S.argmax(1) == np.arange(len(common)))),
    )
    if shuffled_control:
        rng = np.random.default_rng(seed)
        k = len(common)
        null = np.array([S[np.arange(k), rng.permutation(k)].mean() for _ in range(n_shuffles)])
        res.shuffled_mean = float(null.mean())
        res.shuffled_q975 = float(np.quantile(null, 0.975))
        res.p_value = float((1 + np.sum(null >= res.mean_cosine - 1e-12)) / (1 + n_shuffles))
    if control_map is not None:
        ctrl = _unit_rows(control_map.map_vectors(A))
        res.control_map_mean_cosine = float(np.mean(np.einsum("kd,kd->k", ctrl, Bu)))
    return res
