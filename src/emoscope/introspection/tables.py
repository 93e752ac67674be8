"""Tables of a sweep: shifts against the no-injection baseline, introspection scores with
bootstrap intervals over vectors, logit-lens curves and per-head attention to the window.

Definitions (all in yes-minus-no logit-difference units):

- shift = logit difference with injection − the same prompt's no-injection logit difference
- detection shift = shift on the detection question
- control shift = mean shift over the control questions (same vector, layer and strength)
- introspection score = detection shift − control shift

Conditions: ``concept``, ``random`` (isotropic random vectors) and ``random_cov``
(covariance-matched ones), each a distribution over vectors: the summary gives min and max
beside the mean, and a Mann-Whitney p of the concepts against each random kind per cell.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emoscope.core.stats import bootstrap, unpaired_test

__all__ = ["per_vector_table", "summary_table", "score_matrix", "lens_table", "heads_table", "RANDOM_CONDITIONS"]


def per_vector_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (condition, vector, layer, strength): detection shift, control shift, score,
    and the detection question's yes probability (shown beside, never instead)."""
    inj = cells[cells.condition != "baseline"]
    keys = ["condition", "vector", "layer", "relative_depth", "strength"]
    det = inj[inj.kind == "detection"].set_index(keys)
    ctrl = inj[inj.kind == "control"].groupby(keys)
    out = pd.DataFrame({
        "detection_diff": det["logit_diff"],
        "detection_shift": det["shift"],
        "control_shift": ctrl["shift"].mean(),
        "control_shift_sd": ctrl["shift"].std(ddof=1),
        "detection_p_yes": det["p_yes"],
    })
    out["score"] = out.detection_shift - out.control_shift
    return out.reset_index()


RANDOM_CONDITIONS = {"random": "isotropic", "random_cov": "covariance-matched"}


def summary_table(per_vector: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (condition, layer, strength): means over vectors with bootstrap 95% intervals of
    the detection shift, control shift and score, and their spread over vectors (``_min``,
    ``_max``, ``score_sd``: the random vectors are a distribution, not a mean). On concept rows,
    ``score_minus_random`` / ``score_minus_random_cov`` compare the concept score with the
    isotropic / covariance-matched random-vector score at the same layer and strength, and
    ``p_vs_random`` / ``p_vs_random_cov`` are the one-sided Mann-Whitney p-values of concept
    scores against random-vector scores there (unit: one vector's score; every concept, every
    cell: descriptive and uncorrected; the finding uses the held-out test of
    ``emoscope.introspection.heldout``)."""
    rows = []
    for (cond, layer, depth, strength), g in per_vector.groupby(
            ["condition", "layer", "relative_depth", "strength"], sort=True):
        row = {"condition": cond, "layer": int(layer), "relative_depth": depth, "strength": strength,
               "n": len(g)}
        for col in ("detection_shift", "control_shift", "score"):
            x = g[col].to_numpy(float)
            _, lo, hi = bootstrap(x, n_boot=n_boot, seed=seed)
            row.update({col: float(x.mean()), f"{col}_lo": lo, f"{col}_hi": hi,
                        f"{col}_min": float(x.min()), f"{col}_max": float(x.max())})
        row["score_sd"] = float(g.score.std(ddof=1)) if len(g) > 1 else np.nan
        row["detection_p_yes"] = float(g.detection_p_yes.mean())
        rows.append(row)
    out = pd.DataFrame(rows)
    scores = {k: g.score.to_numpy(float) for k, g in per_vector.groupby(["condition", "layer", "strength"])}
    for cond in RANDOM_CONDITIONS:
        suffix = cond[len("random"):]
        rand = out[out.condition == cond].set_index(["layer", "strength"]).score
        out[f"score_minus_random{suffix}"] = [
            r.score - rand.get((r.layer, r.strength), np.nan) if r.condition == "concept" else np.nan
            for r in out.itertuples()
        ]
        out[f"p_vs_random{suffix}"] = [
            unpaired_test(scores[("concept", r.layer, r.strength)], scores[(cond, r.layer, r.strength)], "greater")
            if r.condition == "concept" and (cond, r.layer, r.strength) in scores else np.nan
            for r in out.itertuples()
        ]
    return out


def score_matrix(per_vector: pd.DataFrame, condition: str = "concept",
                 column: str = "score") -> tuple[np.ndarray, list[str], list[tuple[int, float]]]:
    """``column`` of ``condition``'s vectors as a ``(n_vectors, n_cells)`` matrix over the
    (layer, strength) cells, with the vector names (in their order of appearance) and the cells
    (sorted by layer, then strength); NaN where a vector has no value.

    >>> pv = pd.DataFrame({"condition": "concept", "vector": ["a", "a", "b", "b"], "layer": [1, 2, 1, 2],
    ...                    "strength": 4.0, "score": [0.1, 0.2, 0.3, 0.4]})
    >>> m, names, cells = score_matrix(pv); m.tolist(), names, cells
    ([[0.1, 0.2], [0.3, 0.4]], ['a', 'b'], [(1, 4.0), (2, 4.0)])
    """
    sub = per_vector[per_vector.condition == condition]
    names = list(dict.fromkeys(sub.vector))
    piv = sub.pivot_table(index="vector", columns=["layer", "strength"], values=column, aggfunc="first",
                          dropna=False).reindex(names)
    piv = piv.reindex(sorted(piv.columns), axis=1)
    return piv.to_numpy(dtype=np.float64), names, [(int(layer), float(s)) for layer, s in piv.columns]


def lens_table(cells: pd.DataFrame, lens: np.ndarray, n_layers: int, *, layer: int,
               strength: float) -> pd.DataFrame:
    """Logit lens of the yes-minus-no difference at every layer, averaged over vectors (and
    control questions), for the baseline and for concept / random injection at ``layer`` and
    ``strength``; one row per (condition, kind, lens layer)."""
    rows = []
    pick = (cells.condition == "baseline") | ((cells.layer == layer) & (cells.strength == strength))
    for (cond, kind), g in cells[pick].groupby(["condition", "kind"], sort=True):
        curve = lens[g.index.to_numpy()].mean(0)           # (n_layers,)
        for lens_layer in range(n_layers):
            rows.append({"condition": cond, "kind": kind, "injected_layer": None if cond == "baseline" else layer,
                         "strength": 0.0 if cond == "baseline" else strength, "lens_layer": lens_layer,
                         "relative_depth": lens_layer / n_layers, "logit_diff": float(curve[lens_layer])})
    return pd.DataFrame(rows)


def heads_table(attention: np.ndarray, is_baseline: np.ndarray) -> pd.DataFrame:
    """Per (layer, head): attention mass from the answer position to the window without
    injection, with injection (mean over vectors), and the difference.

    ``attention``: ``(n_cells, n_layers, n_heads)``; ``is_baseline`` marks the uninjected row(s).
    """
    base = attention[is_baseline].mean(0)
    inj = attention[~is_baseline].mean(0) if (~is_baseline).any() else np.full_like(base, np.nan)
    L, H = base.shape
    return pd.DataFrame([
        {"layer": layer, "head": head, "baseline": float(base[layer, head]),
         "injected": float(inj[layer, head]), "difference": float(inj[layer, head] - base[layer, head])}
        for layer in range(L) for head in range(H)
    ])
