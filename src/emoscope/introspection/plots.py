"""Figures of a sweep (matplotlib ``Figure`` objects, Agg; no pyplot state).

- ``introspect_strength``: shift against strength, one panel per layer, one line per
  condition (concept detection, concept control, random detection, random control), with the
  bootstrap interval over vectors as a band
- ``introspect_layers``: the same against relative depth at the focus strength, plus the score
- ``introspect_lens``: logit lens of the yes-no difference across layers
- ``introspect_heads``: attention from the answer position to the window per (layer, head)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emoscope.core.figures import new_figure

__all__ = ["strength_figure", "layer_figure", "lens_figure", "heads_figure", "sweep_figures"]

_STYLE = {
    ("concept", "detection_shift"): ("#c4362b", "-", "concept: detection"),
    ("concept", "control_shift"): ("#3465a4", "-", "concept: control questions"),
    ("random", "detection_shift"): ("#c4362b", ":", "random: detection"),
    ("random", "control_shift"): ("#3465a4", ":", "random: control questions"),
}


def _band(ax: Any, x: Any, g: Any, col: str, color: str, ls: str, label: str) -> None:
    ax.plot(x, g[col], color=color, ls=ls, marker="o", ms=3, label=label)
    if f"{col}_lo" in g and g[f"{col}_lo"].notna().any():
        ax.fill_between(x, g[f"{col}_lo"], g[f"{col}_hi"], color=color, alpha=0.12 if ls == "-" else 0.06)


def _strength_axis(ax: Any, strengths: list[float]) -> None:
    if min(strengths) > 0:
        ax.set_xscale("log", base=2)
    else:
        ax.set_xscale("symlog", base=2, linthresh=min([s for s in strengths if s > 0] or [1.0]))
    ax.set_xticks(strengths)
    ax.set_xticklabels([f"{s:g}" for s in strengths])
    ax.minorticks_off()


def strength_figure(summary: Any, title: str = "") -> Any:
    """Shift in the yes-no logit difference against strength, one panel per injected layer."""
    layers = sorted(summary.layer.unique())
    fig = new_figure(3.2 * len(layers) + 0.6, 3.4, layout="constrained")
    axes = fig.subplots(1, len(layers), sharey=True, squeeze=False)[0]
    for ax, layer in zip(axes, layers, strict=True):
        sub = summary[summary.layer == layer]
        for (cond, col), (color, ls, label) in _STYLE.items():
            g = sub[sub.condition == cond].sort_values("strength")
            if len(g):
                _band(ax, g.strength, g, col, color, ls, label)
        ax.axhline(0, color="0.5", lw=0.8)
        _strength_axis(ax, sorted(summary.strength.unique()))
        ax.set_xlabel("strength (× mean residual norm)")
        ax.set_title(f"layer {layer} ({sub.relative_depth.iloc[0]:.2f})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("shift in logit(yes) − logit(no)")
    axes[-1].legend(frameon=False, fontsize=7)
    fig.suptitle(title or "Concept injection: detection vs control vs random", fontsize=10)
    return fig


def layer_figure(summary: Any, strength: float, title: str = "") -> Any:
    """Shifts and the introspection score against relative depth at one strength."""
    fig = new_figure(6.4, 3.6, layout="constrained")
    ax = fig.add_subplot()
    sub = summary[summary.strength == strength]
    for (cond, col), (color, ls, label) in _STYLE.items():
        g = sub[sub.condition == cond].sort_values("relative_depth")
        if len(g):
            _band(ax, g.relative_depth, g, col, color, ls, label)
    for cond, ls in (("concept", "-"), ("random", ":")):
        g = sub[sub.condition == cond].sort_values("relative_depth")
        if len(g):
            _band(ax, g.relative_depth, g, "score", "#4e9a06", ls, f"{cond}: score (detection − control)")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("relative depth of the injected layer")
    ax.set_ylabel("shift in logit(yes) − logit(no)")
    ax.set_title(title or f"Layer sweep at strength {strength:g}", fontsize=10)
    ax.legend(frameon=False, fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def lens_figure(lens: Any, title: str = "") -> Any:
    """Logit lens of the yes-no difference per layer for baseline, concept and random."""
    fig = new_figure(6.4, 3.6, layout="constrained")
    ax = fig.add_subplot()
    colors = {"baseline": "0.3", "concept": "#c4362b", "random": "#75507b"}
    for (cond, kind), g in lens.groupby(["condition", "kind"], sort=True):
        ax.plot(g.lens_layer, g.logit_diff, color=colors.get(cond, "k"), ls="-" if kind == "detection" else "--",
                marker="o", ms=2.5, label=f"{cond}, {kind}")
    injected = lens.injected_layer.dropna()
    if len(injected):
        ax.axvline(float(injected.iloc[0]), color="#c4362b", lw=0.8, alpha=0.5)
    ax.axhline(0, color="0.5", lw=0.8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer read by the lens (final norm + unembedding)")
    ax.set_ylabel("logit(yes) − logit(no)")
    ax.set_title(title or "Logit lens of the answer", fontsize=10)
    ax.legend(frameon=False, fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def heads_figure(heads: Any, title: str = "") -> Any:
    """Heatmaps (layer × head) of attention mass from the answer to the window: injected
    (mean over concepts) and injected minus baseline."""
    H = int(heads["head"].max()) + 1
    inj = heads.pivot(index="layer", columns="head", values="injected").to_numpy()
    diff = heads.pivot(index="layer", columns="head", values="difference").to_numpy()
    fig = new_figure(3.0 + 0.7 * H, 2.0 + 0.16 * inj.shape[0], layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    im1 = a1.imshow(inj, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower")
    lim = float(np.nanmax(np.abs(diff))) or 1.0
    im2 = a2.imshow(diff, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
    for ax, im, name in ((a1, im1, "injected"), (a2, im2, "injected − baseline")):
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle(title or "Attention from the answer position to the injection window", fontsize=10)
    return fig


def sweep_figures(result: Any) -> dict[str, Any]:
    """All figures of a ``InjectionResult``, by name."""
    m = result.meta
    tag = f"{m.get('model', '')}, window {m.get('window', '')}"
    figs = {
        "introspect_strength": strength_figure(result.summary, f"Concept injection — {tag}"),
        "introspect_layers": layer_figure(result.summary, m["focus_strength"],
                                          f"Layer sweep at strength {m['focus_strength']:g} — {tag}"),
        "introspect_lens": lens_figure(result.lens, f"Logit lens, injection at layer {m['focus_layer']}, "
                                                    f"strength {m['focus_strength']:g} — {tag}"),
    }
    if result.heads is not None:
        figs["introspect_heads"] = heads_figure(
            result.heads, f"Attention to the window, layer {m['focus_layer']}, strength {m['focus_strength']:g}")
    return figs
