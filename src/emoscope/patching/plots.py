"""The figure of a patch sweep: the effect per layer, with the random-patch spread.

Top row: the mean change of the target score (multi-token outputs) per layer, one panel per
positions spec: the source patch, the neutral-source patch, each random patch (one small point per
draw), the band from the lowest to the highest random draw, and the self-patch ("strength 0").
Bottom row: the same for the step-1 view (``step1_change``, log-odds of target tokens at the
first generated token), so the two views can be compared cell by cell. Returns a bare
``matplotlib.figure.Figure``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emoscope.core.figures import new_figure
from emoscope.steering.plots import RANDOM_COLORS

__all__ = ["effect_by_layer_figure"]


def effect_by_layer_figure(result: Any) -> Any:
    t = result.table
    specs = [s for s in dict.fromkeys(t.loc[t["kind"] == "patch", "positions"].astype(str))]
    views = [("target_change", f"{result.target} change (multi-token)")]
    if np.isfinite(t["step1_change"].to_numpy(float)).any():
        views.append(("step1_change", "step-1 log-odds change"))
    fig = new_figure(3.4 * max(1, len(specs)), 2.8 * len(views), layout="constrained")
    axes = fig.subplots(len(views), max(1, len(specs)), squeeze=False, sharex=True)
    for i, (col, label) in enumerate(views):
        for j, spec in enumerate(specs):
            ax = axes[i][j]
            g = t[t["positions"].astype(str) == spec]
            layers = sorted(int(x) for x in g["layer"].unique())
            ax.axhline(0.0, color="black", lw=0.8, ls=":")
            rnd = g[g["kind"] == "random"]
            if len(rnd):
                per = rnd.groupby(["layer", "source"])[col].mean().unstack("source").reindex(layers)  # (layers, k)
                for k, name in enumerate(per.columns):
                    ax.plot(layers, per[name].to_numpy(float), ".", color=RANDOM_COLORS["isotropic"], ms=3,
                            alpha=0.6, label=f"random patch, each of {per.shape[1]}" if k == 0 else None)
                ax.fill_between(layers, per.min(axis=1).to_numpy(float), per.max(axis=1).to_numpy(float),
                                color=RANDOM_COLORS["isotropic"], alpha=0.18, label="random patches, min to max")
            for kind, style, name in (("patch", "o-", None), ("neutral", "s--", None), ("self", "x:", "self (0)")):
                h = g[g["kind"] == kind]
                if not len(h):
                    continue
                m = h.groupby("layer")[col].mean().reindex(layers)
                ax.plot(layers, m.to_numpy(float), style, label=name or str(h["source"].iloc[0]) + f" ({kind})",
                        zorder=3)
            ax.set_title(f"positions {spec}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(views) - 1:
                ax.set_xlabel("layer")
        axes[i][0].set_ylabel(label, fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="best")
    return fig
