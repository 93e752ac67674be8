"""Preprocessing transformers applied to activations before estimating directions.

Why they exist: hidden-state norms grow with prompt length, and the top principal
components of any text dominate cosines. Published replications that skipped these steps
reported similarities that vanished once length was controlled.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emoscope.core.arrays import as_matrix, numeric_vector
from emoscope.errors import InputError

__all__ = ["LengthNormalizer", "Centerer", "NeutralNullspace"]


def _check_fitted(est: Any, attr: str) -> None:
    if not hasattr(est, attr):
        raise InputError(f"{type(est).__name__} is not fitted; call fit(...) first")


def _check_width(est: Any, X: np.ndarray) -> None:
    d = getattr(est, "n_features_in_", None)
    if d is not None and X.shape[1] != d:
        raise InputError(f"X has {X.shape[1]} features but {type(est).__name__} was fitted on {d}")


class LengthNormalizer:
    """Remove prompt length from activations.

    ``mode="unit"`` scales each row to unit L2 norm (no state; ``token_counts`` ignored).
    ``mode="regress"`` fits ``x = a + b * token_count`` per feature and returns the
    residuals ``x - a - b * t``. Given ``labels`` at fit time, the slope ``b`` is pooled
    from the variation *within* each class (ANCOVA): when classes differ in typical
    length, a slope fitted across classes would also absorb the class differences that
    happen to go with length. With labels, ``a`` is set so the overall mean becomes 0 and
    class means keep their length-adjusted differences.

    >>> import numpy as np
    >>> t = np.array([1., 2., 3., 4.])
    >>> X = np.c_[t * 2.0, np.ones(4)]
    >>> float(np.abs(LengthNormalizer("regress").fit(X, t).transform(X, t)).max()) < 1e-9
    True
    """

    def __init__(self, mode: str = "unit") -> None:
        self.mode = mode

    def fit(self, X: Any, token_counts: Any = None, labels: Any = None) -> LengthNormalizer:
        X = as_matrix(X)  # (n, d)
        self.n_features_in_ = X.shape[1]
        if self.mode == "unit":
            self.coef_ = None
            return self
        if self.mode != "regress":
            raise InputError(f"LengthNormalizer mode must be 'unit' or 'regress'; got {self.mode!r}")
        if token_counts is None:
            raise InputError("LengthNormalizer(mode='regress') needs token_counts")
        t = numeric_vector(token_counts, X.shape[0], "token_counts")
        X64 = X.astype(np.float64)
        if labels is None:
            A = np.c_[np.ones_like(t), t]  # (n, 2)
            # lstsq handles a constant token count (rank 1) by the minimum-norm solution.
            self.coef_, *_ = np.linalg.lstsq(A, X64, rcond=None)  # (2, d)
            return self
        y = np.asarray(labels).astype(str)
        if y.shape != t.shape:
            raise InputError(f"labels has {y.shape[0]} entries but X has {X.shape[0]} rows")
        tc = t.copy()
        Xc = X64.copy()
        for c in np.unique(y):
            rows = y == c
            tc[rows] -= t[rows].mean()
            Xc[rows] -= X64[rows].mean(0)
        denom = float(tc @ tc)
        if denom <= 0:
            raise InputError("token counts do not vary within any class, so length cannot be separated from class")
        b = (tc @ Xc) / denom  # (d,) pooled within-class slope
        a = X64.mean(0) - b * t.mean()
        self.coef_ = np.stack([a, b])  # (2, d)
        return self

    def transform(self, X: Any, token_counts: Any = None) -> np.ndarray:
        X = as_matrix(X)
        _check_fitted(self, "coef_")
        _check_width(self, X)
        if self.mode == "unit":
            norms = np.linalg.norm(X, axis=1, keepdims=True)  # (n, 1)
            return X / np.where(norms > 0, norms, 1.0)
        if token_counts is None:
            raise InputError("LengthNormalizer(mode='regress').transform needs token_counts")
        t = numeric_vector(token_counts, X.shape[0], "token_counts")
        return (X - np.c_[np.ones_like(t), t] @ self.coef_).astype(X.dtype)

    def fit_transform(self, X: Any, token_counts: Any = None, labels: Any = None) -> np.ndarray:
        return self.fit(X, token_counts, labels).transform(X, token_counts)


class Centerer:
    """Subtract the mean row seen at fit time.

    >>> import numpy as np
    >>> Centerer().fit_transform(np.array([[1., 2.], [3., 4.]])).tolist()
    [[-1.0, -1.0], [1.0, 1.0]]
    """

    def __init__(self) -> None:
        pass

    def fit(self, X: Any, y: Any = None) -> Centerer:
        X = as_matrix(X)
        self.mean_ = X.mean(0)  # (d,)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        X = as_matrix(X)
        _check_fitted(self, "mean_")
        _check_width(self, X)
        return X - self.mean_.astype(X.dtype)

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        return self.fit(X).transform(X)


class NeutralNullspace:
    """Project out the top principal components of neutral activations.

    Fit on neutral text only. With ``n_components`` set, that many PCs are removed;
    otherwise the smallest number of PCs whose cumulative explained variance reaches
    ``variance`` (a share in (0, 1]). The projection is linear (``X - X V^T V``), so
    differences of transformed rows equal transformed differences.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> N = rng.normal(size=(200, 4)) * [10., 1., 1., 1.]
    >>> nn = NeutralNullspace(variance=0.5).fit(N)
    >>> nn.n_components_, round(abs(float(nn.components_[0, 0])), 2)
    (1, 1.0)
    """

    def __init__(self, variance: float = 0.5, n_components: int | None = None) -> None:
        self.variance = variance
        self.n_components = n_components

    def fit(self, X_neutral: Any, y: Any = None) -> NeutralNullspace:
        X = as_matrix(X_neutral, "X_neutral", min_rows=2).astype(np.float64)  # (n, d)
        self.mean_ = X.mean(0)
        _, s, vt = np.linalg.svd(X - self.mean_, full_matrices=False)
        ratio = s**2 / max(float(np.sum(s**2)), np.finfo(float).tiny)  # (r,)
        if self.n_components is not None:
            k = int(self.n_components)
            if not 0 <= k <= vt.shape[0]:
                raise InputError(
                    f"n_components must be in [0, {vt.shape[0]}] for this data; got {self.n_components}"
                )
        else:
            v = float(self.variance)
            if not 0 < v <= 1:
                raise InputError(f"variance must be a share in (0, 1]; got {self.variance}")
            k = int(np.searchsorted(np.cumsum(ratio), v - 1e-12) + 1)
            k = min(k, vt.shape[0])
        self.components_ = vt[:k]  # (k, d)
        self.explained_variance_ratio_ = ratio[:k]
        self.n_components_ = k
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        X = as_matrix(X)
        _check_fitted(self, "components_")
        _check_width(self, X)
        V = self.components_  # (k, d)
        return (X - (X @ V.T) @ V).astype(X.dtype)

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        return self.fit(X).transform(X)
