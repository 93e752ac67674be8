"""Are two emotion vectors related beyond what every emotion vector shares?

"Class minus neutral" vectors all contain whatever separates emotional text from neutral
text, so any two of them have a high cosine (0.8-0.9 is common) and a random-direction null
cannot see why. The test here works on **centred** vectors: each class mean minus the mean of
the K emotion class means (neutral left out of the K). For K unrelated classes their expected
pairwise cosine is ``-1/(K-1)``, not 0 (:func:`expected_centred_cosine`).

- :func:`centred_cosine_null`: the null of the same estimator. Labels are permuted across the
  texts of the K emotion classes (class sizes kept); the centred vectors and their cosines are
  recomputed; a pair's null is the centred cosine of the same two class slots. One-sided
  per-pair p-values (``core.stats.permutation_pvalue``), Holm over the ``K(K-1)/2`` pairs.
- :func:`split_half_reliability`: the ceiling: cosine between a class's centred vectors fitted
  on two random halves of every class, averaged over seeded splits.
- :func:`distinctness`: "are A and B distinct?": labels permuted between A and B only; the
  observed centred cosine of A and B must fall below that null (``alternative="less"``).
- :func:`similarity_analysis`: the whole test at one layer chosen on one half of the texts
  (split within each class) and reported on the other (``geometry.stage.similarity_findings``
  turns it into ``similarity`` findings).

A caveat of any mean-centring: a direction that some classes share moves the centre, so the
classes *without* it lean the same way too ("related" by a shared absence). With a neutral class,
``own_share`` tells the two apart: the share of the pair's common centred direction the pair
carries itself, measured from neutral (near 1: the pair has it; near 0: the pair sits at the
neutral level and the other classes carry the opposite).

>>> expected_centred_cosine(4)
-0.3333333333333333
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from emoscope.core.stats import holm, min_pvalue, permutation_pvalue, rng_from
from emoscope.errors import InputError
from emoscope.vectors._data import as_labels, as_matrix, numeric_vector
from emoscope.vectors.preprocess import LengthNormalizer

__all__ = ["expected_centred_cosine", "centred_cosines", "min_permutations", "PairNull", "centred_cosine_null",
           "split_half_reliability", "distinctness", "Distinctness", "split_halves", "SimilarityResult", "similarity_analysis",
           "LENGTH_VARIANTS"]

#: the length-normalised variants: each text's activation scaled to unit norm before the means;
#: token count regressed out of the activations (slope pooled within classes, fitted once with the
#: true labels; the permutation null then shuffles the residualised texts) before the means
LENGTH_VARIANTS = ("unit_norm", "token_count_regressed")
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


def _blocks(y: np.ndarray, classes: list[str], min_rows: int = 2) -> list[np.ndarray]:
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
    return X, y, classes, _blocks(y, classes)


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


def _null(X: np.ndarray, y: np.ndarray, classes: list[str], n_perm: int,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Observed centred cosines ``(P,)`` and ``n_perm`` of them with labels permuted ``(n_perm, P)``."""
    blocks = _blocks(y, classes)
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
    observed, null = _null(X, y, classes, max(int(n_perm), min_permutations(P)), rng_from(seed))
    p = np.array([permutation_pvalue(o, null[:, i], "greater") for i, o in enumerate(observed)])
    iu = np.triu_indices(K, 1)
    pairs = [(classes[i], classes[j]) for i, j in zip(*iu, strict=True)]
    return PairNull(classes, pairs, observed, null, p, holm(p), alpha)


