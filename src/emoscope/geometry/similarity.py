"""Are two emotion vectors related beyond what every emotion vector shares?

"Class minus neutral" vectors all contain whatever separates emotional text from neutral
text, so any two of them have a high cosine (0.8-0.9 is common) and a random-direction null
cannot see why. The test here works on **centred** vectors: each class mean minus the mean of
the K emotion class means (neutral left out of the K). For K unrelated classes their expected
pairwise cosine is ``-1/(K-1)``, not 0 (:func:`expected_centred_cosine`). The estimator and its
nulls live in ``geometry.centred`` (re-exported here); this module holds the held-out analysis.

- :func:`centred_cosine_null`: the null of the same estimator. Labels are permuted across the
  texts of the K emotion classes (class sizes kept); the centred vectors and their cosines are
  recomputed; a pair's null is the centred cosine of the same two class slots. One-sided
  per-pair p-values (``core.stats.permutation_pvalue``), Holm over the ``K(K-1)/2`` pairs.
- :func:`split_half_reliability`: the ceiling: cosine between a class's centred vectors fitted
  on two random halves of every class, averaged over seeded splits and stepped up
  (Spearman-Brown, ``2r/(1+r)``) to the texts the reported cosine uses.
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

from emoscope.core.arrays import as_labels, as_matrix, numeric_vector
from emoscope.core.stats import rng_from
from emoscope.errors import InputError
from emoscope.geometry.centred import (
    Distinctness,
    PairNull,
    bootstrap_pairs,
    centred_cosine_null,
    centred_cosines,
    centred_null_draws,
    class_blocks,
    distinctness,
    expected_centred_cosine,
    min_permutations,
    split_half_reliability,
)
from emoscope.vectors.preprocess import LengthNormalizer

__all__ = ["expected_centred_cosine", "centred_cosines", "min_permutations", "PairNull", "centred_cosine_null",
           "split_half_reliability", "distinctness", "Distinctness", "split_halves", "SimilarityResult", "similarity_analysis",
           "LENGTH_VARIANTS"]

#: the length-normalised variants: each text's activation scaled to unit norm before the means;
#: token count regressed out of the activations (slope pooled within classes, fitted once with the
#: true labels; the permutation null then shuffles the residualised texts) before the means
LENGTH_VARIANTS = ("unit_norm", "token_count_regressed")


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
        obs, null = centred_null_draws(X[rows], y[rows], classes, 200, rng_from(seed))
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
    class_blocks(y, classes + ([neutral] if neutral in y else []), min_rows=4)
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
    lo, hi = bootstrap_pairs(X, yr, classes, n_boot, 0.95, rng)
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
