"""How emotion vectors are arranged: centred PCA, valence/arousal axes, and the paper recipe.

- :func:`load_valence_arousal`: the shipped human ratings (NRC VAD lexicon v1.0, see
  ``emoscope/datasets/data/valence-arousal.card.yaml`` for source and licence) or a user table
  with ``emotion``, ``valence`` and ``arousal`` columns.
- :func:`emotion_space`: PCA over the emotion vectors *centred on their mean* (otherwise PC1 is
  the offset every emotion shares), each component's share of variance, and the Pearson
  correlation of PC1 and PC2 with valence and arousal against a permutation null (ratings
  shuffled over emotions; two-sided, because the sign of a component is arbitrary).
- :func:`denoise_vectors`: the recipe of the emotion-vector paper these studies replicate:
  subtract the mean over all emotions, then project out the top principal components of
  neutral activations that together explain ``share`` (50%) of their variance. (The third step
  of the recipe, averaging from a given token onward, is the extraction position
  ``mean_from:K``.)

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> va = load_valence_arousal()
>>> axis = rng.normal(size=64)
>>> vecs = {e: (va.loc[e, "valence"] - 0.5) * 10 * axis + rng.normal(size=64) for e in va.index}
>>> res = emotion_space(vecs, va, n_perm=999)
>>> abs(res.correlations["pc1"]["valence"]["r"]) > 0.9
True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from emoscope.core.arrays import as_matrix
from emoscope.core.stats import permutation_null, permutation_pvalue
from emoscope.errors import InputError
from emoscope.geometry.subspace import EmotionPCA, emotion_pca
from emoscope.vectors.preprocess import NeutralNullspace

__all__ = ["load_valence_arousal", "check_valence_arousal", "emotion_space", "EmotionSpace", "denoise_vectors",
           "VA_SOURCE"]

VA_SOURCE = "NRC VAD lexicon v1.0 (Mohammad, ACL 2018); non-commercial research licence"
_REQUIRED = ("emotion", "valence", "arousal")


def load_valence_arousal(path: str | os.PathLike[str] | None = None):  # noqa: ANN201 - a pandas DataFrame
    """Valence/arousal ratings indexed by emotion: the shipped table, or a user CSV/JSON/JSONL
    with columns ``emotion``, ``valence``, ``arousal`` (others are kept).

    Missing columns, empty or repeated emotions and non-numeric ratings are one ``InputError``
    naming the rows (1-based data rows).

    >>> load_valence_arousal().loc["calm", ["valence", "arousal"]].tolist()
    [0.875, 0.1]
    """
    import pandas as pd

    if path is None:
        with resources.files("emoscope.datasets").joinpath("data/valence-arousal.csv").open("r", encoding="utf-8") as f:
            df = pd.read_csv(f)
        where = "valence-arousal.csv"
    else:
        p = os.fspath(path)
        where = p
        try:
            if p.endswith(".jsonl"):
                df = pd.read_json(p, lines=True)
            elif p.endswith(".json"):
                df = pd.read_json(p)
            else:
                df = pd.read_csv(p)
        except FileNotFoundError:
            raise InputError(f"valence/arousal table {p} not found") from None
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
            raise InputError(f"cannot read valence/arousal table {p}: {str(e).splitlines()[0]}") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"valence/arousal table {where}: missing column(s) {', '.join(missing)} "
                         f"(have {', '.join(df.columns) or 'none'}); it needs emotion, valence, arousal")
    df["emotion"] = df["emotion"].astype(str).str.strip()
    bad = [i + 1 for i, e in enumerate(df["emotion"]) if not e or e.lower() == "nan"]
    for col in ("valence", "arousal"):
        vals = pd.to_numeric(df[col], errors="coerce")
        bad += [i + 1 for i in np.flatnonzero(~np.isfinite(vals.to_numpy(dtype=float)))]
        df[col] = vals
    if bad:
        raise InputError(f"valence/arousal table {where}: row(s) {', '.join(map(str, sorted(set(bad))))} lack an "
                         "emotion name or a numeric valence/arousal")
    dup = df["emotion"][df["emotion"].duplicated()].tolist()
    if dup:
        raise InputError(f"valence/arousal table {where}: emotion(s) {', '.join(sorted(set(dup)))} listed twice")
    return df.set_index("emotion")


def check_valence_arousal(table: Any, emotions: list[str], *, where: str = "valence/arousal table") -> None:
    """One ``InputError`` naming the rows of ``table`` whose emotion is not among ``emotions``,
    or the ``emotions`` the table lacks."""
    have = list(table.index)
    unknown = [f"{i + 1} ({e})" for i, e in enumerate(have) if e not in set(emotions)]
    if unknown:
        raise InputError(f"{where}: row(s) {', '.join(unknown)} name emotions that have no vector "
                         f"(vectors: {', '.join(emotions)})")
    lacking = [e for e in emotions if e not in set(have)]
    if lacking:
        raise InputError(f"{where}: no rating for {', '.join(lacking)}; add rows for them")


@dataclass
class EmotionSpace:
    """Centred PCA of emotion vectors and the correlation of PC1/PC2 with human ratings."""

    pca: EmotionPCA
    #: ``{"pc1": {"valence": {"r", "p", "n_perm"}, "arousal": {...}}, "pc2": {...}}``
    correlations: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One row per component (pc1, pc2): share of variance, r and permutation p per rating."""
        out = []
        for k, pc in enumerate(sorted(self.correlations)):
            row: dict[str, Any] = {"pc": pc, "variance_share": float(self.pca.explained_variance_ratio[k])}
            for rating, c in self.correlations[pc].items():
                row[f"r_{rating}"], row[f"p_{rating}"] = c["r"], c["p"]
            row["n_emotions"] = len(self.pca.names)
            out.append(row)
        return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / den) if den > 0 else float("nan")