def _bootstrap_pairs(X: np.ndarray, y: np.ndarray, classes: list[str], n_boot: int, level: float,
                     seed: Any) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each pair's centred cosine, texts resampled within each class.

    ``core.stats.bootstrap`` resamples values whose mean is the statistic; a cosine of class
    means is not such a mean, so the texts are resampled here and the cosines recomputed.
    """
    blocks = _blocks(y, classes)
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
                           seed: int | np.random.Generator | None = 0) -> np.ndarray:
    """``(K,)``: cosine between each class's centred vector fitted on one random half of every
    class and the one fitted on the other half, averaged over ``n_splits`` seeded splits. Near 1
    for a class with a strong direction of its own, near 0 for noise; a pair's centred cosine
    cannot be told apart from a value above ``sqrt(rel_a * rel_b)`` or so (the ceiling)."""
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
    return rel / int(n_splits)


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


def split_halves(y: Any, seed: int | np.random.Generator | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(select, report)``: each class's texts shuffled (seeded) and halved."""
    y = np.asarray(y).astype(str)
    rng = rng_from(seed)
    sel, rep = [], []
    for c in sorted(set(y.tolist())):
        rows = rng.permutation(np.flatnonzero(y == c))
        sel.append(rows[: rows.size // 2])
        rep.append(rows[rows.size // 2:])
    return np.sort(np.concatenate(sel)), np.sort(np.concatenate(rep))


def _select_layer(layers: Mapping[int, np.ndarray], y: np.ndarray, classes: list[str], rows: np.ndarray,
                  seed: int) -> tuple[int, dict[int, float]]:
    """The layer whose largest standardised centred cosine over pairs (observed minus the mean of
    its permutation null, over the null's sd; 200 permutations) is highest on ``rows``."""
    scores = {}
    for L, X in layers.items():
        obs, null = _null(X[rows], y[rows], classes, 200, rng_from(seed))
        scores[L] = float(np.max((obs - null.mean(0)) / np.maximum(null.std(0), 1e-12)))
    return max(scores, key=lambda L: scores[L]), scores


@dataclass
class SimilarityResult:
    """Everything :func:`similarity_analysis` measured at the chosen layer, on the report half."""

    layer: int
    n_searched: int
    layer_fixed: bool  # True: the layer came from the caller, nothing was searched
    selection_scores: dict[int, float]  # layer -> largest standardised centred cosine, selection half
    null: PairNull  # raw activations
    variants: dict[str, PairNull]  # LENGTH_VARIANTS -> the same test on length-normalised activations
    lo: np.ndarray  # (P,) bootstrap interval of the centred cosine
    hi: np.ndarray
    level: float
    vs_neutral: np.ndarray  # (P,) cosine of (class - neutral) vectors; NaN without a neutral class
    own_share: np.ndarray  # (P,) share of the pair's common centred direction the pair carries (vs neutral)
    neutral: str | None
    reliability: np.ndarray  # (K,) split-half reliability
    p_distinct: np.ndarray  # (P,)
    p_random: np.ndarray  # (P,) two-sided p against random directions (geometry.cosine_null)
    seed_values: np.ndarray  # (n_seeds, P) centred cosine after redoing split and layer choice
    seed_layers: list[int]
    n_report: dict[str, int]  # texts per class on the report half
    alpha: float

    @property
    def classes(self) -> list[str]:
        return self.null.classes

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return self.null.pairs

    @property
    def seed_sd(self) -> np.ndarray:
        return self.seed_values.std(axis=0, ddof=1)


def similarity_analysis(acts_by_layer: Mapping[int, Any], labels: Any, token_counts: Any, *,
                        neutral: str | None = None, layer: int | None = None, n_perm: int = 2000,
                        n_boot: int = 1000, n_seeds: int = 3, n_reliability: int = 5, n_null: int = 2000,
                        alpha: float = 0.05, seed: int = 0) -> SimilarityResult:
    """The similarity test at one layer, chosen on half of the texts and reported on the other.

    ``acts_by_layer``: ``{layer: (n, d)}``; ``labels (n,)``; ``token_counts (n,)``. The K emotion
    classes are every label except ``neutral``. Texts are halved within each class
    (:func:`split_halves`, ``seed``); unless ``layer`` is given, the layer with the largest
    standardised centred cosine over pairs on the selection half is chosen (every layer is
    searched). On the report half: the centred cosines with their permutation null (Holm over
    the pairs) and a bootstrap interval (texts resampled within class), the length-normalised
    variants each against its own permutation null, the vs-neutral cosines and ``own_share``,
    split-half reliabilities, A-vs-B distinctness and the random-direction null
    (``geometry.cosine_null``, two-sided). The seed spread reruns split and layer choice with
    ``n_seeds`` seeds (``seed + 1000 s``); the first is the reported split.
    """
    from emoscope.geometry.cosine import cosine_null

    if not isinstance(acts_by_layer, Mapping) or not acts_by_layer:
        raise InputError("acts_by_layer must be a non-empty dict {layer: (n, d) array}")
    layers = {int(k): as_matrix(v, f"acts[{k}]") for k, v in acts_by_layer.items()}
    n = next(iter(layers.values())).shape[0]
    if any(X.shape[0] != n for X in layers.values()):
        raise InputError(f"every layer needs the same rows; got {sorted({X.shape[0] for X in layers.values()})}")
    y = as_labels(labels, n)
    t = numeric_vector(token_counts, n, "token_counts")
    classes = [c for c in sorted(set(y.tolist())) if c != neutral]
    if len(classes) < 3:
        raise InputError(f"similarity beyond what emotion vectors share cannot be tested with K<3 classes "
                         f"(got {len(classes)}: {classes})")
    _blocks(y, classes + ([neutral] if neutral in y else []), min_rows=4)
    if n_seeds < 3:
        raise InputError(f"n_seeds must be >= 3 for a seed spread; got {n_seeds}")
    if layer is not None and layer not in layers:
        raise InputError(f"layer {layer} was not extracted (have {sorted(layers)})")

    def choose(rows: np.ndarray) -> tuple[int, dict[int, float]]:
        return (layer, {}) if layer is not None else _select_layer(layers, y, classes, rows, seed)

    sel, rep = split_halves(y, seed)
    L, scores = choose(sel)
    X, yr, tr = layers[L][rep], y[rep], t[rep]
    rng = np.random.default_rng(seed)  # one stream for every resampling below
    null = centred_cosine_null(X, yr, classes, n_perm=n_perm, alpha=alpha, seed=rng)
    length = {"unit_norm": LengthNormalizer("unit").fit_transform(X),
              "token_count_regressed": LengthNormalizer("regress").fit_transform(X, tr, yr)}
    variants = {v: centred_cosine_null(Xv, yr, classes, n_perm=n_perm, alpha=alpha, seed=rng)
                for v, Xv in length.items()}
    lo, hi = _bootstrap_pairs(X, yr, classes, n_boot, 0.95, rng)
    means = np.stack([X[yr == c].mean(0) for c in classes]).astype(np.float64)  # (K, d)
    cen = means - means.mean(0)
    vs, own = np.full(len(null.pairs), np.nan), np.full(len(null.pairs), np.nan)
    if neutral is not None and neutral in yr:
        D = means - X[yr == neutral].mean(0)  # (K, d) class-minus-neutral vectors
        for i, (ia, ib) in enumerate(zip(*np.triu_indices(len(classes), 1), strict=True)):
            vs[i] = D[ia] @ D[ib] / max(np.linalg.norm(D[ia]) * np.linalg.norm(D[ib]), 1e-300)
            proj = D @ (cen[ia] + cen[ib])  # along the pair's common centred direction
            mine, rest = (proj[ia] + proj[ib]) / 2, np.delete(proj, [ia, ib]).mean()
            own[i] = mine / (mine - rest) if mine > rest else np.nan
    rel = split_half_reliability(X, yr, classes, n_splits=n_reliability, seed=rng)
    p_dist = np.array([distinctness(X, yr, a, b, classes, n_perm=null.n_perm, seed=rng).p for a, b in null.pairs])
    ref = X[yr == neutral] if neutral is not None and neutral in yr else X[np.isin(yr, classes)]
    rnd = cosine_null(dict(zip(classes, cen, strict=True)), ref, n=n_null, seed=int(rng.integers(2**31)))
    p_random = np.array([rnd.p[classes.index(a), classes.index(b)] for a, b in null.pairs])
    seed_values, seed_layers = [null.observed], [L]
    for s in range(1, n_seeds):
        sel_s, rep_s = split_halves(y, seed + 1000 * s)
        L_s, _ = choose(sel_s)
        M = centred_cosines(layers[L_s][rep_s], y[rep_s], classes)[1]
        seed_values.append(M[np.triu_indices(len(classes), 1)])
        seed_layers.append(L_s)
    n_report = {c: int(np.sum(yr == c)) for c in classes}
    return SimilarityResult(L, 1 if layer is not None else len(layers), layer is not None, scores, null, variants,
                            lo, hi, 0.95, vs, own, neutral if neutral in yr else None, rel, p_dist, p_random,
                            np.stack(seed_values), seed_layers, n_report, alpha)
