"""Classification metrics of a probe (intervals, permutation p-values and corrections are in
``emoscope.core.stats``)."""

from __future__ import annotations

import numpy as np

__all__ = ["classification_metrics"]


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
