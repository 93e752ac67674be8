"""``LayerProbe``: a cross-validated multinomial logistic probe for one layer.

The probe standardises features inside every fold, repeats the cross-validation for each
seed (new fold assignment per seed), pools out-of-fold predictions, and reports accuracy
with a bootstrap interval, balanced accuracy, macro-F1, macro one-vs-rest AUROC and the
seed-to-seed spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from emoscope.core.arrays import as_labels, as_matrix
from emoscope.core.stats import bootstrap
from emoscope.errors import InputError
from emoscope.probing._solver import blas_threads, fit_batch
from emoscope.probing._splits import make_folds
from emoscope.probing.metrics import classification_metrics

__all__ = ["LayerProbe"]

Folds = list[tuple[np.ndarray, np.ndarray]]


def cv_proba(
    X: np.ndarray,
    labels: Sequence[np.ndarray],
    folds: Sequence[Folds],
    n_classes: int,
    C: float,
    max_iter: int,
    tol: float,
    cols: np.ndarray | None = None,
    remove: list[np.ndarray | None] | None = None,
) -> tuple[np.ndarray, Any]:
    """Out-of-fold probabilities for several cross-validations fitted in one batch.

    ``labels[s] (n,)`` and ``folds[s]`` define CV run ``s``. Returns ``(S, n, K)``
    probabilities and the ``BatchFit`` (problems ordered run-major, then fold).
    """
    n = X.shape[0]
    train, lab, tests = [], [], []
    for y_s, folds_s in zip(labels, folds, strict=True):
        for tr, te in folds_s:
            m = np.zeros(n, dtype=bool)
            m[tr] = True
            train.append(m)
            lab.append(y_s)
            tests.append(te)
    fit = fit_batch(
        X, np.stack(lab), np.stack(train), n_classes, C=C, max_iter=max_iter, tol=tol,
        cols=cols, remove=remove,
    )
    P = fit.W.shape[0]
    out = np.zeros((len(labels), n, n_classes))
    per_run = P // len(labels)
    # Scores only on each problem's test rows: cheaper than all rows for every problem.
    for p in range(P):
        te = tests[p]
        S = (X[te] - fit.mean[p]) / fit.scale[p] @ fit.W[p] + fit.b[p]  # (n_te, K)
        S -= S.max(1, keepdims=True)
        E = np.exp(S)
        out[p // per_run, te] = E / E.sum(1, keepdims=True)
    return out, fit


def summarize(
    y: np.ndarray,
    proba_by_seed: np.ndarray,
    groups: np.ndarray | None,
    n_boot: int,
    seed: int | None,
) -> dict[str, float]:
    """Metrics averaged over seeds, accuracy interval by (cluster) bootstrap over rows.

    ``proba_by_seed (S, n, K)``. Each row's correctness is averaged over seeds before
    resampling, so the interval is for the seed-averaged accuracy with rows as the unit.
    """
    per_seed = [classification_metrics(y, p) for p in proba_by_seed]
    correct = (proba_by_seed.argmax(2) == y[None, :]).mean(0)  # (n,)
    acc, lo, hi = bootstrap(correct, groups, n_boot=n_boot, seed=seed)
    accs = np.array([m["acc"] for m in per_seed])
    out = {k: float(np.mean([m[k] for m in per_seed])) for k in ("bal_acc", "f1", "auroc")}
    out.update(
        acc=acc,
        acc_lo=lo,
        acc_hi=hi,
        seed_sd=float(accs.std(ddof=1)) if accs.size > 1 else float("nan"),
    )
    return out


class LayerProbe:
    """Cross-validated multinomial logistic-regression probe for one layer's activations.

    ``fit(X, y, groups=None)`` runs ``n_folds``-fold stratified CV (``StratifiedGroupKFold``
    when groups are given) once per seed, then refits on all rows for ``predict``.
    Learned state: ``classes_``, ``scores_`` (acc, acc_lo, acc_hi, bal_acc, f1, auroc,
    seed_sd), ``seed_acc_``, ``oof_proba_`` (seed-averaged, ``(n, K)``), ``folds_``,
    ``coef_`` ``(d, K)`` and ``intercept_`` in activation units.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(100, 8)); y = np.repeat(["joy", "neutral"], 50); X[:50, 0] += 3
    >>> probe = LayerProbe(n_folds=5, seeds=(0, 1), n_boot=200).fit(X, y)
    >>> probe.scores_["acc"] > 0.8
    True
    """

    def __init__(
        self,
        n_folds: int = 5,
        seeds: Sequence[int] = (0, 1, 2),
        C: float = 1.0,
        max_iter: int = 300,
        tol: float = 1e-4,
        n_boot: int = 1000,
        seed: int | None = 0,
        n_threads: int | None = 1,
    ) -> None:
        self.n_folds = n_folds
        self.seeds = seeds
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.n_boot = n_boot
        self.seed = seed
        self.n_threads = n_threads

    def _check(self) -> None:
        if not list(self.seeds):
            raise InputError("LayerProbe needs at least one seed")
        if not float(self.C) > 0:
            raise InputError(f"C must be positive; got {self.C}")

    def fit(self, X: Any, y: Any, groups: Any = None) -> LayerProbe:
        with blas_threads(self.n_threads):
            return self._fit(X, y, groups)

    def _fit(self, X: Any, y: Any, groups: Any) -> LayerProbe:
        self._check()
        X = as_matrix(X).astype(np.float64)  # (n, d)
        labels = as_labels(y, X.shape[0])
        self.classes_, y_idx = np.unique(labels, return_inverse=True)
        if self.classes_.size < 2:
            raise InputError("a probe needs at least two classes")
        g = None if groups is None else as_labels(groups, X.shape[0], "groups")
        K = self.classes_.size
        self.folds_ = {s: make_folds(y_idx, g, self.n_folds, s) for s in self.seeds}
        proba, _ = cv_proba(
            X, [y_idx] * len(self.seeds), list(self.folds_.values()), K,
            self.C, self.max_iter, self.tol,
        )
        self.scores_ = summarize(y_idx, proba, g, self.n_boot, self.seed)
        self.seed_acc_ = {s: float(np.mean(p.argmax(1) == y_idx)) for s, p in zip(self.seeds, proba, strict=True)}
        self.oof_proba_ = proba.mean(0)
        full = fit_batch(X, y_idx[None, :], np.ones((1, X.shape[0]), bool), K, self.C, self.max_iter, self.tol)
        self.coef_ = full.W[0] / full.scale[0][:, None]  # (d, K) in activation units
        self.intercept_ = full.b[0] - (full.mean[0] / full.scale[0]) @ full.W[0]
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        if not hasattr(self, "coef_") or not hasattr(self, "classes_"):
            raise InputError("LayerProbe is not fitted; call fit(X, y) first")
        X = as_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise InputError(f"X has {X.shape[1]} features; the probe was fitted on {self.n_features_in_}")
        return X.astype(np.float64) @ self.coef_ + self.intercept_  # (n, K)

    def predict_proba(self, X: Any) -> np.ndarray:
        S = self.decision_function(X)
        S -= S.max(1, keepdims=True)
        E = np.exp(S)
        return E / E.sum(1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        scores = self.decision_function(X)
        return self.classes_[scores.argmax(1)]

    def score(self, X: Any, y: Any) -> float:
        """Accuracy of the refitted probe on ``(X, y)``."""
        X = as_matrix(X)
        return float(np.mean(self.predict(X) == as_labels(y, X.shape[0])))

    def __repr__(self) -> str:
        return (
            f"LayerProbe(n_folds={self.n_folds}, seeds={tuple(self.seeds)}, C={self.C}, "
            f"n_boot={self.n_boot}, seed={self.seed})"
        )
