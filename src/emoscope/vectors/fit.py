"""``fit_vectors``: one ``ConceptVector`` per non-neutral class, across layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from emoscope._io import sha256_json
from emoscope._progress import progress
from emoscope.core.arrays import as_labels, as_layer_dict
from emoscope.errors import InputError
from emoscope.vectors.concept import ConceptVector
from emoscope.vectors.estimators import METHODS, TokenDiff

__all__ = ["fit_vectors", "resolve_baseline", "token_pairs", "TOKEN_METHOD"]

#: the token-based method: each class's text minus its neutral twin, position-aligned (``TokenDiff``)
TOKEN_METHOD = "token_diff"


def token_pairs(labels: Any, groups: Any, target: str, baseline: str) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(target_rows, twin_rows)`` pairing each ``target`` row with the ``baseline`` row
    of the same group (a template and its neutral twin). A group without exactly one baseline row
    is an ``InputError``; groups without a target row are skipped.

    >>> token_pairs(["joy", "neutral", "neutral", "joy"], ["t1", "t1", "t2", "t2"], "joy", "neutral")
    (array([0, 3]), array([1, 2]))
    """
    y = np.asarray(labels).astype(str)
    if groups is None:
        raise InputError(f"method {TOKEN_METHOD!r} pairs each text with its neutral twin by 'group'; "
                         "the dataset has no group column")
    g = np.asarray(groups).astype(str)
    if baseline == "all":
        raise InputError(f"method {TOKEN_METHOD!r} needs a baseline class (the neutral twins), not 'all'")
    twin: dict[str, int] = {}
    for i in np.flatnonzero(y == baseline):
        if g[i] in twin:
            raise InputError(f"group {g[i]!r} has more than one {baseline!r} row; each template needs one twin")
        twin[g[i]] = int(i)
    t = [int(i) for i in np.flatnonzero(y == target)]
    missing = [g[i] for i in t if g[i] not in twin]
    if missing:
        raise InputError(f"group {missing[0]!r} has a {target!r} row but no {baseline!r} twin")
    if not t:
        raise InputError(f"target class {target!r} has no rows")
    return np.asarray(t), np.asarray([twin[g[i]] for i in t])


def resolve_baseline(classes: Any, baseline: str | None = None, *, neutral: str = "neutral",
                     what: str = "baseline", source: str = "") -> str:
    """The baseline a vector is measured against: a class name, or ``"all"``.

    ``None`` means ``neutral`` when that class exists, else ``"all"`` (the mean of all class
    means, see ``DiffMeans``). A name that is not one of ``classes`` is a one-line ``InputError``
    (``what`` and ``source``, the dataset's name, say where it came from).

    >>> resolve_baseline(["joy", "neutral"]), resolve_baseline(["praise", "complaint"])
    ('neutral', 'all')
    >>> resolve_baseline(["praise", "complaint"], "calm")
    Traceback (most recent call last):
    ...
    emoscope.errors.InputError: baseline 'calm' is not a class (classes: complaint, praise); give one of them or 'all'
    """
    names = sorted({str(c) for c in classes})
    if baseline is None:
        return neutral if neutral in names else "all"
    if baseline != "all" and baseline not in names:
        of = f" of {source}" if source else ""
        raise InputError(f"{what} {baseline!r} is not a class{of} (classes: {', '.join(names)}); "
                         "give one of them or 'all'")
    return baseline


def fit_vectors(
    acts_by_layer: Any,
    labels: Any,
    method: str = "diff_means",
    baseline: str | None = None,
    *,
    neutral: str = "neutral",
    meta: dict[str, Any] | None = None,
    **kw: Any,
) -> dict[str, ConceptVector]:
    """Fit a concept vector for every class except ``neutral``, at every layer.

    ``method`` is one of ``"diff_means"``, ``"pca_diff"``, ``"probe"``, or ``"token_diff"`` (the
    token-based vector: the mean over templates of each text minus its neutral twin, paired by
    ``groups=``, at a position both share, e.g. the slot word); ``baseline`` is a
    class name, ``"all"``, or ``None`` for ``neutral`` when the labels have it and ``"all"``
    otherwise (see ``resolve_baseline``; ``pca_diff`` pairs rows, so ``"all"`` there means "any other
    row; ``probe`` always separates the class from every other row); extra keywords go to the estimator (``C=``, ``pairing=``, ``seed=``).
    ``meta`` (e.g. ``{"model": ..., "dataset_sha": ...}``) is copied into every vector's
    metadata, next to the method, baseline, class counts and per-layer vector norms
    (``layer_norms``). The strength unit is measured separately (``emoscope.vectors.strength``).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(30, 8)); y = ["neutral"] * 10 + ["joy"] * 10 + ["fear"] * 10
    >>> vecs = fit_vectors({4: X, 5: X + 1}, y)
    >>> sorted(vecs), vecs["joy"].layers
    (['fear', 'joy'], [4, 5])
    """
    if method not in METHODS and method != TOKEN_METHOD:
        raise InputError(f"unknown method {method!r}; choose one of {sorted([*METHODS, TOKEN_METHOD])}")
    groups = kw.pop("groups", None)
    acts = as_layer_dict(acts_by_layer)
    n = next(iter(acts.values())).shape[0]
    y = as_labels(labels, n)
    classes = [c for c in np.unique(y).tolist() if c != neutral]
    if not classes:
        raise InputError(f"labels contain no class other than {neutral!r}")
    baseline = resolve_baseline(y.tolist(), baseline, neutral=neutral, what="baseline class")
    cls = METHODS.get(method)
    counts = {c: int(np.sum(y == c)) for c in np.unique(y).tolist()}
    base_meta = {
        "method": method,
        "baseline": baseline,
        "params": {k: v for k, v in kw.items()},
        "class_counts": counts,
        "labels_sha": sha256_json(y.tolist()),
        **(meta or {}),
    }
    per_class: dict[str, dict[int, np.ndarray]] = {c: {} for c in classes}
    for layer in progress(list(acts), desc=f"vectors ({method})", total=len(acts)):
        X = acts[layer]
        for c in classes:
            if c == baseline:
                continue
            if method == TOKEN_METHOD:  # each text minus its neutral twin at the same (slot) position
                t, b = token_pairs(y, groups, c, baseline)
                per_class[c][layer] = TokenDiff().fit(X[t], X[b]).vector_.astype(X.dtype)
                continue
            est = cls(c, baseline=baseline, **kw) if method != "probe" else cls(c, **kw)
            per_class[c][layer] = est.fit(X, y).vector_.astype(X.dtype)
    out = {}
    for c, vectors in per_class.items():
        if not vectors:
            continue
        norms = {k: float(np.linalg.norm(v)) for k, v in vectors.items()}
        out[c] = ConceptVector(c, vectors, {**base_meta, "target": c, "layer_norms": norms})
    return out
