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
With an ablation direction the sweep adds ``baseline+ablated`` (no injection, the direction
ablated at each swept layer) and ``<condition>+ablated``; their shifts are measured from
``baseline+ablated`` at the same layer (the ablated model's own no-injection answer), and the
shift of ``baseline+ablated`` itself is the ablation's effect on the plain baseline.

Flip strengths (``flips_table``): per vector and layer, the strength at which the detection
question's yes-minus-no logit difference first crosses 0 upwards (``flip_strength``, linear
interpolation between grid points; strength 0 is the no-injection baseline, and a curve above 0
throughout flips at 0), the same for the mean over control questions, and
``gap = control_flip - detection_flip`` (> 0: detection flips at a lower strength than the
controls; ~0: both flip together, a "yes" bias; ``inf``: never flips in the grid).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from emoscope.core.stats import bootstrap, unpaired_test

__all__ = ["per_vector_table", "summary_table", "score_matrix", "lens_table", "heads_table", "RANDOM_CONDITIONS",
           "ABLATED", "flip_strength", "flips_table", "flip_lens_strengths", "ablation_table"]

#: suffix of the conditions run with the ablation direction removed
ABLATED = "+ablated"


def per_vector_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (condition, vector, layer, strength): detection shift, control shift, score,
    and the detection question's yes probability (shown beside, never instead)."""
    inj = cells[~cells.condition.str.startswith("baseline")]
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
        # concept rows against the same kind of random vector; ablated concepts against ablated random
        pair = {"concept": cond, "concept" + ABLATED: cond + ABLATED}
        rand = out[out.condition.isin(list(pair.values()))].set_index(["condition", "layer", "strength"]).score
        out[f"score_minus_random{suffix}"] = [
            r.score - rand.get((pair[r.condition], r.layer, r.strength), np.nan) if r.condition in pair else np.nan
            for r in out.itertuples()
        ]
        out[f"p_vs_random{suffix}"] = [
            unpaired_test(scores[(r.condition, r.layer, r.strength)], scores[(pair[r.condition], r.layer, r.strength)],
                          "greater")
            if r.condition in pair and (pair[r.condition], r.layer, r.strength) in scores else np.nan
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
    ``strength``; one row per (condition, kind, lens layer). With an ablation direction the
    ablated baseline at ``layer`` and the ablated conditions come too."""
    rows = []
    plain = cells.condition == "baseline"
    ablated_base = (cells.condition == "baseline" + ABLATED) & (cells.layer == layer)
    pick = plain | ablated_base | ((cells.layer == layer) & (cells.strength == strength) & ~cells.condition.str.startswith("baseline"))
    for (cond, kind), g in cells[pick.fillna(False).astype(bool)].groupby(["condition", "kind"], sort=True):
        curve = lens[g.index.to_numpy()].mean(0)           # (n_layers,)
        base = cond.startswith("baseline")
        for lens_layer in range(n_layers):
            rows.append({"condition": cond, "kind": kind, "injected_layer": None if cond == "baseline" else layer,
                         "strength": 0.0 if base else strength, "lens_layer": lens_layer,
                         "relative_depth": lens_layer / n_layers, "logit_diff": float(curve[lens_layer])})
    return pd.DataFrame(rows)


def flip_strength(strengths: Any, values: Any) -> float:
    """The strength at which ``values`` (a yes-minus-no logit difference against ``strengths``)
    first crosses 0 upwards (from ``<= 0`` to ``> 0``), interpolated linearly between the two grid
    points around the crossing.

    A curve above 0 at every point (the model says yes already at the first strength, e.g. at
    no injection) flips at the first strength; ``inf`` when it never crosses upwards otherwise
    (never flips in the grid, including a curve that starts above 0, drops below and stays there);
    ``nan`` when no value is finite. Non-finite points are dropped. Only the first upward crossing
    counts (a curve that flips and drops back at large strengths still flipped there).

    >>> flip_strength([0, 2, 4, 8], [-2.0, -1.0, 1.0, 3.0])
    3.0
    >>> flip_strength([0, 2, 4], [-2.0, -1.0, -0.5]), flip_strength([0, 2], [0.5, 1.0])
    (inf, 0.0)
    >>> flip_strength([0, 2, 4], [0.5, -1.0, 1.0])     # yes at 0, pushed to no, back to yes
    3.0
    """
    s = np.asarray(strengths, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if s.shape != v.shape:
        raise ValueError(f"strengths {s.shape} and values {v.shape} differ in shape")
    keep = np.isfinite(s) & np.isfinite(v)
    s, v = s[keep], v[keep]
    if not s.size:
        return float("nan")
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    up = np.flatnonzero((v[:-1] <= 0) & (v[1:] > 0))
    if not up.size:
        return float(s[0]) if (v > 0).all() else float("inf")
    i = int(up[0]) + 1
    s0, s1, v0, v1 = s[i - 1], s[i], v[i - 1], v[i]
    return float(s0 + (0.0 - v0) * (s1 - s0) / (v1 - v0))


def _gap(control: float, detection: float) -> float:
    """``control - detection``; nan when both are inf (neither flips) or either is nan."""
    if np.isinf(control) and np.isinf(detection):
        return float("nan")
    return float(control - detection)


def _curves(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (condition, vector, layer, strength): the detection logit difference and the mean
    over control questions, with strength 0 from the matching baseline (``baseline`` for plain
    conditions, ``baseline+ablated`` at the layer for ablated ones) unless the grid has 0."""
    keys = ["condition", "vector", "layer", "relative_depth", "strength"]
    inj = cells[~cells.condition.str.startswith("baseline")]
    det = inj[inj.kind == "detection"].set_index(keys).logit_diff
    ctrl = inj[inj.kind == "control"].groupby(keys).logit_diff.mean()
    out = pd.DataFrame({"detection": det, "control": ctrl}).reset_index()
    zero = []
    for (cond, vec, layer, depth), g in out.groupby(["condition", "vector", "layer", "relative_depth"], sort=False):
        if (g.strength == 0).any():
            continue
        ablated = cond.endswith(ABLATED)
        b = cells[cells.condition == ("baseline" + ABLATED if ablated else "baseline")]
        if ablated:
            b = b[b.layer == layer]
        if b.empty:
            continue
        zero.append({"condition": cond, "vector": vec, "layer": layer, "relative_depth": depth, "strength": 0.0,
                     "detection": float(b[b.kind == "detection"].logit_diff.mean()),
                     "control": float(b[b.kind == "control"].logit_diff.mean())})
    if zero:
        out = pd.concat([pd.DataFrame(zero), out], ignore_index=True)
    return out.sort_values(["condition", "vector", "layer", "strength"], kind="stable").reset_index(drop=True)


def flips_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (condition, vector, layer): ``detection_flip`` (where the detection question's
    yes-minus-no difference first crosses 0), ``control_flip`` (the same for the mean over control
    questions) and ``gap = control_flip - detection_flip``; ``inf`` = never flips in the grid,
    and the gap is nan when neither flips. See ``flip_strength``."""
    rows = []
    for (cond, vec, layer, depth), g in _curves(cells).groupby(
            ["condition", "vector", "layer", "relative_depth"], sort=False):
        d = flip_strength(g.strength, g.detection)
        c = flip_strength(g.strength, g.control)
        rows.append({"condition": cond, "vector": vec, "layer": int(layer), "relative_depth": depth,
                     "detection_flip": d, "control_flip": c, "gap": _gap(c, d)})
    return pd.DataFrame(rows, columns=["condition", "vector", "layer", "relative_depth", "detection_flip",
                                       "control_flip", "gap"])


def flip_lens_strengths(cells: pd.DataFrame, condition: str = "concept") -> dict[int, float | None]:
    """Per injected layer: the smallest grid strength at which, for more than half of
    ``condition``'s vectors, the detection difference is above 0 and the control mean below
    (detection flipped, control not); ``None`` when no strength of the grid does that."""
    cur = _curves(cells)
    cur = cur[(cur.condition == condition) & (cur.strength > 0)]
    out: dict[int, float | None] = {}
    for layer, g in cur.groupby("layer", sort=True):
        share = ((g.detection > 0) & (g.control < 0)).groupby(g.strength).mean()
        ok = share[share > 0.5]
        out[int(layer)] = float(ok.index.min()) if len(ok) else None
    return out


def ablation_table(per_vector: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (condition, layer, strength), for the conditions run with and without ablation:
    the mean score without (``score``) and with (``score_ablated``) the ablation, the detection
    and control shifts beside them, and ``difference = score_ablated - score`` per vector with a
    bootstrap interval over vectors (concepts for ``concept``)."""
    keys = ["vector", "layer", "relative_depth", "strength"]
    rows = []
    for cond in ("concept", *RANDOM_CONDITIONS):
        a = per_vector[per_vector.condition == cond].set_index(keys)
        b = per_vector[per_vector.condition == cond + ABLATED].set_index(keys)
        if a.empty or b.empty:
            continue
        both = a.merge(b, left_index=True, right_index=True, how="inner", suffixes=("", "_ablated")).reset_index()
        for (layer, depth, strength), g in both.groupby(["layer", "relative_depth", "strength"], sort=True):
            diff = (g.score_ablated - g.score).to_numpy(float)
            point, lo, hi = bootstrap(diff, n_boot=n_boot, seed=seed)
            rows.append({"condition": cond, "layer": int(layer), "relative_depth": depth, "strength": strength,
                         "n": len(g), "score": float(g.score.mean()), "score_ablated": float(g.score_ablated.mean()),
                         "difference": point, "difference_lo": lo, "difference_hi": hi,
                         "detection_shift": float(g.detection_shift.mean()),
                         "detection_shift_ablated": float(g.detection_shift_ablated.mean()),
                         "control_shift": float(g.control_shift.mean()),
                         "control_shift_ablated": float(g.control_shift_ablated.mean())})
    return pd.DataFrame(rows)


HEAD_GROUPS = ("baseline", "concept", "random")


def heads_table(attention: np.ndarray, group: Any, kind: Any, vector: Any) -> pd.DataFrame:
    """Per (layer, head): attention mass from the answer position to the injection window in
    the three conditions of the replication, side by side, and the same for random vectors.

    ``attention``: ``(n_cells, n_layers, n_heads)``; per row, ``group`` (``baseline`` /
    ``concept`` / ``random``), ``kind`` (``detection`` / ``control``) and ``vector`` (its name).
    Columns (means; control = mean over control questions first, per vector):

    - ``detection_injected``: detection question with concept injection, mean over concepts
      (``_sd``: sd over concepts)
    - ``control_injected``: control questions with concept injection (``_sd`` over concepts)
    - ``detection_baseline``: detection question without injection; ``control_baseline``
      the control questions without it
    - ``random_detection_injected`` / ``random_control_injected``: the same for the random
      vectors, mean over vectors with their spread (``_sd``, ``_min``, ``_max``)
    - ``detection_minus_baseline``, ``detection_minus_control``, ``concept_minus_random``
      (concept detection minus random detection)
    """
    att = np.asarray(attention, dtype=np.float64)
    meta = pd.DataFrame({"group": list(group), "kind": list(kind), "vector": list(vector)})
    if len(meta) != att.shape[0]:
        raise ValueError(f"{len(meta)} labels for {att.shape[0]} attention rows")
    L, H = att.shape[1:]
    nan = np.full((0, L, H), np.nan)

    def per_vector(g: str, k: str) -> np.ndarray:
        """``(n_vectors, L, H)``: one row per vector of group ``g`` (controls averaged)."""
        sub = meta[(meta.group == g) & (meta.kind == k)]
        if sub.empty:
            return nan
        return np.stack([att[idx.to_numpy()].mean(0) for _, idx in sub.groupby("vector", sort=False).groups.items()])

    def stat(x: np.ndarray, f: Any) -> np.ndarray:
        if not x.shape[0]:
            return np.full((L, H), np.nan)
        if f is np.std:
            return x.std(0, ddof=1) if x.shape[0] > 1 else np.full((L, H), np.nan)
        return f(x, 0)

    cd, cc = per_vector("concept", "detection"), per_vector("concept", "control")
    rd, rc = per_vector("random", "detection"), per_vector("random", "control")
    bd, bc = per_vector("baseline", "detection"), per_vector("baseline", "control")
    cols = {
        "detection_injected": stat(cd, np.mean), "detection_injected_sd": stat(cd, np.std),
        "control_injected": stat(cc, np.mean), "control_injected_sd": stat(cc, np.std),
        "detection_baseline": stat(bd, np.mean), "control_baseline": stat(bc, np.mean),
        "random_detection_injected": stat(rd, np.mean), "random_detection_injected_sd": stat(rd, np.std),
        "random_detection_injected_min": stat(rd, np.min), "random_detection_injected_max": stat(rd, np.max),
        "random_control_injected": stat(rc, np.mean), "random_control_injected_sd": stat(rc, np.std),
        "random_control_injected_min": stat(rc, np.min), "random_control_injected_max": stat(rc, np.max),
    }
    cols["detection_minus_baseline"] = cols["detection_injected"] - cols["detection_baseline"]
    cols["detection_minus_control"] = cols["detection_injected"] - cols["control_injected"]
    cols["concept_minus_random"] = cols["detection_injected"] - cols["random_detection_injected"]
    rows = []
    for layer in range(L):
        for head in range(H):
            row = {"layer": layer, "head": head}
            row.update({k: float(v[layer, head]) for k, v in cols.items()})
            row["n_concepts"], row["n_random"] = int(cd.shape[0]), int(rd.shape[0])
            rows.append(row)
    return pd.DataFrame(rows)
