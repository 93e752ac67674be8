"""Figures of a sweep: dose-response (target score vs strength) and the layer x strength regime map.

Both return a bare ``matplotlib.figure.Figure`` (Agg, no pyplot state); save with
``RunContext.save_figure`` or ``emoscope.core.figures.save_figure`` (PNG + SVG).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emoscope.core.figures import new_figure
from emoscope.steering.regimes import RANDOM_KINDS, REGIMES, intact_at_baseline, random_rows

__all__ = ["dose_response_figure", "regime_map_figure", "REGIME_COLORS", "RANDOM_COLORS"]

REGIME_COLORS = {"no effect": "#d9d9d9", "surgical": "#1b9e77", "repetitive collapse": "#7570b3",
                 "explosive": "#d95f02"}


RANDOM_COLORS = {"isotropic": "#7f7f7f", "covariance": "#9467bd"}


def dose_response_figure(result: Any) -> Any:
    """Mean target score vs strength per layer: the vector, the negated vector (the vector at
    ``-s``, drawn at ``s``), every random vector (one thin line each, per kind, with a band from
    the lowest to the highest and their mean), and the unsteered baseline."""
    t = result.table
    layers = sorted(int(x) for x in t.loc[t["kind"] != "baseline", "layer"].unique())
    fig = new_figure(3.2 * max(1, len(layers)), 3.0, layout="constrained")
    axes = fig.subplots(1, max(1, len(layers)), sharey=True, squeeze=False)[0]
    base = t.loc[t["kind"] == "baseline", "target_score"]
    vec_names = [v for v in t.loc[t["kind"] == "vector", "vector"].unique()]
    for ax, layer in zip(axes, layers, strict=False):
        ax.axhline(base.mean(), color="black", lw=1, ls=":", label="baseline (strength 0)")
        for name in vec_names:
            g = t[(t["kind"] == "vector") & (t["vector"] == name) & (t["layer"] == layer)]
            m = g.groupby("strength")["target_score"].mean()
            xs = np.r_[0.0, m.index.to_numpy()]
            ys = np.r_[base.mean(), m.to_numpy()]
            o = np.argsort(xs)
            ax.plot(xs[o], ys[o], "o-", label=name, zorder=3)
            ax.plot(-xs[o], ys[o], "s--", alpha=0.7, label=f"negated {name}", zorder=3)
        for kind in RANDOM_KINDS:
            r = random_rows(t, kind)
            r = r[r["layer"] == layer]
            if not len(r):
                continue
            per = r.groupby(["vector", "strength"])["target_score"].mean().unstack(0)  # (strengths, k)
            xs = np.r_[0.0, per.index.to_numpy()]
            o = np.argsort(xs)
            color = RANDOM_COLORS[kind]
            k = per.shape[1]
            for j, col in enumerate(per.columns):
                ax.plot(xs[o], np.r_[base.mean(), per[col].to_numpy()][o], "-", color=color, lw=0.6, alpha=0.45,
                        label=f"{kind} random, each of {k}" if j == 0 else None)
            lo = np.r_[base.mean(), per.min(axis=1).to_numpy()][o]
            hi = np.r_[base.mean(), per.max(axis=1).to_numpy()][o]
            ax.fill_between(xs[o], lo, hi, color=color, alpha=0.15, label=f"{kind} random, min to max")
            ax.plot(xs[o], np.r_[base.mean(), per.mean(axis=1).to_numpy()][o], "^-", color=color, lw=1.2,
                    label=f"{kind} random, mean")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("strength")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(result.target)
    axes[-1].legend(fontsize=6, loc="best")
    return fig


def regime_map_figure(result: Any, kinds: tuple[str, ...] = ("vector", "random")) -> Any:
    """Layer x strength grid coloured by the most common regime, with its share written in, on the
    prompts whose unsteered output is intact (``regimes.intact_at_baseline``)."""
    from matplotlib.patches import Patch

    t = result.table
    t = t[intact_at_baseline(t)]  # where steering breaks text: prompts whose unsteered output is intact
    kinds = tuple(k for k in kinds if (t["kind"] == k).any())
    fig = new_figure(4.0 * max(1, len(kinds)), 0.5 + 0.5 * max(2, t["layer"].nunique()), layout="constrained")
    axes = fig.subplots(1, max(1, len(kinds)), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=False):
        g = t[t["kind"] == kind]
        layers = sorted(g["layer"].unique())
        strengths = sorted(g["strength"].unique())
        for i, layer in enumerate(layers):
            for j, s in enumerate(strengths):
                cell = g[(g["layer"] == layer) & (g["strength"] == s)]["regime"]
                if not len(cell):
                    continue
                top = cell.value_counts(normalize=True)
                reg, share = top.index[0], float(top.iloc[0])
                ax.add_patch(_rect(j, i, REGIME_COLORS.get(reg, "white")))
                ax.text(j + 0.5, i + 0.5, f"{share:.0%}", ha="center", va="center", fontsize=7)
        ax.set_xlim(0, len(strengths))
        ax.set_ylim(0, len(layers))
        ax.set_xticks(np.arange(len(strengths)) + 0.5, [f"{s:g}" for s in strengths], fontsize=7)
        ax.set_yticks(np.arange(len(layers)) + 0.5, [str(int(x)) for x in layers])
        ax.set_xlabel("strength")
        ax.set_ylabel("layer")
        ax.set_title(f"{kind} rows: most common regime")
    handles = [Patch(color=REGIME_COLORS[r], label=r) for r in REGIMES]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=7)
    return fig


def _rect(x: float, y: float, color: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), 1, 1, facecolor=color, edgecolor="white")
