"""Centred cosines of class means, the estimator of the similarity test, and its nulls.

Each class mean minus the mean of the K class means: for K unrelated classes the expected
pairwise cosine of these centred vectors is ``-1/(K-1)``, not 0 (:func:`expected_centred_cosine`).

- :func:`centred_cosines`: the ``(K, K)`` matrix of centred cosines.
- :func:`centred_cosine_null`: its permutation null (labels permuted across the texts of the K
  classes, class sizes kept), one-sided per-pair p-values, Holm over the pairs (``PairNull``).
- :func:`split_half_reliability`: the ceiling, each class's centred vector on two random halves,
  stepped up (Spearman-Brown) to all the texts.
- :func:`distinctness`: "are A and B distinct?", labels permuted between A and B only.
- ``bootstrap_pairs``: percentile intervals, texts resampled within each class.

Why and how the test uses them: ``emoscope.geometry.similarity`` (which re-exports them all).

>>> expected_centred_cosine(4)
-0.3333333333333333
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emoscope.core.arrays import as_labels, as_matrix
from emoscope.core.stats import holm, min_pvalue, permutation_pvalue, rng_from, spearman_brown
from emoscope.errors import InputError

__all__ = ["expected_centred_cosine", "centred_cosines", "min_permutations", "PairNull", "centred_cosine_null",
           "split_half_reliability", "distinctness", "Distinctness", "class_blocks", "centred_null_draws",
           "bootstrap_pairs"]

_CHUNK = 1 << 22  # floats per batch of resampled class means


def expected_centred_cosine(k: int) -> float:
    """Expected cosine of two centred vectors among ``k`` unrelated classes: ``-1/(k-1)``
    (centred vectors sum to zero, so each one leans away from the others)."""
    if k < 2:
        raise InputError(f"centred cosines need 2 classes at least; got {k}")
    return -1.0 / (k - 1)


def min_permutations(n_pairs: int) -> int:
    """Fewest permutations for which Holm over ``n_pairs`` can reach p < 0.05: ``20 * n_pairs``
    (``min_pvalue(n) * n_pairs < 0.05``).

    >>> min_permutations(3), min_pvalue(min_permutations(3)) * 3 < 0.05
    (60, True)
    """
    return 20 * int(n_pairs)


def class_blocks(y: np.ndarray, classes: list[str], min_rows: int = 2) -> list[np.ndarray]:
    out = []
    for c in classes:
        rows = np.flatnonzero(y == c)
        if rows.size < min_rows:
            raise InputError(f"class {c!r} has {rows.size} texts; the similarity test needs at least {min_rows}")
        out.append(rows)
    return out


def _reduce(X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` centred, in a basis of at most ``n`` columns: inner products are kept."""
    Z = X.astype(np.float64) - X.mean(0)
    if Z.shape[1] <= Z.shape[0]:
        return Z
    G = Z @ Z.T  # (n, n); rank n-1 after centring, hence the tiny ridge
    try:
        return np.linalg.cholesky(G + np.eye(G.shape[0]) * (1e-12 * np.trace(G) / G.shape[0] + 1e-300))
    except np.linalg.LinAlgError:
        w, U = np.linalg.eigh(G)
        return U * np.sqrt(np.clip(w, 0.0, None))


