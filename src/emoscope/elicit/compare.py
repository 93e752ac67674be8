"""Per-emotion metrics of one extraction mode, and the paired test between two modes.

Every metric is computed **per emotion with its own one-vs-rest model**, so the values of
different emotions come from different fits (per-class numbers read off one shared multi-class
probe would share its errors). The paired test then treats emotions as the units.

- ``probe_accuracy``: held-out balanced accuracy of a one-vs-rest logistic probe (stratified
  k-fold; features standardised on the training fold).
- ``cross_accuracy``: the same probe trained on every row of one mode and tested on another
  (each mode centred on its own mean first: the shift the instruction or chat frame adds to every
  state is not what the probe should carry).
- ``separation``: held-out Cohen's d of the projection on the class-minus-rest mean difference
  (fitted on the training folds): how far the class sits from the rest along its own direction,
  in pooled standard deviations.
- ``paired_comparison``: two-sided Wilcoxon signed-rank test over emotions
  (``emoscope.core.stats.paired_test``). With ``n`` emotions and no ties or zero differences the
  exact test cannot go below ``2 / 2**n`` (12 emotions: 0.00049).

>>> round(min_attainable_p(12), 5)
0.00049
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from emoscope.core.stats import bootstrap, paired_test
from emoscope.errors import InputError

__all__ = ["probe_accuracy", "cross_accuracy", "separation", "paired_comparison", "min_attainable_p", "TEST_NAME"]

TEST_NAME = "Wilcoxon signed-rank, two-sided, exact, unit: emotion"


def min_attainable_p(n: int, alternative: str = "two-sided") -> float:
    """Smallest p-value the exact signed-rank test reaches with ``n`` units (all differences one sign)."""
    if n < 1:
        return float("nan")
    return float(2.0 ** (1 - n) if alternative == "two-sided" else 2.0 ** (-n))


def _folds(z: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Stratified fold ids for a binary target (each fold gets its share of positives)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(z.size, dtype=int)
    for v in (0, 1):
        idx = rng.permutation(np.flatnonzero(z == v))
        fold[idx] = np.arange(idx.size) % k
    return [np.flatnonzero(fold == f) for f in range(k)]


def _fit_predict(Xtr: np.ndarray, ztr: np.ndarray, Xte: np.ndarray, C: float, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    mu, sd = Xtr.mean(0), Xtr.std(0)
    sd[sd == 0] = 1.0
    clf = LogisticRegression(C=C, max_iter=1000, class_weight="balanced", random_state=seed)
    clf.fit((Xtr - mu) / sd, ztr)
    return clf.predict((Xte - mu) / sd)


def _balanced(z: np.ndarray, pred: np.ndarray) -> float:
    return float(0.5 * (np.mean(pred[z == 1] == 1) + np.mean(pred[z == 0] == 0)))


def _check(X: Any, y: Any, classes: Sequence[str], folds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(str)
    if X.ndim != 2 or X.shape[0] != y.size:
        raise InputError(f"X must be (n, d) with one label per row; got {X.shape} and {y.size} labels")
    for c in classes:
        k = int(np.sum(y == c))
        if k < folds:
            raise InputError(f"class {c!r} has {k} rows; a {folds}-fold comparison needs at least {folds}")
    return X, y


def probe_accuracy(X: Any, y: Any, classes: Sequence[str], *, folds: int = 5, C: float = 0.1,
                   seed: int = 0) -> np.ndarray:
    """Held-out balanced accuracy of a one-vs-rest probe per class, ``(len(classes),)``.

    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 4)); y = np.repeat(["a", "b", "c"], 20); X[:20, 0] += 4
    >>> probe_accuracy(X, y, ["a", "b"]).round(1).tolist()[0]
    1.0
    """
    X, y = _check(X, y, classes, folds)
    out = []
    for c in classes:
        z = (y == c).astype(int)
        pred = np.empty_like(z)
        for te in _folds(z, folds, seed):
            tr = np.setdiff1d(np.arange(z.size), te)
            pred[te] = _fit_predict(X[tr], z[tr], X[te], C, seed)
        out.append(_balanced(z, pred))
    return np.asarray(out)


def cross_accuracy(X_train: Any, y_train: Any, X_test: Any, y_test: Any, classes: Sequence[str], *,
                   C: float = 0.1, seed: int = 0) -> np.ndarray:
    """Balanced accuracy per class of a one-vs-rest probe trained on one mode, tested on another
    (each mode centred on its own mean first)."""
    Xa, ya = _check(X_train, y_train, classes, 1)
    Xb, yb = _check(X_test, y_test, classes, 1)
    Xa, Xb = Xa - Xa.mean(0), Xb - Xb.mean(0)
    out = []
    for c in classes:
        za, zb = (ya == c).astype(int), (yb == c).astype(int)
        out.append(_balanced(zb, _fit_predict(Xa, za, Xb, C, seed)))
    return np.asarray(out)


def separation(X: Any, y: Any, classes: Sequence[str], *, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Held-out Cohen's d per class along its class-minus-rest mean difference, ``(len(classes),)``.

    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(80, 3)); y = np.repeat(["a", "b"], 40); X[:40, 1] += 2
    >>> bool(1.5 < separation(X, y, ["a"])[0] < 2.5)
    True
    """
    X, y = _check(X, y, classes, folds)
    out = []
    for c in classes:
        z = (y == c).astype(int)
        proj = np.empty(z.size)
        for te in _folds(z, folds, seed):
            tr = np.setdiff1d(np.arange(z.size), te)
            v = X[tr][z[tr] == 1].mean(0) - X[tr][z[tr] == 0].mean(0)
            v = v / (np.linalg.norm(v) or 1.0)
            proj[te] = X[te] @ v
        a, b = proj[z == 1], proj[z == 0]
        pooled = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
        out.append(float((a.mean() - b.mean()) / pooled) if pooled > 0 else float("nan"))
    return np.asarray(out)


def paired_comparison(a: Any, b: Any, *, seed: int = 0) -> dict[str, Any]:
    """Mode ``a`` against mode ``b`` over emotions (one value per emotion in each).

    Returns ``n``, ``mean_a``, ``mean_b``, ``diff`` (mean of ``a - b``) with a bootstrap interval
    over emotions, ``wins`` (emotions where ``a > b``), ``p_value`` (two-sided Wilcoxon signed-rank),
    ``min_p`` (the smallest p the test can reach with the non-zero differences: zeros drop out) and ``test``.

    >>> r = paired_comparison(np.arange(12) + 1.0, np.arange(12))
    >>> r["p_value"] == r["min_p"], r["wins"]
    (True, 12)
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"paired values need one value per emotion in each mode; got shapes {a.shape}, {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    iv = bootstrap(d, seed=seed)
    return {"n": int(d.size), "mean_a": float(a[ok].mean()) if d.size else float("nan"),
            "mean_b": float(b[ok].mean()) if d.size else float("nan"), "diff": iv.point, "diff_lo": iv.lo,
            "diff_hi": iv.hi, "wins": int(np.sum(d > 0)), "losses": int(np.sum(d < 0)),
            "p_value": paired_test(d, "two-sided"), "min_p": min_attainable_p(int(np.sum(d != 0))),
            "test": TEST_NAME}
