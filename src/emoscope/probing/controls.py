"""Controls for layer probes. All run by default; each is switched off by an argument.

- shuffled labels: a probe trained on permuted labels at every layer (cheap, one
  shuffle), plus a permutation test with ``n_permutations`` shuffles of the full logistic
  probe at the chosen layer;
- per-layer permutation p-values from a closed-form ridge probe (exact permutation test,
  all shuffles in one matrix product), Holm-corrected across layers, and against the null of
  the best layer (max over layers per shuffle: ``max_over_layers``), the p that accounts for
  choosing the layer;
- every label permutation keeps groups (``core.stats.group_permutations``);
- random directions: the probe restricted to ``K - 1`` random directions (the dimension
  of the subspace a ``K``-class softmax probe uses);
- length-only: a probe on token count and character count;
- bag-of-words: a probe on the raw text;
- seed spread (from the probe's seeds), a held-out split never used to choose the
  layer (its accuracy tested by a group-level permutation test, ``heldout_test``), and an
  INLP-style nullspace curve at the chosen layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from emoscope.core.stats import min_pvalue, permutation_pvalue
from emoscope.errors import InputError
from emoscope.probing._solver import fit_batch, subspace_basis
from emoscope.probing.probe import Folds, cv_proba

__all__ = ["ProbeControls", "max_over_layers", "heldout_test"]


@dataclass(frozen=True)
class ProbeControls:
    """Which controls ``probe_layers`` runs, and how hard. Defaults run all of them.

    ``n_permutations`` shuffles for the logistic permutation test at the chosen layer;
    ``n_layer_permutations`` shuffles for the fast per-layer test behind ``perm_p`` (1000
    lets a Holm-corrected p pass 0.05 over 30 layers) and ``perm_p_max``, the test of the
    chosen layer against the best layer under shuffled labels that decides the shuffled-label
    control (floor ``1 / (n + 1)``); the held-out permutation test uses ``max(999, n)``;
    ``heldout`` is the share of rows kept out of layer choice; ``nullspace_k`` the number of
    INLP removals.
    ``confound_ratio``: a baseline reaching this share of the probe's accuracy (and
    above chance) marks the report as confounded.

    >>> ProbeControls(bow=False).bow
    False
    """

    shuffled: bool = True
    n_permutations: int = 100
    n_layer_permutations: int = 1000
    random_directions: bool = True
    n_random_draws: int = 3
    length_only: bool = True
    bow: bool = True
    heldout: float = 0.2
    nullspace_k: int = 5
    confound_ratio: float = 0.9
    alpha: float = 0.05

    def validate(self) -> None:
        for name in ("n_permutations", "n_layer_permutations", "n_random_draws", "nullspace_k"):
            if int(getattr(self, name)) < 0:
                raise InputError(f"ProbeControls.{name} must be >= 0; got {getattr(self, name)}")
        if not (self.heldout == 0 or 0 < self.heldout < 0.5):
            raise InputError(f"ProbeControls.heldout must be 0 (off) or in (0, 0.5); got {self.heldout}")
        if not 0 < self.confound_ratio <= 1:
            raise InputError(f"ProbeControls.confound_ratio must be in (0, 1]; got {self.confound_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RidgePermutation:
    """Per-layer permutation test of a ridge probe's CV accuracy (exact, and cheap).

    Built once per dataset (labels, folds and shuffles are shared by every layer); call
    ``test(X)`` per layer for ``(observed_acc, p, null (P,))``. ``null_labels (P, n)`` are the
    permuted labels (``core.stats.group_permutations``: rows of a group move together). The same
    shuffles at every layer make the null of the best layer's accuracy available (the max over
    layers of each shuffle's accuracy: :func:`max_over_layers`). Features are standardised on
    all rows (no labels involved, so the test stays exact); the ridge fit is in kernel form, so
    the shuffles of a fold cost one matrix product together.
    """

    def __init__(self, y: np.ndarray, folds: Folds, null_labels: np.ndarray, n_classes: int) -> None:
        self.folds = folds
        self.K = n_classes
        labels = np.concatenate([y[None, :], null_labels], axis=0).T  # (n, 1 + P)
        classes = np.arange(n_classes)[None, :, None]
        # One-hot in (rows, K, shuffles) layout: the argmax over K runs over contiguous
        # memory and A @ B is one GEMM.
        self.B = [(labels[tr][:, None, :] == classes).astype(np.float32) for tr, _ in folds]
        self.ybar = [b.mean(0) for b in self.B]  # (K, 1 + P) each
        self.truth = [labels[te] for _, te in folds]  # (n_te, 1 + P) each
        self.n = y.size

    def test(self, X: np.ndarray) -> tuple[float, float, np.ndarray]:
        Z = X - X.mean(0)
        sd = Z.std(0)
        Z = (Z / np.where(sd > 0, sd, 1.0)).astype(np.float32)  # (n, d)
        Kmat = (Z @ Z.T).astype(np.float64)  # (n, n)
        lam = float(Z.shape[1])
        correct = 0
        for (tr, te), B, ybar, truth in zip(self.folds, self.B, self.ybar, self.truth, strict=True):
            A = np.linalg.solve(Kmat[np.ix_(tr, tr)] + lam * np.eye(tr.size), Kmat[np.ix_(tr, te)]).T
            A = A.astype(np.float32)  # (n_te, n_tr)
            # A @ (B - ybar) + ybar, without materialising the centred copy.
            pred = (A @ B.reshape(tr.size, -1)).reshape(te.size, self.K, -1)  # (n_te, K, 1 + P)
            pred += (1.0 - A.sum(1))[:, None, None] * ybar
            # "true class scores highest" via max(): far cheaper than argmax over a
            # middle axis. A tie counts as correct, identically for data and shuffles.
            true_score = np.take_along_axis(pred, truth[:, None, :], axis=1)[:, 0]  # (n_te, 1 + P)
            correct = correct + (true_score >= pred.max(1)).sum(0)
        acc = np.asarray(correct, dtype=np.float64) / self.n
        return float(acc[0]), permutation_pvalue(acc[0], acc[1:]), acc[1:]


def max_over_layers(observed: np.ndarray, nulls: np.ndarray) -> np.ndarray:
    """Per-layer p-values that account for the search over layers (single-step max-T).

    ``observed (L,)``: each layer's statistic; ``nulls (L, P)``: the same under ``P`` label
    shuffles shared by every layer. The null of the best layer's statistic is, for each shuffle,
    the largest over layers; layer ``l``'s p is ``(1 + #{max null >= observed[l]}) / (1 + P)``.
    The chosen layer's p is a valid test of "no layer carries the labels" whichever rule chose
    it (its statistic is at most the maximum), so no further correction for the layers is due.

    >>> max_over_layers(np.array([0.9, 0.5]), np.array([[0.5, 0.6, 0.55], [0.8, 0.5, 0.4]])).tolist()
    [0.25, 1.0]
    """
    peak_null = np.asarray(nulls, dtype=np.float64).max(axis=0)  # (P,)
    return np.array([permutation_pvalue(float(o), peak_null) for o in np.asarray(observed, dtype=np.float64)])


def _log_arrangements(y: np.ndarray, groups: np.ndarray | None) -> float:
    """log of the number of distinct label vectors ``group_permutations`` can reach."""
    from math import lgamma

    def multinomial(labels: list[Any]) -> float:
        counts = np.unique(np.asarray(labels), return_counts=True)[1]
        return lgamma(len(labels) + 1) - sum(lgamma(int(c) + 1) for c in counts)

    if groups is None:
        return multinomial(y.tolist())
    blocks = [y[groups == g] for g in np.unique(groups)]
    if all(np.all(b == b[0]) for b in blocks):
        return multinomial([b[0] for b in blocks])
    return sum(multinomial(b.tolist()) for b in blocks)


def heldout_test(pred: np.ndarray, y: np.ndarray, groups: np.ndarray | None, n_permutations: int,
                 rng: np.random.Generator) -> dict[str, Any]:
    """Permutation test of a fixed probe's held-out accuracy, with groups as the unit.

    Null: the probe's predictions carry no information about the labels; the labels are
    permuted with ``core.stats.group_permutations`` (a group's rows move together: whole groups
    swap labels when each group has one label, else labels are shuffled within each group), so
    rows of one group are never counted as independent evidence (a binomial over rows is: with
    correctness shared inside groups it rejects far more often than its level).
    ``p = (1 + #{null >= acc}) / (1 + n_permutations)``; ``min_p``, the smallest p the design
    can reach, is ``1 / (1 + n_permutations)`` or, with few units, ``1 / (number of distinct
    arrangements of the labels)``, whichever is larger.

    >>> y = np.repeat([0, 1], 20)
    >>> t = heldout_test(y.copy(), y, None, 199, np.random.default_rng(0))
    >>> t["p"], t["min_p"], t["unit"]
    (0.005, 0.005, 'row')
    """
    from emoscope.core.stats import group_permutations

    acc = float(np.mean(pred == y))
    null = (group_permutations(y, n_permutations, groups=groups, seed=rng) == pred[None, :]).mean(1)
    n_arr = float(np.exp(min(_log_arrangements(y, groups), 700.0)))
    return {"statistic": "heldout_accuracy", "observed": acc, "p": permutation_pvalue(acc, null),
            "n_permutations": int(n_permutations), "min_p": max(min_pvalue(n_permutations), 1.0 / n_arr),
            "null_mean": float(null.mean()), "null_q95": float(np.quantile(null, 0.95)),
            "unit": "row" if groups is None else "group",
            "n_units": int(y.size if groups is None else np.unique(groups).size)}


def logistic_permutation_test(
    X: np.ndarray,
    y: np.ndarray,
    folds: Folds,
    n_classes: int,
    n_permutations: int,
    rng: np.random.Generator,
    C: float,
    max_iter: int,
    tol: float,
    chunk: int = 50,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Permutation test of the logistic probe's CV accuracy on fixed folds, at one layer.

    The observed accuracy is recomputed here by the same procedure as the null. Labels are
    permuted with ``core.stats.group_permutations`` (rows of a group move together). Within a
    fold every shuffle shares the standardisation, so the fit runs in the row space of
    the standardised training rows (exactly equivalent: an L2 logistic weight lies in
    that span), which makes ``n_permutations`` refits affordable. At a layer chosen as the best
    of several this p is not corrected for the choice (``max_over_layers`` is).
    """
    from emoscope.core.stats import group_permutations

    labels = np.concatenate([y[None, :], group_permutations(y, n_permutations, groups=groups, seed=rng)])
    correct = np.zeros(labels.shape[0])
    for tr, te in folds:
        mu, sd = X[tr].mean(0), X[tr].std(0)
        Z = (X - mu) / np.where(sd > 0, sd, 1.0)  # (n, d), this fold's standardisation
        _, s, vt = np.linalg.svd(Z[tr], full_matrices=False)
        F = Z @ vt[s > 1e-10 * s[0]].T  # (n, r): coordinates in the training rows' span
        mask = np.zeros(X.shape[0], dtype=bool)
        mask[tr] = True
        for start in range(0, labels.shape[0], chunk):
            lab = labels[start : start + chunk]
            fit = fit_batch(F, lab, np.tile(mask, (lab.shape[0], 1)), n_classes, C, max_iter, tol, standardize=False)
            pred = np.einsum("nr,prk->pnk", F[te], fit.W) + fit.b[:, None, :]  # (m, n_te, K)
            correct[start : start + lab.shape[0]] += (pred.argmax(2) == lab[:, te]).sum(1)
    acc = correct / y.size
    observed, null = float(acc[0]), acc[1:]
    return {
        "statistic": "cv_accuracy_logistic",
        "observed": observed,
        "n_permutations": int(n_permutations),
        "p": permutation_pvalue(observed, null),
        "null_mean": float(null.mean()),
        "null_q025": float(np.quantile(null, 0.025)),
        "null_q975": float(np.quantile(null, 0.975)),
    }


def random_direction_accuracy(
    X: np.ndarray,
    y: np.ndarray,
    folds: Folds,
    n_classes: int,
    R: np.ndarray,
    k: int,
    C: float,
    max_iter: int,
    tol: float,
) -> float:
    """Mean CV accuracy of probes that see only ``k`` random projections each."""
    F = X @ R  # (n, n_draws * k)
    n_draws = R.shape[1] // k
    cols = np.zeros((n_draws * len(folds), F.shape[1]), dtype=bool)
    for j in range(n_draws):
        cols[j * len(folds) : (j + 1) * len(folds), j * k : (j + 1) * k] = True
    proba, _ = cv_proba(F, [y] * n_draws, [folds] * n_draws, n_classes, C, max_iter, tol, cols=cols)
    return float(np.mean([np.mean(p.argmax(1) == y) for p in proba]))


def nullspace_curve(
    X: np.ndarray, y: np.ndarray, folds: Folds, n_classes: int, k: int, C: float, max_iter: int, tol: float
) -> list[float]:
    """INLP: CV accuracy after 0, 1, ..., k rounds of removing the probe's directions.

    In each fold, round ``i`` fits the probe on training rows whose previously found
    directions are projected out, scores the test rows, then adds the new probe's
    directions to the removed set. Entry 0 is the unablated probe.
    """
    removed: list[np.ndarray | None] = [None] * len(folds)
    d = X.shape[1]
    accs = []
    for _ in range(k + 1):
        proba, fit = cv_proba(X, [y], [folds], n_classes, C, max_iter, tol, remove=removed)
        accs.append(float(np.mean(proba[0].argmax(1) == y)))
        for f in range(len(folds)):
            new = subspace_basis(fit.W[f])  # (d, r) in this fold's standardised coordinates
            Q = new if removed[f] is None else np.concatenate([removed[f], new], axis=1)
            Q, _ = np.linalg.qr(Q)
            removed[f] = Q[:, : min(Q.shape[1], d)]
    return accs


def length_features(token_counts: np.ndarray | None, texts: list[str] | None) -> np.ndarray:
    """Features of the length-only probe: token count and character count ``(n, 2)``."""
    cols = []
    if token_counts is not None:
        cols.append(np.asarray(token_counts, dtype=np.float64))
    if texts is not None:
        cols.append(np.array([len(t) for t in texts], dtype=np.float64))
    return np.stack(cols, axis=1)


def bow_proba(texts: list[str], y: np.ndarray, folds: Folds, n_classes: int, C: float) -> np.ndarray:
    """Out-of-fold probabilities of a bag-of-words logistic probe on the raw texts."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    arr = np.asarray(texts, dtype=object)
    out = np.full((len(texts), n_classes), 1.0 / n_classes)
    for tr, te in folds:
        vec = CountVectorizer(lowercase=True, binary=True)
        try:
            A = vec.fit_transform(arr[tr])
        except ValueError:  # empty vocabulary (e.g. texts are blank): chance predictions
            continue
        clf = LogisticRegression(C=C, max_iter=1000).fit(A, y[tr])
        out[te] = 0.0
        out[np.ix_(te, clf.classes_)] = clf.predict_proba(vec.transform(arr[te]))
    return out


def train_once(
    X: np.ndarray, y: np.ndarray, train: np.ndarray, n_classes: int, C: float, max_iter: int, tol: float
) -> Any:
    """Fit one probe on the rows ``train``; returns the ``BatchFit`` (one problem)."""
    mask = np.zeros((1, X.shape[0]), dtype=bool)
    mask[0, train] = True
    return fit_batch(X, y[None, :], mask, n_classes, C, max_iter, tol)
