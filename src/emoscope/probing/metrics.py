"""Classification metrics, bootstrap intervals, permutation p-values and Holm correction."""

from __future__ import annotations

from typing import Any

import numpy as np

from emoscope.errors import InputError

__all__ = ["classification_metrics", "bootstrap_ci", "permutation_pvalue", "holm"]


def _auroc_ovr(y: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-rest AUROC by the rank-sum formula (ties get average ranks)."""
    from scipy.stats import rankdata

    n, K = proba.shape
    classes = np.arange(K) if K > 2 else np.array([1])
    aucs = []
    for k in classes:
        pos = y == k
        n_pos = int(pos.sum())
        n_neg = n - n_pos
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        ranks = rankdata(proba[:, k])
        aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    return float(np.mean(aucs))


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and macro one-vs-rest AUROC.

    ``y (n,)`` integer classes in ``[0, K)``; ``proba (n, K)``. Definitions match
    scikit-learn (``balanced_accuracy_score``, ``f1_score(average="macro")`` over all
    ``K`` classes with zero for empty ones, ``roc_auc_score(multi_class="ovr")``); written
    in numpy because a probe sweep calls this thousands of times. AUROC is NaN when a
    class has no rows.

    >>> import numpy as np
    >>> m = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    >>> m["acc"], m["auroc"]
    (1.0, 1.0)
    """
    y = np.asarray(y)
    n, K = proba.shape
    pred = proba.argmax(1)
    cm = np.bincount(y * K + pred, minlength=K * K).reshape(K, K)  # rows: true, cols: predicted
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros(K), where=present)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros(K), where=denom > 0)
    return {
        "acc": float(tp.sum() / n),
        "bal_acc": float(recall[present].mean()),
        "f1": float(f1.mean()),
        "auroc": _auroc_ovr(y, proba),
    }


def bootstrap_ci(
    values: Any,
    groups: Any = None,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    random_state: int | None = 0,
) -> tuple[float, float, float]:
    """Mean of per-row ``values`` with a percentile bootstrap interval: ``(mean, lo, hi)``.

    With ``groups``, whole groups are resampled (cluster bootstrap), so rows that share a
    source text do not count as independent evidence.

    >>> import numpy as np
    >>> m, lo, hi = bootstrap_ci(np.r_[np.ones(80), np.zeros(20)], random_state=0)
    >>> m, lo < 0.8 < hi
    (0.8, True)
    """
    v = np.asarray(values, dtype=np.float64)  # (n,)
    if v.ndim != 1 or v.size == 0:
        raise InputError("bootstrap_ci needs a non-empty 1-D array")
    point = float(v.mean())
    if n_bootstrap <= 0:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(random_state)
    if groups is None:
        idx = rng.integers(0, v.size, size=(n_bootstrap, v.size))
        stats = v[idx].mean(1)
    else:
        _, inv = np.unique(np.asarray(groups), return_inverse=True)
        sums = np.bincount(inv, weights=v)  # (G,)
        counts = np.bincount(inv).astype(np.float64)
        pick = rng.integers(0, sums.size, size=(n_bootstrap, sums.size))
        stats = sums[pick].sum(1) / counts[pick].sum(1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return point, float(lo), float(hi)


def permutation_pvalue(observed: float, null: Any) -> float:
    """One-sided p-value ``(1 + #{null >= observed}) / (1 + n_null)`` (never 0).

    >>> permutation_pvalue(0.9, [0.5, 0.6, 0.95])
    0.5
    """
    null = np.asarray(null, dtype=np.float64)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + null.size))


def holm(pvalues: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1; NaN kept).

    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out