def _pair_cos(means: np.ndarray, iu: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Centred cosines of the pairs ``iu`` from class means ``(..., K, r)`` -> ``(..., P)``."""
    c = means - means.mean(axis=-2, keepdims=True)
    norms = np.linalg.norm(c, axis=-1, keepdims=True)
    u = c / np.where(norms > 0, norms, 1.0)
    return np.einsum("...r,...r->...", u[..., iu[0], :], u[..., iu[1], :])


def _setup(X: Any, y: Any, classes: list[str] | None) -> tuple[np.ndarray, np.ndarray, list[str], list[np.ndarray]]:
    X = as_matrix(X, "acts")
    y = as_labels(y, X.shape[0])
    classes = sorted(set(y.tolist())) if classes is None else [str(c) for c in classes]
    return X, y, classes, class_blocks(y, classes)


def centred_cosines(X: Any, y: Any, classes: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """``(classes, M (K, K))``: cosines of class means minus the mean of the ``classes``' means.

    >>> rng = np.random.default_rng(0)
    >>> X = np.repeat(np.eye(3) * 5, 20, axis=0) + rng.normal(size=(60, 3)) * 0.01
    >>> round(float(centred_cosines(X, np.repeat(["a", "b", "c"], 20))[1][0, 1]), 2)
    -0.5
    """
    X, y, classes, blocks = _setup(X, y, classes)
    means = np.stack([X[b].mean(0) for b in blocks]).astype(np.float64)
    iu = np.triu_indices(len(classes), 1)
    M = np.eye(len(classes))
    M[iu] = M[iu[1], iu[0]] = _pair_cos(means, iu)
    return classes, M


@dataclass
class PairNull:
    """Observed centred cosines of each pair ``(a, b)`` and their permutation null ``(n_perm, P)``."""

    classes: list[str]
    pairs: list[tuple[str, str]]
    observed: np.ndarray  # (P,)
    null: np.ndarray  # (n_perm, P)
    p: np.ndarray  # (P,) one-sided, uncorrected
    p_holm: np.ndarray  # (P,)
    alpha: float

    @property
    def expected(self) -> float:
        return expected_centred_cosine(len(self.classes))

    @property
    def n_perm(self) -> int:
        return int(self.null.shape[0])

    @property
    def min_p(self) -> float:
        return min_pvalue(self.n_perm)

    def quantile(self, q: float) -> np.ndarray:
        return np.quantile(self.null, q, axis=0)

    @property
    def q95(self) -> np.ndarray:
        """Each pair's null 95% point (uncorrected)."""
        return self.quantile(0.95)

    @property
    def q_corrected(self) -> np.ndarray:
        """Each pair's null ``1 - alpha/P`` point (Bonferroni over the pairs: Holm's first step)."""
        return self.quantile(1.0 - self.alpha / len(self.pairs))


def centred_null_draws(X: np.ndarray, y: np.ndarray, classes: list[str], n_perm: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Observed centred cosines ``(P,)`` and ``n_perm`` of them with labels permuted ``(n_perm, P)``."""
    blocks = class_blocks(y, classes)
    iu = np.triu_indices(len(classes), 1)
    Z = _reduce(X[np.concatenate(blocks)])  # (m, r), rows grouped by class
    counts = np.array([b.size for b in blocks], dtype=np.float64)
    starts = np.r_[0, np.cumsum(counts)[:-1]].astype(int)
    observed = _pair_cos(np.add.reduceat(Z, starts, axis=0) / counts[:, None], iu)
    null = np.empty((n_perm, iu[0].size))
    step = max(1, _CHUNK // Z.size)
    for s in range(0, n_perm, step):
        B = min(step, n_perm - s)
        idx = np.argsort(rng.random((B, Z.shape[0])), axis=1)  # B permutations of the rows
        null[s:s + B] = _pair_cos(np.add.reduceat(Z[idx], starts, axis=1) / counts[None, :, None], iu)
    return observed, null


def centred_cosine_null(X: Any, y: Any, classes: list[str] | None = None, *, n_perm: int = 2000,
                        alpha: float = 0.05, seed: int | np.random.Generator | None = 0) -> PairNull:
    """Permutation null of the centred cosine of every pair of ``classes``: labels permuted across
    the texts of those classes (sizes kept; rows of other labels, e.g. neutral, unused), centred
    vectors recomputed, the null of a pair is the cosine of the same two class slots. p-values are
    per pair and one-sided, Holm over the pairs; ``n_perm`` is raised to :func:`min_permutations`.

    >>> rng = np.random.default_rng(0)
    >>> res = centred_cosine_null(rng.normal(size=(80, 16)), np.repeat(list("abcd"), 20), n_perm=200)
    >>> res.n_perm, bool(res.p_holm.min() > 0.05)
    (200, True)
    """
    X, y, classes, _ = _setup(X, y, classes)
    K = len(classes)
    if K < 3:
        raise InputError(f"similarity beyond what the vectors share cannot be tested with K<3 classes (got {K}): "
                         "centred vectors of two classes are exact opposites")
    P = K * (K - 1) // 2
    observed, null = centred_null_draws(X, y, classes, max(int(n_perm), min_permutations(P)), rng_from(seed))
    p = np.array([permutation_pvalue(o, null[:, i], "greater") for i, o in enumerate(observed)])
    iu = np.triu_indices(K, 1)
    pairs = [(classes[i], classes[j]) for i, j in zip(*iu, strict=True)]
    return PairNull(classes, pairs, observed, null, p, holm(p), alpha)


def bootstrap_pairs(X: np.ndarray, y: np.ndarray, classes: list[str], n_boot: int, level: float,
                     seed: Any) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each pair's centred cosine, texts resampled within each class.

    ``core.stats.bootstrap`` resamples values whose mean is the statistic; a cosine of class
    means is not such a mean, so the texts are resampled here and the cosines recomputed.
    """
    blocks = class_blocks(y, classes)
    Z = _reduce(X[np.concatenate(blocks)])
    iu = np.triu_indices(len(classes), 1)
    rng = rng_from(seed)
    out = np.empty((n_boot, iu[0].size))
    step = max(1, _CHUNK // Z.size)
    for s in range(0, n_boot, step):
        B = min(step, n_boot - s)
        means, start = [], 0
        for b in blocks:  # multinomial counts of each text in a resample of its class
            w = rng.multinomial(b.size, np.full(b.size, 1.0 / b.size), size=B) / b.size  # (B, n_k)
            means.append(w @ Z[start:start + b.size])
            start += b.size
        out[s:s + B] = _pair_cos(np.stack(means, axis=1), iu)
    a = (1.0 - level) / 2
    return np.quantile(out, a, axis=0), np.quantile(out, 1 - a, axis=0)


def split_half_reliability(X: Any, y: Any, classes: list[str] | None = None, *, n_splits: int = 5,
                           seed: int | np.random.Generator | None = 0, step_up: bool = True) -> np.ndarray:
    """``(K,)``: the reliability of each class's centred vector fitted on **all** the texts given.

    Each class's texts are halved at random; the cosine between the class's centred vector on
    one half (of every class) and on the other is averaged over ``n_splits`` seeded splits. That
    is the reliability of a vector fitted on half the texts; the similarity is computed on all of
    them, so the half-size value ``r`` is stepped up with Spearman-Brown, ``2r / (1 + r)``
    (``core.stats.spearman_brown``; ``step_up=False`` gives the half-size value). With signal
    ``S`` and noise ``N / m`` in a class mean of ``m`` texts the cosine of two independent
    estimates is ``S / (S + N/m)``: halving ``m`` is exactly what the step-up undoes. Near 1 for
    a class with a strong direction of its own, near 0 for noise; a pair's observed centred
    cosine is attenuated by ``sqrt(rel_a * rel_b)`` (the ceiling)."""
    X, y, classes, blocks = _setup(X, y, classes)
    rng = rng_from(seed)
    rel = np.zeros(len(classes))
    for _ in range(int(n_splits)):
        halves = []
        for b in blocks:
            perm = rng.permutation(b)
            h = perm.size // 2
            halves.append((X[perm[:h]].mean(0), X[perm[h:]].mean(0)))
        c1, c2 = (np.stack([hv[i] for hv in halves]).astype(np.float64) for i in (0, 1))
        c1, c2 = c1 - c1.mean(0), c2 - c2.mean(0)
        den = np.linalg.norm(c1, axis=1) * np.linalg.norm(c2, axis=1)
        rel += np.einsum("kd,kd->k", c1, c2) / np.where(den > 0, den, 1.0)
    rel /= int(n_splits)
    return spearman_brown(rel, 2.0) if step_up else rel


@dataclass
class Distinctness:
    observed: float  # centred cosine of a and b
    null: np.ndarray  # (n_perm,) the same with labels permuted between a and b only
    p: float  # P(null <= observed): small p = distinct


def distinctness(X: Any, y: Any, a: str, b: str, classes: list[str] | None = None, *, n_perm: int = 2000,
                 seed: int | np.random.Generator | None = 0) -> Distinctness:
    """"Are ``a`` and ``b`` distinct?": labels permuted between the texts of ``a`` and ``b`` only
    (sizes kept, the other classes untouched); the statistic is the centred cosine of ``a`` and
    ``b`` (centre: the mean of the ``classes``' means). If ``a`` and ``b`` are one distribution
    the observed cosine is a typical draw of that null; if they differ it falls below it.
    ``p = permutation_pvalue(observed, null, "less")``. With only two classes the centred cosine is
    -1 whatever the data (p = 1): it needs a third class."""
    X, y, classes, blocks = _setup(X, y, classes)
    if a not in classes or b not in classes or a == b:
        raise InputError(f"distinctness needs two different classes among {classes}; got {a!r}, {b!r}")
    ia, ib = classes.index(a), classes.index(b)
    order = [ia, ib] + [k for k in range(len(classes)) if k not in (ia, ib)]
    Z = _reduce(X[np.concatenate([blocks[k] for k in order])])
    na, nb = blocks[ia].size, blocks[ib].size
    Zab, K, total = Z[:na + nb], len(classes), Z[:na + nb].sum(0)
    ends = np.cumsum([na + nb] + [blocks[k].size for k in order[2:]])
    rest = sum((Z[s:e].mean(0) for s, e in zip(ends[:-1], ends[1:], strict=True)), np.zeros(Z.shape[1]))

    def stat(sa: np.ndarray) -> np.ndarray:  # (B, r) sums over the texts labelled a
        ma, mb = sa / na, (total - sa) / nb
        centre = (ma + mb + rest) / K
        u, v = ma - centre, mb - centre
        den = np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1)
        return np.einsum("...r,...r->...", u, v) / np.where(den > 0, den, 1.0)

    observed = float(stat(Zab[:na].sum(0)))
    rng = rng_from(seed)
    null = np.empty(int(n_perm))
    step = max(1, _CHUNK // Zab.size)
    for s in range(0, null.size, step):
        B = min(step, null.size - s)
        mask = (np.argsort(rng.random((B, na + nb)), axis=1) < na).astype(np.float64)  # (B, na+nb)
        null[s:s + B] = stat(mask @ Zab)
    return Distinctness(observed, null, permutation_pvalue(observed, null, "less"))

