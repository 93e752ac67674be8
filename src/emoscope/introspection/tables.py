"""Tables of a sweep: shifts against the no-injection baseline, introspection scores with
bootstrap intervals over vectors, logit-lens curves and per-head attention to the window.

Definitions (all in yes-minus-no logit-difference units):

- shift = logit difference with injection − the same prompt's no-injection logit difference
- detection shift = shift on the detection question
- control shift = mean shift over the control questions (same vector, layer and strength)
- introspection score = detection shift − control shift
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emoscope.core.stats import bootstrap

__all__ = ["per_vector_table", "summary_table", "lens_table", "heads_table"]


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


def summary_table(per_vector: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (condition, layer, strength): means over vectors with bootstrap 95% intervals of
    the detection shift, control shift and score; ``score_minus_random`` compares the concept
    score with the random-vector score at the same layer and strength."""
    rows = []
    for (cond, layer, depth, strength), g in per_vector.groupby(
            ["condition", "layer", "relative_depth", "strength"], sort=True):
        row = {"condition": cond, "layer": int(layer), "relative_depth": depth, "strength": strength,
               "n": len(g)}
        for col in ("detection_shift", "control_shift", "score"):
            _, lo, hi = bootstrap(g[col].to_numpy(float), n_boot=n_boot, seed=seed)
            row.update({col: float(g[col].mean()), f"{col}_lo": lo, f"{col}_hi": hi})
        row["detection_p_yes"] = float(g.detection_p_yes.mean())
        rows.append(row)
    out = pd.DataFrame(rows)
    rand = out[out.condition == "random"].set_index(["layer", "strength"]).score
    out["score_minus_random"] = [
        r.score - rand.get((r.layer, r.strength), np.nan) if r.condition == "concept" else np.nan
        for r in out.itertuples()
    ]
    return out


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
