"""Figures: the layer x head screening heatmap and the chosen-vs-random effect strips.

Both return a bare ``matplotlib.figure.Figure``; save with ``RunContext.save_figure``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from emoscope.core.figures import new_figure
from emoscope.heads.effects import metric_label, prompt_effects

__all__ = ["screen_heatmap", "effects_figure"]


def screen_heatmap(table: pd.DataFrame, n_layers: int, n_heads: int, *, top: int = 8, alpha: float = 0.05,
                   title: str = "") -> Any:
    """``diff`` per (layer, head) on a diverging scale; dots where ``p_holm < alpha``; the top
    ``top`` heads by rank numbered; unscreened cells blank."""
    grid = np.full((n_layers, n_heads), np.nan)
    for layer, head, d in zip(table["layer"], table["head"], table["diff"], strict=True):
        grid[int(layer), int(head)] = float(d)
    fig = new_figure(max(4.0, 0.45 * n_heads + 2.0), max(3.0, 0.22 * n_layers + 1.5), layout="constrained")
    ax = fig.add_subplot()
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", origin="lower",
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label="diff (emotion - baseline), residual units")
    sig = table[table["p_holm"] < alpha]
    ax.scatter(sig["head"], sig["layer"], s=8, c="black", marker="o", label=f"p_holm < {alpha:g}")
    for _, r in table.sort_values("rank").head(top).iterrows():
        ax.text(int(r["head"]), int(r["layer"]), str(int(r["rank"])), ha="center", va="center", fontsize=7,
                color="white" if abs(r["diff"]) > 0.6 * lim else "black", fontweight="bold")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_title(title or "direct contribution of each head to the vector's direction", fontsize=9)
    if len(sig):
        ax.legend(loc="upper right", fontsize=7)
    return fig


def effects_figure(table: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str], *, title: str = "") -> Any:
    """Per metric (columns) and method (rows): each random set's mean change (grey) and the chosen
    heads' mean change (red) with its bootstrap interval over prompts."""
    from emoscope.core.stats import bootstrap

    metrics = [m for m in metrics if m in table and table[m].notna().any()]
    fig = new_figure(2.6 * max(1, len(metrics)), 1.2 + 1.1 * max(1, len(methods)), layout="constrained")
    axes = fig.subplots(max(1, len(methods)), max(1, len(metrics)), squeeze=False)
    for i, method in enumerate(methods):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            chosen, rand = prompt_effects(table, method, metric)
            per_random = rand.mean(axis=0).to_numpy(float)
            ax.scatter(per_random, np.zeros_like(per_random), color="#7f7f7f", alpha=0.6, s=14, label="random sets")
            est = bootstrap(chosen.to_numpy(float), n_boot=1000, seed=0)
            if np.isfinite(est.point):
                err = [[est.point - est.lo], [est.hi - est.point]] if np.isfinite([est.lo, est.hi]).all() else None
                ax.errorbar([est.point], [0.0], xerr=err, fmt="o", color="#d62728", capsize=3, label="chosen heads")
            ax.axvline(0.0, color="black", lw=0.8, ls=":")
            ax.set_yticks([])
            ax.set_xlabel(f"{metric_label(metric)}\nchange from baseline", fontsize=7)
            if j == 0:
                ax.set_ylabel(method, fontsize=8)
            if i == 0 and j == 0:
                ax.legend(fontsize=6, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
