"""Direction estimators: one concept direction from labelled activations at one layer.

All follow the scikit-learn estimator contract: settings in ``__init__`` (stored as given,
no logic), ``fit`` returns ``self``, learned state ends in ``_``, randomness comes from
``seed``. None of them holds a model; they see ``(n, d)`` arrays only.

Learned state shared by all of them:

- ``vector_``: the raw direction in activation units, shape ``(d,)``;
- ``direction_``: ``vector_`` scaled to unit norm;
- ``norm_``: ``||vector_||``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emoscope.core.arrays import as_labels, as_matrix, class_rows, unit
from emoscope.errors import InputError

__all__ = ["DiffMeans", "PCADiff", "ProbeDirection", "TokenDiff", "METHODS"]


class _Direction:
    """Mixin: projection onto the learned unit direction."""

    vector_: np.ndarray
    direction_: np.ndarray
    norm_: float

    def _set_vector(self, v: np.ndarray) -> None:
        self.vector_ = np.asarray(v, dtype=np.float64)  # (d,)
        self.norm_ = float(np.linalg.norm(self.vector_))
        self.direction_ = unit(self.vector_)
        self.n_features_in_ = self.vector_.shape[0]

    def project(self, X: Any) -> np.ndarray:
        """Scalar projection of each row of ``X`` on the unit direction, shape ``(n,)``.

        >>> import numpy as np
        >>> X = np.r_[np.zeros((5, 3)), np.ones((5, 3))]
        >>> y = ["neutral"] * 5 + ["joy"] * 5
        >>> DiffMeans("joy").fit(X, y).project(np.ones((1, 3))).round(3).tolist()
        [1.732]
        """
        if not hasattr(self, "direction_"):
            raise InputError(f"{type(self).__name__} is not fitted; call fit(X, y) first")
        X = as_matrix(X)
        if X.shape[1] != self.direction_.shape[0]:
            raise InputError(
                f"X has {X.shape[1]} features but the direction was fitted on {self.direction_.shape[0]}"
            )
        return X @ self.direction_  # (n,)

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def _baseline_rows(y: np.ndarray, target: str, baseline: str) -> np.ndarray:
    """Rows of the baseline: a class name, or "all" = every row not of ``target``."""
    if baseline == "all":
        idx = np.flatnonzero(y != target)
        if idx.size == 0:
            raise InputError(f"baseline 'all' needs rows of classes other than {target!r}")
        return idx
    if baseline == target:
        raise InputError(f"baseline {baseline!r} is the target class itself")
    return class_rows(y, baseline, "baseline class")


class DiffMeans(_Direction):
    """Difference of means: ``mean(X[target]) - mean(X[baseline])``.

    ``baseline`` is a class name (default ``"neutral"``) or ``"all"``, which subtracts the
    mean of all class means (each class weighted equally, target included), the variant
    that makes a set of emotion vectors sum to zero.

    >>> import numpy as np
    >>> X = np.array([[0., 0.], [0., 2.], [2., 0.], [2., 2.]])
    >>> DiffMeans("joy").fit(X, ["neutral", "neutral", "joy", "joy"]).vector_.tolist()
    [2.0, 0.0]
    """

    def __init__(self, target: str, baseline: str = "neutral") -> None:
        self.target = target
        self.baseline = baseline

    def fit(self, X: Any, y: Any) -> DiffMeans:
        X = as_matrix(X)  # (n, d)
        y = as_labels(y, X.shape[0])
        t = class_rows(y, str(self.target), "target class")
        mu_t = X[t].mean(0)  # (d,)
        if self.baseline == "all":
            classes = np.unique(y)
            mu_b = np.mean([X[y == c].mean(0) for c in classes], axis=0)  # (d,)
        else:
            mu_b = X[_baseline_rows(y, str(self.target), str(self.baseline))].mean(0)
        self.classes_ = np.unique(y)
        self._set_vector(mu_t - mu_b)
        return self


class PCADiff(_Direction):
    """First principal component of paired differences ``x_target - x_baseline``.

    The PCA is uncentred (top right-singular vector of the difference matrix), so a
    consistent shift between the pair members is what the component picks up; its sign is
    set to agree with the mean difference.

    ``pairing="index"`` pairs the i-th target row with the i-th baseline row (counts must
    match, e.g. contrastive prompt pairs); ``"random"`` pairs rows at random without
    replacement, ``min(n_target, n_baseline)`` pairs, using ``seed``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 5)); X[:20, 0] += 4
    >>> y = ["joy"] * 20 + ["neutral"] * 20
    >>> round(float(PCADiff("joy", seed=0).fit(X, y).direction_[0]), 1)
    1.0
    """

    def __init__(
        self,
        target: str,
        baseline: str = "neutral",
        pairing: str = "random",
        seed: int | None = 0,
    ) -> None:
        self.target = target
        self.baseline = baseline
        self.pairing = pairing
        self.seed = seed

    def fit(self, X: Any, y: Any) -> PCADiff:
        X = as_matrix(X)
        y = as_labels(y, X.shape[0])
        t = class_rows(y, str(self.target), "target class")
        b = _baseline_rows(y, str(self.target), str(self.baseline))
        if self.pairing == "index":
            if t.size != b.size:
                raise InputError(
                    f"pairing='index' needs equal counts; target has {t.size} rows, "
                    f"baseline {b.size}; use pairing='random'"
                )
        elif self.pairing == "random":
            rng = np.random.default_rng(self.seed)
            m = min(t.size, b.size)
            t, b = rng.permutation(t)[:m], rng.permutation(b)[:m]
        else:
            raise InputError(f"pairing must be 'random' or 'index'; got {self.pairing!r}")
        D = X[t].astype(np.float64) - X[b]  # (m, d)
        _, s, vt = np.linalg.svd(D, full_matrices=False)
        pc = vt[0]  # (d,)
        mean_diff = D.mean(0)
        if pc @ mean_diff < 0:
            pc = -pc
        self.explained_variance_ratio_ = float(s[0] ** 2 / np.sum(s**2)) if s.size else 0.0
        self.n_pairs_ = int(D.shape[0])
        # Scale the unit PC to the mean difference's length along it, so vector_ has
        # activation units like the other estimators.
        self._set_vector(pc * float(mean_diff @ pc))
        return self


class ProbeDirection(_Direction):
    """Weight vector of a logistic-regression probe, target vs. every other row.

    Features are standardised for the fit and the weight is mapped back to activation
    space (``w / scale``), so the direction is the probe's decision normal in raw units.
    ``vector_`` is that normal scaled to unit length times the mean-difference length
    along it (activation units); ``coef_`` keeps the raw weights.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 4)); X[:30, 1] += 3
    >>> y = ["joy"] * 30 + ["neutral"] * 30
    >>> int(np.argmax(np.abs(ProbeDirection("joy").fit(X, y).direction_)))
    1
    """

    def __init__(
        self,
        target: str,
        C: float = 1.0,
        max_iter: int = 500,
        seed: int | None = 0,
    ) -> None:
        self.target = target
        self.C = C
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, X: Any, y: Any) -> ProbeDirection:
        from sklearn.linear_model import LogisticRegression

        X = as_matrix(X)
        y = as_labels(y, X.shape[0])
        t = class_rows(y, str(self.target), "target class")
        if t.size == y.size:
            raise InputError(f"ProbeDirection needs rows other than the target {self.target!r}")
        z = (y == str(self.target)).astype(int)
        mu = X.mean(0)
        scale = X.std(0)
        scale[scale == 0] = 1.0
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        clf.fit((X - mu) / scale, z)
        w = clf.coef_[0] / scale  # (d,) decision normal in activation space
        self.coef_ = w
        self.intercept_ = float(clf.intercept_[0])
        direction = unit(w)
        mean_diff = X[t].mean(0) - X[z == 0].mean(0)
        self._set_vector(direction * abs(float(mean_diff @ direction)))
        return self


class TokenDiff(_Direction):
    """Mean of position-aligned differences between emotion texts and neutral counterparts.

    ``fit(X_target, X_baseline)`` takes two ``(n, d)`` arrays whose rows are activations at
    the same token position in an emotion text and its neutral twin; the vector is the mean
    of the row differences.

    >>> import numpy as np
    >>> TokenDiff().fit(np.ones((3, 2)), np.zeros((3, 2))).vector_.tolist()
    [1.0, 1.0]
    """

    def __init__(self) -> None:
        pass

    def fit(self, X: Any, X_baseline: Any) -> TokenDiff:
        X = as_matrix(X, "X")  # (n, d)
        B = as_matrix(X_baseline, "X_baseline")  # (n, d)
        if X.shape != B.shape:
            raise InputError(
                f"TokenDiff needs position-aligned arrays of one shape; got {X.shape} and {B.shape}"
            )
        self.n_pairs_ = int(X.shape[0])
        self._set_vector((X.astype(np.float64) - B).mean(0))
        return self


# Registry used by ``fit_vectors``: method name -> estimator factory taking (target, **kw).
METHODS: dict[str, type] = {
    "diff_means": DiffMeans,
    "pca_diff": PCADiff,
    "probe": ProbeDirection,
}