def emotion_space(vectors: Mapping[str, Any], ratings: Any = None, *, layer: int | None = None,
                  n_perm: int = 9999, seed: int | np.random.Generator | None = 0,
                  normalize: bool = True) -> EmotionSpace:
    """PCA of ``vectors`` centred on their mean, and PC1/PC2 against ``ratings``
    (``load_valence_arousal()`` when None; its emotions must match the vectors').

    ``normalize`` scales each vector to unit norm first (``emotion_pca``). Correlations are
    Pearson r with a two-sided permutation p (ratings shuffled over emotions, ``n_perm`` times).
    """
    pca = emotion_pca(vectors, layer=layer, normalize=normalize)
    if ratings is None:  # the shipped table covers every built-in emotion; keep the ones analysed
        table = load_valence_arousal()
        table = table.loc[[e for e in table.index if e in set(pca.names)]]
    else:
        table = ratings
    check_valence_arousal(table, pca.names)
    out = EmotionSpace(pca=pca)
    if len(pca.names) < 4:
        raise InputError(f"correlating components with ratings needs at least 4 emotions; got {len(pca.names)}")
    for k in range(min(2, pca.scores.shape[1])):
        scores = pca.scores[:, k]
        out.correlations[f"pc{k + 1}"] = {}
        for rating in ("valence", "arousal"):
            y = table.loc[pca.names, rating].to_numpy(dtype=float)
            r = _pearson(scores, y)
            null = permutation_null(lambda perm, s=scores: _pearson(s, perm), y, n_perm, seed=seed)
            out.correlations[f"pc{k + 1}"][rating] = {
                "r": r, "p": permutation_pvalue(r, null, "two-sided"), "n_perm": float(n_perm)}
    return out


def denoise_vectors(class_means: Mapping[str, Any], neutral: Any, *, share: float = 0.5
                    ) -> tuple[dict[str, np.ndarray], int]:
    """The paper recipe on class means ``{emotion: (d,)}`` of one layer: subtract the mean over
    all emotions, then project out the top PCs of ``neutral`` activations ``(n, d)`` explaining
    ``share`` of their variance. Returns the vectors and the number of PCs removed.

    >>> import numpy as np
    >>> N = np.random.default_rng(0).normal(size=(100, 3)) * [10.0, 1.0, 1.0]
    >>> v, k = denoise_vectors({"a": np.array([5.0, 1.0, 0.0]), "b": np.array([-5.0, -1.0, 0.0])}, N)
    >>> k, bool(abs(v["a"][0]) < 0.1 and abs(v["a"][1]) > 0.9)
    (1, True)
    """
    names = list(class_means)
    if len(names) < 2:
        raise InputError("denoise_vectors needs at least two emotions")
    M = np.stack([np.asarray(class_means[n], dtype=np.float64).ravel() for n in names])  # (K, d)
    N = as_matrix(neutral, "neutral", min_rows=2)
    if N.shape[1] != M.shape[1]:
        raise InputError(f"neutral activations have {N.shape[1]} features, the class means {M.shape[1]}")
    nn = NeutralNullspace(variance=share).fit(N)
    D = nn.transform(M - M.mean(0))
    return {n: D[i] for i, n in enumerate(names)}, int(nn.n_components_)
