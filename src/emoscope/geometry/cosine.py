"""Cosine similarities between concept vectors, with a null and a length control.

A raw cosine between two emotion vectors says little on its own: activation spaces are
anisotropic (random directions already have large cosines) and prompt length moves every
hidden state. ``cosine_null`` gives the cosine of random directions drawn from the same
space; ``length_controlled_cosines`` recomputes the vectors after regressing token count
out of the activations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from emoscope.core.arrays import as_labels, as_matrix, numeric_vector
from emoscope.errors import InputError
from emoscope.vectors.estimators import DiffMeans
from emoscope.vectors.preprocess import LengthNormalizer

__all__ = [
    "stack_vectors",
    "cosine_matrix",
    "cosine_null",
    "CosineNull",
    "length_controlled_cosines",
    "LengthControlledCosines",
    "anisotropy",
]


def stack_vectors(vectors: Mapping[str, Any], layer: int | None = None) -> tuple[list[str], np.ndarray]:
    """Names and a ``(k, d)`` matrix from ``{name: (d,) array or ConceptVector}``."""
    if not isinstance(vectors, Mapping) or not vectors:
        raise InputError("vectors must be a non-empty dict {name: (d,) array}")
    names, rows = [], []
    for name, v in vectors.items():
        if hasattr(v, "vectors") and hasattr(v, "layers"):  # a ConceptVector
            if layer is None:
                raise InputError(f"{name!r} is a ConceptVector; pass layer= to pick one of {v.layers}")
            v = v[layer]
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim != 1:
            raise InputError(f"vector {name!r} must be 1-D (d,); got shape {arr.shape}")
        names.append(str(name))
        rows.append(arr)
    widths = {r.shape[0] for r in rows}
    if len(widths) != 1:
        raise InputError(f"vectors have different widths {sorted(widths)}")
    return names, np.stack(rows)


def _cos(M: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(M, axis=1)
    U = M / np.where(norms > 0, norms, 1.0)[:, None]
    C = U @ U.T
    np.fill_diagonal(C, np.where(norms > 0, 1.0, 0.0))
    return np.clip(C, -1.0, 1.0)


def cosine_matrix(vectors: Mapping[str, Any], layer: int | None = None) -> tuple[list[str], np.ndarray]:
    """Pairwise cosine similarities: ``(names, M (k, k))`` in the dict's order.

    Values may be ``(d,)`` arrays or ``ConceptVector``s (then ``layer`` picks one).

    >>> import numpy as np
    >>> names, M = cosine_matrix({"a": np.array([1.0, 0.0]), "b": np.array([1.0, 1.0])})
    >>> names, M.round(3).tolist()
    (['a', 'b'], [[1.0, 0.707], [0.707, 1.0]])
    """
    names, M = stack_vectors(vectors, layer)
    return names, _cos(M)


@dataclass
class CosineNull:
    """Observed cosines, a null distribution, and two-sided p-values per pair."""

    names: list[str]
    observed: np.ndarray  # (k, k)
    null: np.ndarray  # (n,) cosines of random direction pairs
    p: np.ndarray  # (k, k) two-sided: P(|null| >= |observed|); diagonal NaN

    @property
    def null_quantiles(self) -> dict[str, float]:
        q = np.quantile(self.null, [0.025, 0.5, 0.975])
        return {"q025": float(q[0]), "median": float(q[1]), "q975": float(q[2])}

    def to_dict(self) -> dict[str, Any]:
        p = np.where(np.isnan(self.p), None, self.p)
        return {
            "names": self.names,
            "observed": self.observed.tolist(),
            "p": p.tolist(),
            "null_mean": float(self.null.mean()),
            "null_sd": float(self.null.std()),
            "n_null": int(self.null.size),
            **self.null_quantiles,
        }


def cosine_null(
    vectors: Mapping[str, Any],
    X_neutral: Any,
    n: int = 1000,
    seed: int | None = 0,
    layer: int | None = None,
) -> CosineNull:
    """Compare observed cosines with cosines of random directions in the same space.

    Each random direction is the difference of two random rows of ``X_neutral (m, d)``,
    so it follows the anisotropy of the activations (isotropic Gaussian directions would
    make every observed cosine look significant). The null holds ``n`` cosines between
    pairs of such directions; p-values are two-sided, ``(1 + #{|null| >= |obs|}) / (1 + n)``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> N = rng.normal(size=(200, 16))
    >>> res = cosine_null({"a": np.eye(16)[0], "b": np.eye(16)[0] + 0.1}, N, n=500)
    >>> bool(res.p[0, 1] < 0.01)
    True
    """
    names, M = stack_vectors(vectors, layer)
    N = as_matrix(X_neutral, "X_neutral", min_rows=4)
    if N.shape[1] != M.shape[1]:
        raise InputError(f"X_neutral has {N.shape[1]} features but the vectors have {M.shape[1]}")
    if n < 1:
        raise InputError(f"n must be >= 1; got {n}")
    rng = np.random.default_rng(seed)
    m = N.shape[0]

    def directions(k: int) -> np.ndarray:
        i = rng.integers(0, m, size=k)
        j = (i + rng.integers(1, m, size=k)) % m  # j != i
        return N[i].astype(np.float64) - N[j]

    A, B = directions(n), directions(n)  # (n, d) each
    null = np.einsum("nd,nd->n", A, B) / np.maximum(np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1), 1e-300)
    obs = _cos(M)
    absnull = np.sort(np.abs(null))
    exceed = null.size - np.searchsorted(absnull, np.abs(obs) - 1e-12, side="left")
    p = (1.0 + exceed) / (1.0 + null.size)
    np.fill_diagonal(p, np.nan)
    return CosineNull(names, obs, null, p)


@dataclass
class LengthControlledCosines:
    """Class-mean-difference cosines before and after regressing token count out."""

    names: list[str]
    raw: np.ndarray  # (k, k)
    controlled: np.ndarray  # (k, k)

    @property
    def max_abs_change(self) -> float:
        return float(np.max(np.abs(self.raw - self.controlled)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "raw": self.raw.tolist(),
            "controlled": self.controlled.tolist(),
            "max_abs_change": self.max_abs_change,
        }


def length_controlled_cosines(
    acts: Any, labels: Any, token_counts: Any, baseline: str = "neutral"
) -> LengthControlledCosines:
    """Cosines between difference-of-means vectors, raw and with token count regressed out.

    ``acts (n, d)`` at one layer, ``labels (n,)``, ``token_counts (n,)``; vectors are
    ``DiffMeans(c, baseline)`` for every class except the baseline (``baseline="all"``
    keeps every class). The length slope is estimated within classes
    (``LengthNormalizer("regress").fit(X, t, labels)``), because emotion prompts and
    neutral prompts usually differ in length and a pooled slope would eat the emotion
    signal along with the length one. A cosine that drops after the control was carried
    by length.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> t = rng.integers(5, 50, size=300).astype(float)
    >>> y = np.array(["neutral", "joy", "fear"])[np.arange(300) % 3]
    >>> X = rng.normal(size=(300, 8)) + np.outer(t, np.ones(8)) * 0.1
    >>> res = length_controlled_cosines(X, y, t)
    >>> res.names
    ['fear', 'joy']
    """
    X = as_matrix(acts, "acts")
    y = as_labels(labels, X.shape[0])
    t = numeric_vector(token_counts, X.shape[0], "token_counts")
    classes = [c for c in np.unique(y).tolist() if c != baseline]
    if not classes:
        raise InputError(f"no class other than the baseline {baseline!r}")
    Xr = LengthNormalizer("regress").fit_transform(X, t, y)  # (n, d)

    def vecs(A: np.ndarray) -> dict[str, np.ndarray]:
        return {c: DiffMeans(c, baseline).fit(A, y).vector_ for c in classes}

    names, raw = cosine_matrix(vecs(X))
    _, ctrl = cosine_matrix(vecs(Xr))
    return LengthControlledCosines(names, raw, ctrl)


def anisotropy(X: Any, n_pairs: int = 1000, seed: int | None = 0) -> float:
    """Mean cosine between random pairs of distinct rows of ``X (n, d)``.

    Near 0 for isotropic data; transformer hidden states often sit far above it, which is
    why raw cosines between activations (or their means) need a null.

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(500, 64)) + 5.0
    >>> anisotropy(X) > 0.9
    True
    """
    X = as_matrix(X, min_rows=2).astype(np.float64)
    rng = np.random.default_rng(seed)
    m = X.shape[0]
    i = rng.integers(0, m, size=n_pairs)
    j = (i + rng.integers(1, m, size=n_pairs)) % m
    norms = np.linalg.norm(X, axis=1)
    den = norms[i] * norms[j]
    cos = np.einsum("nd,nd->n", X[i], X[j]) / np.where(den > 0, den, 1.0)
    return float(cos.mean())
