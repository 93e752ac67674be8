"""Figures of a sweep (matplotlib ``Figure`` objects, Agg; no pyplot state).

- ``introspect_strength``: shift against strength, one panel per layer, one line per
  condition (concept detection, concept control, random detection, random control, for isotropic
  and covariance-matched random vectors); concepts carry the bootstrap interval of their mean as a
  band, random vectors the min–max band over vectors (their spread, not just their mean)
- ``introspect_layers``: the same against relative depth at the focus strength, plus the score
- ``introspect_heldout``: at the reported cell, every vector's score as a dot (report and
  selection concepts, each random vector of each kind), with the held-out mean and interval
- ``introspect_lens``: logit lens of the yes-no difference across layers, one panel per injected
  layer at its lens strength (where detection flips and the controls do not, else the focus one)
- ``introspect_heads``: attention from the answer position to the window per (layer, head):
  detection with injection, and its differences from detection without injection, from the
  control questions with injection and from random vectors
- ``introspect_flips``: per layer, each vector's detection flip strength against its control
  flip strength (the diagonal: both flip together)
- ``introspect_ablation`` (with an ablation direction): the score against strength with and
  without the ablation, one panel per layer
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emoscope.core.figures import new_figure

__all__ = ["strength_figure", "layer_figure", "heldout_figure", "lens_figure", "heads_figure", "flips_figure",
           "ablation_figure", "sweep_figures"]

_STYLE = {
    ("concept", "detection_shift"): ("#c4362b", "-", "concept: detection"),
    ("concept", "control_shift"): ("#3465a4", "-", "concept: control questions"),
    ("random", "detection_shift"): ("#c4362b", ":", "random: detection"),
    ("random", "control_shift"): ("#3465a4", ":", "random: control questions"),
    ("random_cov", "detection_shift"): ("#c4362b", "-.", "random (cov.-matched): detection"),
    ("random_cov", "control_shift"): ("#3465a4", "-.", "random (cov.-matched): control questions"),
}


_SPREAD_COLOR = {"random": "#75507b", "random_cov": "#c17d11"}


def _band(ax: Any, x: Any, g: Any, col: str, color: str, ls: str, label: str, cond: str = "concept") -> None:
    """A mean line with a band: the bootstrap interval of the mean for concepts; for random
    vectors the min–max over vectors (``*_min`` / ``*_max``: their spread is the point of the
    control), drawn for the detection shift and the score (purple isotropic, ochre
    covariance-matched), the control-question line alone."""
    spread = cond in _SPREAD_COLOR
    band = not spread or col in ("detection_shift", "score")
    n = f" (mean; band min–max of {int(g.n.max())})" if spread and band and "n" in g else ""
    ax.plot(x, g[col], color=color, ls=ls, marker="o", ms=3, label=label + n)
    lo, hi = (f"{col}_min", f"{col}_max") if spread else (f"{col}_lo", f"{col}_hi")
    if band and lo in g and g[lo].notna().any():
        fill = _SPREAD_COLOR.get(cond, color)
        ax.fill_between(x, g[lo], g[hi], color=fill, alpha=0.10 if spread else 0.12, lw=0)
        if spread:
            for edge in (lo, hi):
                ax.plot(x, g[edge], color=fill, lw=0.6, alpha=0.6)


def _legend(fig: Any, axes: Any) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=7, frameon=False)


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
    fig = new_figure(3.2 * len(layers) + 0.6, 4.6, layout="constrained")
    axes = fig.subplots(1, len(layers), sharey=True, squeeze=False)[0]
    for ax, layer in zip(axes, layers, strict=True):
        sub = summary[summary.layer == layer]
        for (cond, col), (color, ls, label) in _STYLE.items():
            g = sub[sub.condition == cond].sort_values("strength")
            if len(g):
                _band(ax, g.strength, g, col, color, ls, label, cond)
        ax.axhline(0, color="0.5", lw=0.8)
        _strength_axis(ax, sorted(summary.strength.unique()))
        ax.set_xlabel("strength (× mean residual norm)")
        ax.set_title(f"layer {layer} ({sub.relative_depth.iloc[0]:.2f})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("shift in logit(yes) − logit(no)")
    _legend(fig, axes)
    fig.suptitle(title or "Concept injection: detection vs control vs random", fontsize=10)
    return fig


def layer_figure(summary: Any, strength: float, title: str = "") -> Any:
    """Shifts (left) and the introspection score (right) against relative depth at one strength."""
    fig = new_figure(9.6, 4.4, layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    sub = summary[summary.strength == strength]
    for (cond, col), (color, ls, label) in _STYLE.items():
        g = sub[sub.condition == cond].sort_values("relative_depth")
        if len(g):
            _band(a1, g.relative_depth, g, col, color, ls, label, cond)
    for cond, ls in (("concept", "-"), ("random", ":"), ("random_cov", "-.")):
        g = sub[sub.condition == cond].sort_values("relative_depth")
        if len(g):
            _band(a2, g.relative_depth, g, "score", "#4e9a06", ls, f"{cond}: score", cond)
    for ax, name in ((a1, "shifts"), (a2, "score (detection − control)")):
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("relative depth of the injected layer")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=1)
    a1.set_ylabel("shift in logit(yes) − logit(no)")
    a2.set_ylabel("score")
    fig.suptitle(title or f"Layer sweep at strength {strength:g}", fontsize=10)
    return fig


def heldout_figure(per_vector: Any, heldout: Any, title: str = "") -> Any:
    """Every vector's introspection score at the reported cell: the report concepts, the
    selection concepts (shown hollow: they chose the cell), and each random vector of each kind,
    with the held-out mean and its interval."""
    fig = new_figure(6.4, 3.6, layout="constrained")
    ax = fig.add_subplot()
    at = per_vector[(per_vector.layer == heldout.layer) & (per_vector.strength == heldout.strength)]
    concept = at[at.condition == "concept"].set_index("vector").score
    groups = [("report concepts", concept.reindex(list(heldout.report)), "#c4362b", True)]
    if heldout.select:
        groups.append(("selection concepts", concept.reindex(list(heldout.select)), "#c4362b", False))
    for cond, label, color in (("random", "random (isotropic)", "#75507b"),
                               ("random_cov", "random (cov.-matched)", "#c17d11")):
        g = at[at.condition == cond].score
        if len(g):
            groups.append((label, g, color, True))
    jitter = np.random.default_rng(0)
    for i, (_label, vals, color, filled) in enumerate(groups):
        v = np.asarray(vals, dtype=float)
        x = i + jitter.uniform(-0.15, 0.15, size=v.size)
        ax.scatter(x, v, s=18, color=color if filled else "none", edgecolors=color, lw=0.8, zorder=3)
        if v.size:
            ax.hlines(np.nanmean(v), i - 0.3, i + 0.3, color=color, lw=1.5)
    s = heldout.score
    if s.lo == s.lo:
        ax.errorbar([0.38], [s.point], yerr=[[s.point - s.lo], [s.hi - s.point]], fmt="o", color="k", ms=3,
                    capsize=3, lw=1, zorder=4)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{g[0]}\n(n={len(g[1])})" for g in groups], fontsize=7)
    ax.set_ylabel("score: detection − control shift")
    ax.set_title(title or f"Reported cell: layer {heldout.layer}, strength {heldout.strength:g}", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return fig


_LENS_COLORS = {"baseline": "0.3", "concept": "#c4362b", "random": "#75507b", "random_cov": "#c17d11",
                "baseline+ablated": "0.6", "concept+ablated": "#e9967a"}


def lens_figure(lens: Any, title: str = "") -> Any:
    """Logit lens of the yes-no difference per layer for baseline, concept and random (and the
    ablated baseline and concepts when they ran), one panel per injected layer at its strength."""
    from matplotlib.ticker import MaxNLocator

    layers = sorted(int(x) for x in lens.injected_layer.dropna().unique())
    fig = new_figure(max(6.4, 3.6 * len(layers) + 0.6), 4.2, layout="constrained")
    axes = fig.subplots(1, max(1, len(layers)), sharey=True, squeeze=False)[0]
    for ax, layer in zip(axes, layers or [None], strict=True):
        sub = lens[(lens.condition == "baseline") | (lens.injected_layer == layer)]
        for (cond, kind), g in sub.groupby(["condition", "kind"], sort=True):
            if cond not in _LENS_COLORS:
                continue
            ax.plot(g.lens_layer, g.logit_diff, color=_LENS_COLORS[cond], ls="-" if kind == "detection" else "--",
                    marker="o", ms=2.5, label=f"{cond}, {kind}")
        if layer is not None:
            ax.axvline(layer, color="#c4362b", lw=0.8, alpha=0.5)
            at = sub[~sub.condition.str.startswith("baseline")]
            if len(at):
                how = at.strength_choice.iloc[0] if "strength_choice" in at else "focus"
                ax.set_title(f"injected at layer {layer}, strength {at.strength.iloc[0]:g} "
                             f"({'detection flips, control not' if how == 'flip' else 'focus strength'})", fontsize=8)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer read by the lens (final norm + unembedding)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("logit(yes) − logit(no)")
    _legend(fig, axes)
    fig.suptitle(title or "Logit lens of the answer", fontsize=10)
    return fig


def heads_figure(heads: Any, title: str = "") -> Any:
    """Heatmaps (layer × head) of attention mass from the answer to the window: detection with
    concept injection (mean over concepts), and its differences from detection without
    injection, from the control questions with injection, and from random vectors."""
    H = int(heads["head"].max()) + 1
    panels = [("detection_injected", "detection, injected"),
              ("detection_minus_baseline", "detection: injected − not injected"),
              ("detection_minus_control", "injected: detection − control"),
              ("concept_minus_random", "detection: concept − random")]
    mats = {col: heads.pivot(index="layer", columns="head", values=col).to_numpy() for col, _ in panels}
    L = mats["detection_injected"].shape[0]
    fig = new_figure(2.0 + 1.5 * len(panels) + 0.45 * H * len(panels) / 2, 2.0 + 0.16 * L, layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, (col, name) in zip(axes, panels, strict=True):
        m = mats[col]
        if col == "detection_injected":
            im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower")
        else:
            lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.0
            lim = lim or 1.0
            im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(name, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle(title or "Attention from the answer position to the injection window", fontsize=10)
    return fig


def flips_figure(flips: Any, title: str = "") -> Any:
    """Per injected layer, every vector's detection flip strength (x) against its control flip
    strength (y); vectors that never flip in the grid sit on the edge (marked ∞)."""
    layers = sorted(flips.layer.unique())
    fig = new_figure(3.2 * max(1, len(layers)) + 0.6, 3.8, layout="constrained")
    axes = fig.subplots(1, max(1, len(layers)), squeeze=False)[0]
    finite = flips[["detection_flip", "control_flip"]].to_numpy(float)
    finite = finite[np.isfinite(finite)]
    top = float(finite.max()) if finite.size else 1.0
    edge = top * 1.25 if top > 0 else 1.0
    colors = {"concept": "#c4362b", "random": "#75507b", "random_cov": "#c17d11"}
    for ax, layer in zip(axes, layers, strict=True):
        sub = flips[flips.layer == layer]
        for cond, color in colors.items():
            g = sub[sub.condition == cond]
            if len(g):
                x = np.where(np.isinf(g.detection_flip), edge, g.detection_flip)
                y = np.where(np.isinf(g.control_flip), edge, g.control_flip)
                ax.scatter(x, y, s=16, color=color, alpha=0.8, label=cond)
        ax.plot([0, edge], [0, edge], color="0.5", lw=0.8, ls=":")
        ax.set_xlim(-0.05 * edge, edge * 1.05)
        ax.set_ylim(-0.05 * edge, edge * 1.05)
        ax.set_xlabel("detection flips at strength")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("control flips at strength (edge: never)")
    _legend(fig, axes)
    fig.suptitle(title or "Where the yes-no difference crosses 0: detection vs control", fontsize=10)
    return fig


def ablation_figure(ablation: Any, title: str = "") -> Any:
    """Concept score against strength with and without the ablated direction, one panel per
    layer; the band is the bootstrap interval of the difference, drawn around the ablated line."""
    sub = ablation[ablation.condition == "concept"]
    layers = sorted(sub.layer.unique())
    fig = new_figure(3.2 * max(1, len(layers)) + 0.6, 4.0, layout="constrained")
    axes = fig.subplots(1, max(1, len(layers)), sharey=True, squeeze=False)[0]
    for ax, layer in zip(axes, layers, strict=True):
        g = sub[sub.layer == layer].sort_values("strength")
        ax.plot(g.strength, g.score, color="#4e9a06", marker="o", ms=3, label="score")
        ax.plot(g.strength, g.score_ablated, color="#4e9a06", ls="--", marker="o", ms=3, label="score, ablated")
        ax.fill_between(g.strength, g.score + g.difference_lo, g.score + g.difference_hi, color="#4e9a06",
                        alpha=0.12, lw=0)
        ax.axhline(0, color="0.5", lw=0.8)
        _strength_axis(ax, sorted(sub.strength.unique()))
        ax.set_xlabel("strength")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (detection − control shift)")
    _legend(fig, axes)
    fig.suptitle(title or "Introspection score with and without the ablated direction", fontsize=10)
    return fig


def sweep_figures(result: Any) -> dict[str, Any]:
    """All figures of a ``InjectionResult``, by name."""
    m = result.meta
    tag = f"{m.get('model', '')}, window {m.get('window', '')}"
    figs = {
        "introspect_strength": strength_figure(result.summary, f"Concept injection — {tag}"),
        "introspect_layers": layer_figure(result.summary, m["focus_strength"],
                                          f"Layer sweep at strength {m['focus_strength']:g} — {tag}"),
        "introspect_lens": lens_figure(result.lens, f"Logit lens of the answer — {tag}"),
    }
    flips = getattr(result, "flips", None)
    if flips is not None and len(flips):
        figs["introspect_flips"] = flips_figure(flips, f"Flip strengths — {tag}")
    ablation = getattr(result, "ablation", None)
    if ablation is not None and len(ablation):
        figs["introspect_ablation"] = ablation_figure(
            ablation, f"Score with and without ablating {m.get('ablate')!r} at the injected layer — {tag}")
    h = getattr(result, "heldout", None)
    if h is not None:
        how = f"chosen on {len(h.select)} concepts, reported on {h.n}" if h.select else "fixed cell"
        figs["introspect_heldout"] = heldout_figure(
            result.per_vector, h, f"Layer {h.layer}, strength {h.strength:g} ({how}) — {tag}")
    if result.heads is not None:
        figs["introspect_heads"] = heads_figure(
            result.heads, f"Attention to the window, layer {m['focus_layer']}, strength {m['focus_strength']:g}")
    return figs
