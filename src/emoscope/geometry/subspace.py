"""Subspace comparisons: principal angles, linear CKA, and PCA of emotion vectors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from emoscope.core.arrays import as_matrix
from emoscope.errors import InputError
from emoscope.geometry.cosine import stack_vectors

__all__ = ["principal_angles", "linear_cka", "emotion_pca", "EmotionPCA"]


def principal_angles(A: Any, B: Any) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spaces of ``A (d, p)``
    and ``B (d, q)``; ``min(p, q)`` angles. 0 means a shared direction.

    To compare sets of row vectors (e.g. emotion vectors ``(k, d)``), pass their
    transposes.

    >>> import numpy as np
    >>> A = np.eye(3)[:, :2]; B = np.eye(3)[:, 1:]
    >>> np.degrees(principal_angles(A, B)).round(6).tolist()
    [0.0, 90.0]
    """
    A = as_matrix(A, "A")
    B = as_matrix(B, "B")
    if A.shape[0] != B.shape[0]:
        raise InputError(f"A and B must have the same number of rows (d); got {A.shape[0]} and {B.shape[0]}")
    Qa, _ = np.linalg.qr(A.astype(np.float64))
    Qb, _ = np.linalg.qr(B.astype(np.float64))
    s = np.linalg.svd(Qa.T @ Qb, compute_uv=False)
    return np.arccos(np.clip(s, -1.0, 1.0))


def linear_cka(X: Any, Y: Any) -> float:
    """Linear centred kernel alignment between representations ``X (n, d1)`` and
    ``Y (n, d2)`` of the same ``n`` inputs (Kornblith et al., 2019).

    1 for identical representations; invariant to orthogonal transforms and isotropic
    scaling of either side.

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(50, 5))
    >>> round(linear_cka(X, 3 * X), 6)
    1.0
    """
    X = as_matrix(X, "X").astype(np.float64)
    Y = as_matrix(Y, "Y").astype(np.float64)
    if X.shape[0] != Y.shape[0]:
        raise InputError(f"X and Y need the same rows (inputs); got {X.shape[0]} and {Y.shape[0]}")
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    if X.shape[1] + Y.shape[1] > 2 * X.shape[0]:
        # Gram form is cheaper when features outnumber inputs.
        Kx, Ky = X @ X.T, Y @ Y.T
        hsic, nx, ny = np.sum(Kx * Ky), np.linalg.norm(Kx), np.linalg.norm(Ky)
    else:
        hsic = np.linalg.norm(Y.T @ X) ** 2
        nx, ny = np.linalg.norm(X.T @ X), np.linalg.norm(Y.T @ Y)
    if nx == 0 or ny == 0:
        raise InputError("linear_cka is undefined for a constant representation")
    return float(hsic / (nx * ny))


@dataclass
class EmotionPCA:
    """PCA of a set of concept vectors (centred across concepts)."""

    names: list[str]
    explained_variance_ratio: np.ndarray  # (r,)
    components: np.ndarray  # (r, d)
    scores: np.ndarray  # (k, r) coordinates of each concept on the PCs

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "explained_variance_ratio": self.explained_variance_ratio.tolist(),
            "scores": {n: s.tolist() for n, s in zip(self.names, self.scores, strict=True)},
        }


def emotion_pca(vectors: Mapping[str, Any], layer: int | None = None, normalize: bool = True) -> EmotionPCA:
    """Principal components of emotion vectors: the share of variance per PC and each
    emotion's coordinates (the first two often read as valence and arousal).

    ``normalize`` scales every vector to unit norm first, so one long vector does not
    own the first component.

    >>> import numpy as np
    >>> v = {"joy": np.array([1.0, 0.1]), "calm": np.array([0.9, -0.1]), "fear": np.array([-1.0, 0.0])}
    >>> float(emotion_pca(v).explained_variance_ratio[0]) > 0.9
    True
    """
    names, M = stack_vectors(vectors, layer)
    if len(names) < 2:
        raise InputError("emotion_pca needs at least two vectors")
    if normalize:
        norms = np.linalg.norm(M, axis=1, keepdims=True)
        M = M / np.where(norms > 0, norms, 1.0)
    Mc = M - M.mean(0)  # (k, d)
    U, s, vt = np.linalg.svd(Mc, full_matrices=False)
    r = min(len(names) - 1, vt.shape[0])
    total = float(np.sum(s**2))
    ratio = s[:r] ** 2 / total if total > 0 else np.zeros(r)
    return EmotionPCA(names, ratio, vt[:r], U[:, :r] * s[:r])
