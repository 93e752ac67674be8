"""What the injection sweep summarises into its meta and lens after scoring: the logit lens at
the strengths where detection flips and the controls do not, the flip strengths' medians, and
the uninjected baseline with and without the ablated direction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from emoscope.introspection.tables import ABLATED, flip_lens_strengths, lens_table

__all__ = ["flip_lens", "flip_summary", "ablation_baseline"]


def flip_lens(table: pd.DataFrame, lens: np.ndarray, n_layers: int, layers: Sequence[int],
               focus_strength: float) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The logit lens per swept layer at the strength where detection flips and the controls do
    not (``flip_lens_strengths``), or at the focus strength where no grid strength does."""
    chosen = flip_lens_strengths(table)
    parts, strengths, choice, missing = [], {}, {}, []
    for layer in layers:
        s = chosen.get(int(layer))
        how = "flip" if s is not None else "focus"
        if s is None:
            s = focus_strength
            missing.append(int(layer))
        part = lens_table(table, lens, n_layers, layer=int(layer), strength=s)
        part["strength_choice"] = np.where(part.condition.str.startswith("baseline"), "none", how)
        parts.append(part)
        strengths[int(layer)], choice[int(layer)] = float(s), how
    out = pd.concat(parts, ignore_index=True)
    out = out[~((out.condition == "baseline") & out.duplicated(["condition", "kind", "lens_layer"]))]
    note = ("logit lens per layer at the smallest strength where detection > 0 and the control mean < 0 for most "
            "concepts")
    if missing:
        note += (f"; no strength of the grid does that at layer(s) {missing}: their lens is at the focus strength "
                 f"{focus_strength:g}")
    return out.reset_index(drop=True), {"lens_strengths": strengths, "lens_strength_choice": choice,
                                        "lens_note": note}


def _json_number(x: float) -> float | str | None:
    """A float for JSON: ``None`` for nan, ``"inf"`` / ``"-inf"`` for infinities."""
    if np.isnan(x):
        return None
    return float(x) if np.isfinite(x) else ("inf" if x > 0 else "-inf")


def flip_summary(flips: pd.DataFrame) -> list[dict[str, Any]]:
    """Per (condition, layer): medians of the flip strengths and the gap (``inf``: never flips in
    the grid), and the share of vectors whose detection / control flips within the grid."""
    out = []
    for (cond, layer), g in flips.groupby(["condition", "layer"], sort=True):
        row: dict[str, Any] = {"condition": cond, "layer": int(layer), "n": len(g)}
        for col in ("detection_flip", "control_flip", "gap"):
            x = g[col].to_numpy(float)
            x = x[~np.isnan(x)]
            row[f"median_{col}"] = _json_number(float(np.median(x))) if x.size else None
        row["detection_flips_share"] = float(np.isfinite(g.detection_flip.to_numpy(float)).mean())
        row["control_flips_share"] = float(np.isfinite(g.control_flip.to_numpy(float)).mean())
        out.append(row)
    return out


def ablation_baseline(table: pd.DataFrame) -> dict[int, dict[str, float]]:
    """Per swept layer: the uninjected detection difference and control mean, with and without
    the ablation at that layer."""
    base = table[table.condition == "baseline"]
    out = {}
    for layer, g in table[table.condition == "baseline" + ABLATED].groupby("layer", sort=True):
        out[int(layer)] = {
            "detection_diff": float(base[base.kind == "detection"].logit_diff.mean()),
            "detection_diff_ablated": float(g[g.kind == "detection"].logit_diff.mean()),
            "control_diff_mean": float(base[base.kind == "control"].logit_diff.mean()),
            "control_diff_mean_ablated": float(g[g.kind == "control"].logit_diff.mean()),
        }
    return out
