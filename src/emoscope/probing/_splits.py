"""Cross-validation folds and the held-out split, group-aware when groups are given."""

from __future__ import annotations

import numpy as np

from emoscope.errors import InputError

__all__ = ["make_folds", "heldout_split"]


def _check_counts(y: np.ndarray, groups: np.ndarray | None, n_splits: int, what: str) -> None:
    _, counts = np.unique(y, return_counts=True)
    if counts.min() < n_splits:
        raise InputError(
            f"{what}: the smallest class has {counts.min()} rows, fewer than {n_splits} splits; "
            "add data or lower n_folds"
        )
    if groups is not None and np.unique(groups).size < n_splits:
        raise InputError(f"{what}: {np.unique(groups).size} groups cannot fill {n_splits} splits")


def make_folds(
    y: np.ndarray, groups: np.ndarray | None, n_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds (``StratifiedGroupKFold`` when ``groups`` is given), shuffled by ``seed``.

    >>> import numpy as np
    >>> folds = make_folds(np.array([0, 1] * 5), None, 5, 0)
    >>> len(folds), sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(10))
    (5, True)
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if n_folds < 2:
        raise InputError(f"n_folds must be at least 2; got {n_folds}")
    _check_counts(y, groups, n_folds, "cross-validation")
    if groups is None:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y))
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def heldout_split(
    y: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into ``(dev, heldout)`` index arrays, stratified and group-aware.

    The held-out part is about ``fraction`` of the rows (one fold of ``round(1/fraction)``).

    >>> import numpy as np
    >>> dev, ho = heldout_split(np.array([0, 1] * 10), None, 0.2, 0)
    >>> len(dev), len(ho)
    (16, 4)
    """
    if not 0 < fraction < 1:
        raise InputError(f"heldout fraction must be in (0, 1); got {fraction}")
    k = max(2, int(round(1.0 / fraction)))
    train, test = make_folds(y, groups, k, seed)[0]
    return np.sort(train), np.sort(test)
